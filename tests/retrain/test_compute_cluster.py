"""The Dask path against a real cluster: `dask scheduler` and two `dask worker` processes,
reading the feature cache from a real S3 server (SeaweedFS)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from retrain.config import parse_spec
from retrain.families.lightgbm import fit
from retrain.families.spine import Champion, prepare
from retrain.stateful import plan_training
from tests.conftest import free_port, spec_dict

pytestmark = pytest.mark.slow  # starts a Dask scheduler, two workers and SeaweedFS
distributed = pytest.importorskip("distributed")


@pytest.fixture
def scheduler(s3_env, tmp_path: Path) -> Iterator[str]:
    dask = str(Path(sys.executable).with_name("dask"))
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, **s3_env.env()}
    logs = [(tmp_path / f"dask-{i}.log").open("wb") for i in range(3)]
    procs = [
        subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            stdout=logs[0], stderr=subprocess.STDOUT, env=env,
        )
    ]  # fmt: skip
    try:
        for i in (1, 2):
            procs.append(
                subprocess.Popen(
                    [
                        dask, "worker", address, "--nthreads", "1", "--no-dashboard",
                        "--host", "127.0.0.1", "--local-directory", str(tmp_path / f"w{i}"),
                    ],
                    stdout=logs[i], stderr=subprocess.STDOUT, env=env,
                )
            )  # fmt: skip
        with distributed.Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=90)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs:
            log.close()


def test_scratch_then_warm_on_a_real_cluster_reading_the_cache_from_s3(
    s3_env, scheduler, bike_dir, tmp_path, project_logs
):
    data = spec_dict(
        bike_dir,
        tmp_path / "state",
        **{
            "compute.engine": "dask",
            "compute.scheduler": scheduler,
            "state.cache_url": f"s3://{s3_env.bucket}/cluster-{uuid.uuid4().hex[:8]}",
        },
    )
    spec = parse_spec(data)
    started = time.monotonic()
    first = prepare(spec, pd.Timestamp("2011-04-22"))
    scratch = fit(spec, first)
    champion = Champion("1", scratch.model, first.train.end, scratch.data_versions)
    later = prepare(spec, pd.Timestamp("2011-04-29"))
    plan = plan_training(
        "stateful", spec.stateful, champion.state(), spec.features.columns,
        spec.features.categorical,
    )  # fmt: skip

    warm = fit(spec, later, plan, champion)

    assert plan.strategy == "warm"
    assert warm.model.booster_.num_trees() > scratch.model.booster_.num_trees()
    assert warm.model.categories_ == scratch.model.categories_
    assert warm.rows == sum(p.rows for p in warm.window.partitions)
    assert "over 2 worker(s)" in project_logs.text
    assert time.monotonic() - started < 240
