"""``[compute] engine = "dask"`` against a real cluster: `dask scheduler` and two `dask worker`s.

The LocalCluster tests (test_compute.py, test_trainer_lightgbm_dask.py) run the workers inside
the test's own process tree through Dask's Python API. Here the cluster is what production
runs: the `dask scheduler` and `dask worker` commands of this virtualenv, as separate processes
reached only by the scheduler address in the spec, and the fit goes through the same step the
retrain flow calls (``retrain.families.lightgbm.fit``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from retrain.backtest import score
from retrain.config import parse_spec
from retrain.families.lightgbm import fit
from retrain.families.spine import Champion, prepare
from retrain.features import FeatureCache
from retrain.stateful import plan_training
from tests.conftest import free_port, spec_dict

distributed = pytest.importorskip("distributed")
BIN = Path(sys.executable).parent
START_TIMEOUT = 90
FIRST, LATER = pd.Timestamp("2011-04-22"), pd.Timestamp("2011-04-29")
# lightgbm.dask runs one training task per worker that holds data
TRAIN_TASK = "_train_part"


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
            try:
                os.killpg(process.pid, sig)  # the worker's nanny and its worker process
                process.wait(timeout=wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory) -> Iterator[str]:
    """A `dask scheduler` and two single-threaded `dask worker`s; yields the scheduler address."""
    root = tmp_path_factory.mktemp("dask-cluster")
    address = f"tcp://127.0.0.1:{free_port()}"
    port = address.rsplit(":", 1)[1]
    commands = {
        "scheduler": [
            str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", port,
            "--no-dashboard", "--no-show",
        ],
        **{
            f"worker-{i}": [
                str(BIN / "dask"), "worker", address, "--nthreads", "1", "--nworkers", "1",
                "--no-dashboard", "--name", f"worker-{i}", "--host", "127.0.0.1",
                "--local-directory", str(root / f"worker-{i}"),
            ]
            for i in range(2)
        },
    }  # fmt: skip
    processes: dict[str, subprocess.Popen] = {}
    logs = {name: root / f"{name}.log" for name in commands}
    try:
        for name, command in commands.items():
            processes[name] = subprocess.Popen(
                command,
                cwd=root,
                stdout=logs[name].open("wb"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            for name, process in processes.items():
                if process.poll() is not None:
                    pytest.fail(
                        f"`dask {name}` exited with {process.returncode}:\n{_tail(logs[name])}"
                    )
            try:
                with distributed.Client(address, timeout="5s") as client:
                    client.wait_for_workers(2, timeout=max(1.0, deadline - time.monotonic()))
                break
            except (OSError, TimeoutError):
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"the Dask cluster at {address} did not have 2 workers within "
                        f"{START_TIMEOUT} s:\n" + "\n".join(_tail(log) for log in logs.values())
                    )
                time.sleep(1)
        yield address
    finally:
        for process in reversed(list(processes.values())):
            _stop(process)


@pytest.fixture
def observer(scheduler: str) -> Iterator[object]:
    with distributed.Client(scheduler, timeout="20s") as client:
        yield client


def training_workers(stream: list[dict]) -> set[str]:
    """The workers that ran one of LightGBM's training tasks, from a Dask task stream."""
    return {task["worker"] for task in stream if TRAIN_TASK in str(task["key"])}


def holdout_mae(spec, prepared, model) -> float:
    holdout = FeatureCache(spec.state.features, spec).load(prepared.holdout.partitions)
    X, y = holdout[list(spec.features.columns)], holdout[spec.label].to_numpy()
    return score("mae", y, model.predict(X))


@pytest.mark.slow
def test_a_spec_with_a_scheduler_address_trains_on_the_cluster_workers_as_well_as_locally(
    scheduler, observer, bike_dir, bike_spec, tmp_path
):
    spec = parse_spec(
        spec_dict(
            bike_dir,
            tmp_path / "dask-state",
            **{"compute.engine": "dask", "compute.scheduler": scheduler},
        )
    )
    prepared = prepare(spec, LATER)
    local = fit(bike_spec, prepare(bike_spec, LATER))
    workers = observer.scheduler_info()["workers"]

    with distributed.get_task_stream(client=observer) as stream:
        trained = fit(spec, prepared)

    assert len(workers) == 2
    assert training_workers(stream.data) == set(workers)  # both workers trained
    assert trained.rows == local.rows == prepared.train.rows
    assert trained.model.categories_ == local.model.categories_
    assert trained.model.booster_.num_trees() == spec.lightgbm.num_boost_round
    dask_mae = holdout_mae(spec, prepared, trained.model)
    local_mae = holdout_mae(bike_spec, prepared, local.model)
    assert dask_mae == pytest.approx(local_mae, rel=0.15)


@pytest.mark.slow
def test_a_warm_start_on_the_cluster_continues_the_champion(
    scheduler, observer, bike_dir, tmp_path
):
    spec = parse_spec(
        spec_dict(
            bike_dir,
            tmp_path / "state",
            **{"compute.engine": "dask", "compute.scheduler": scheduler},
        )
    )
    first = prepare(spec, FIRST)
    scratch = fit(spec, first)
    champion = Champion("1", scratch.model, first.train.end, scratch.data_versions)
    later = prepare(spec, LATER)  # a week of new partitions after the champion's training end
    plan = plan_training(
        "stateful",
        spec.stateful,
        champion.state(),
        spec.features.columns,
        spec.features.categorical,
    )
    assert plan.strategy == "warm"

    with distributed.get_task_stream(client=observer) as stream:
        warm = fit(spec, later, plan, champion)

    assert training_workers(stream.data) <= set(observer.scheduler_info()["workers"])
    assert training_workers(stream.data), "no LightGBM training task ran on the cluster"
    assert warm.window.name == "increment"
    assert warm.rows == sum(p.rows for p in warm.window.partitions)
    trees = champion.model.booster_.num_trees()
    assert warm.model.booster_.num_trees() == trees + spec.stateful.increment_rounds
    assert warm.model.increments_ == 1
    assert warm.model.categories_ == champion.model.categories_
    assert warm.data_versions == (*champion.data_versions, warm.window.version)
    # the increment learned from the new week: it scores that week's holdout no worse
    assert holdout_mae(spec, later, warm.model) <= holdout_mae(spec, later, champion.model) * 1.05
