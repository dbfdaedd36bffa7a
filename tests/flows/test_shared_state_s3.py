"""Every shared part at once, as a two-machine setup runs them: the feature cache and the
MLflow artifacts on object storage (a real SeaweedFS S3 server), training on a real
`dask scheduler` with two `dask worker` processes that read the cache from there.

Each part has tests of its own; this one checks that they work together: nothing of the
model's state lands in the local state directory but the ledger and the MLflow backend.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml

from flows.retrain_flow import make_registry, retrain_flow
from retrain.config import load_spec
from retrain.ledger import Ledger
from tests.conftest import spec_dict
from tests.dask_cluster import dask_cluster, training_workers

distributed = pytest.importorskip("distributed")
pytestmark = pytest.mark.slow  # a SeaweedFS server and a Dask cluster


def _keys(server, prefix: str) -> list[str]:
    paginator = server.client().get_paginator("list_objects_v2")
    return [
        obj["Key"]
        for page in paginator.paginate(Bucket=server.bucket, Prefix=prefix)
        for obj in page.get("Contents", [])
    ]


def test_dask_workers_train_from_the_s3_cache_and_the_versions_live_on_s3(
    s3_env, tmp_path: Path, bike_dir: Path
):
    run = uuid.uuid4().hex[:8]
    cache_prefix, artifact_prefix = f"cache-{run}", f"mlartifacts-{run}"
    data = spec_dict(
        bike_dir,
        tmp_path / "state",
        **{"stateful.increment_rounds": 10, "gate.tolerance": 0.1},
    )
    data["state"]["cache_url"] = f"s3://{s3_env.bucket}/{cache_prefix}"
    data["state"]["artifact_url"] = f"s3://{s3_env.bucket}/{artifact_prefix}"
    # the workers start in this environment: the S3 endpoint and credentials are theirs too
    (tmp_path / "dask").mkdir()
    with dask_cluster(tmp_path / "dask") as scheduler:
        data["compute"] = {"engine": "dask", "scheduler": scheduler}
        spec_path = tmp_path / "spec.yaml"
        spec_path.write_text(yaml.safe_dump(data))
        with distributed.Client(scheduler, timeout="20s") as observer:
            workers = set(observer.scheduler_info()["workers"])
            with distributed.get_task_stream(client=observer) as stream:
                first = retrain_flow(
                    str(spec_path), mode="stateful", as_of="2011-04-22", auto_approve=True
                )
                second = retrain_flow(
                    str(spec_path), mode="stateful", as_of="2011-04-29", auto_approve=True
                )

    assert training_workers(stream.data) == workers and len(workers) == 2
    assert [first["strategy"], second["strategy"]] == ["scratch", "warm"]
    assert first["promoted"], first["decision"]
    # the cache is on S3 only: the workers could read it nowhere else
    cached = _keys(s3_env, cache_prefix)
    assert sum(k.endswith(".parquet") for k in cached) >= first["features_computed"] > 0
    assert not list((tmp_path / "state").rglob("*.parquet"))
    # both versions' artifacts (the model, its evidence) are on S3, and load back from there
    spec = load_spec(spec_path)
    registry = make_registry(spec, Ledger(spec.state.ledger))
    stored = _keys(s3_env, artifact_prefix)
    assert any(k.endswith("MLmodel") for k in stored)
    assert not (tmp_path / "state" / "mlartifacts").exists() or not list(
        (tmp_path / "state" / "mlartifacts").rglob("MLmodel")
    )
    model = registry.load_model(second["version"])
    # the increment's rounds: 20 x its share of the training window, at most 10
    assert 1 <= model.num_boost_round < 10
    assert model.booster_.num_trees() == 20 + model.num_boost_round
    assert registry.version(second["version"]).tags["retrain.parent_version"] == first["version"]
