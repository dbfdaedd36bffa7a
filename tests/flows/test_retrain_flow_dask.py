"""The retrain flow with ``[compute] engine = "dask"`` on a real `dask scheduler` + two workers.

The whole stateful loop, not just the fit: a scratch retrain, then a warm increment from the
champion, each trained on the cluster's workers, registered, promoted through the gate, and
loaded back from the registry as a plain LightGBM model.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

from flows.retrain_flow import make_registry, retrain_flow
from retrain.backtest import score
from retrain.config import load_spec
from retrain.families.spine import prepare
from retrain.features import FeatureCache
from retrain.ledger import Ledger
from tests.conftest import spec_dict
from tests.dask_cluster import dask_cluster, training_workers

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory) -> Iterator[str]:
    with dask_cluster(tmp_path_factory.mktemp("dask-cluster")) as address:
        yield address


@pytest.mark.slow
def test_a_stateful_retrain_on_a_dask_cluster_trains_there_and_registers_a_plain_model(
    scheduler, tmp_path: Path, bike_dir: Path
):
    spec_path = tmp_path / "spec.yaml"
    overrides = {
        "compute.engine": "dask",
        "compute.scheduler": scheduler,
        "stateful.increment_rounds": 10,
        "gate.tolerance": 0.1,
    }
    spec_path.write_text(yaml.safe_dump(spec_dict(bike_dir, tmp_path / "state", **overrides)))

    with distributed.Client(scheduler, timeout="20s") as observer:
        workers = set(observer.scheduler_info()["workers"])
        with distributed.get_task_stream(client=observer) as stream:
            first = retrain_flow(
                str(spec_path), mode="stateful", as_of="2011-04-22", auto_approve=True
            )
            second = retrain_flow(
                str(spec_path), mode="stateful", as_of="2011-04-29", auto_approve=True
            )

    assert len(workers) == 2
    assert training_workers(stream.data) == workers
    assert [first["strategy"], second["strategy"]] == ["scratch", "warm"]
    assert first["promoted"], first["decision"]
    spec = load_spec(spec_path)
    registry = make_registry(spec, Ledger(spec.state.ledger))
    tags = registry.version(second["version"]).tags
    assert tags["retrain.parent_version"] == first["version"]
    assert tags["retrain.strategy"] == "warm"
    # the registered model is plain LightGBM: it loads and predicts without Dask
    model = registry.load_model(second["version"])
    assert type(model).__name__ == "LightGBMTrainer"
    # the increment's rounds: 20 x its share of the training window, at most 10
    assert 1 <= model.num_boost_round < 10
    assert model.booster_.num_trees() == 20 + model.num_boost_round
    holdout = prepare(spec, pd.Timestamp("2011-04-29")).holdout
    frame = FeatureCache(spec.state.features, spec).load(holdout.partitions)
    mae = score(
        "mae", frame[spec.label].to_numpy(), model.predict(frame[list(spec.features.columns)])
    )
    assert mae == pytest.approx(second["candidate"], rel=1e-6)  # the model the gate judged
    assert second["candidate"] < second["baseline"]
