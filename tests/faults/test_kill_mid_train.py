# ruff: noqa: F811  (the live_server fixture is imported, then requested by name)
"""Fault injection: the training process is killed with SIGKILL in the middle of training."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from registry import ModelRegistry
from retrain.config import load_spec
from retrain.features import plan_windows
from retrain.ingest import ingest
from retrain.ledger import Ledger
from tests.conftest import bike_slice, spec_dict
from tests.flows.conftest import PrefectServer, live_server  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[2]
RETRAIN = Path(sys.executable).with_name("retrain")
AS_OF = pd.Timestamp("2011-07-01")


def run_env(tmp_path: Path, server: PrefectServer) -> dict[str, str]:
    """The CLI's environment: the module's Prefect server, none of the test process's settings.

    Every run of the file reaches the one ``live_server``: without PREFECT_API_URL each CLI run
    would start Prefect's temporary server, and the first one in a fresh PREFECT_HOME migrates
    its database (a run took 81 s that way, 42 s on a migrated home and 30 s on a running
    server, on the shared 2-core machine). The faults here do not depend on the server's kind.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RETRAIN_"))}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_API_URL=server.url,
    )
    return env


@pytest.mark.slow
def test_a_retrain_killed_mid_train_leaves_no_trace_and_the_rerun_reuses_the_cache(
    tmp_path, bike_hourly, live_server
):
    data = tmp_path / "data"
    data.mkdir()
    bike_slice(bike_hourly, "2011-01-01", "2011-07-01").to_csv(data / "h1.csv", index=False)
    slow = spec_dict(
        data,
        tmp_path / "state",
        **{
            "windows.train": "120D",
            "lightgbm.num_boost_round": 8000,  # long enough to be killed while it trains
            "lightgbm.params": {"num_leaves": 63, "learning_rate": 0.01, "min_data_in_leaf": 5},
        },
    )
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(slow))
    spec = load_spec(spec_path)
    command = [
        str(RETRAIN),
        "run",
        "manual",
        "--spec",
        str(spec_path),
        "--as-of",
        "2011-07-01",
        "--auto-approve",
    ]
    features = spec.state.features
    train, holdout = plan_windows(ingest(spec, as_of=AS_OF).partitions, spec, as_of=AS_OF)
    expected = len(train.partitions) + len(holdout.partitions)

    proc = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=run_env(tmp_path, live_server),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        # the features are cached before training starts: wait for them, then a bit more
        while time.monotonic() < deadline and len(list(features.rglob("*.parquet"))) < expected:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            time.sleep(0.2)
        time.sleep(2.0)
        assert proc.poll() is None, "the retrain finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    cached = {p.name for p in features.rglob("*.parquet")}
    assert not list(features.rglob("*.tmp*")), "a half-written feature file was left behind"

    ledger = Ledger(spec.state.ledger)
    [killed] = ledger.runs(spec.name)
    assert killed.status == "running"  # nobody could write anything else: it was SIGKILLed
    registry = ModelRegistry(spec.state.tracking, spec.name, ledger)
    assert registry.versions() == []  # no half-registered model version
    assert registry.aliases() == {}  # no alias change

    # the rerun trains the suite's small model: only the killed run had to train for long
    # (the feature cache it reuses is keyed by the feature spec, not by the trees)
    spec_path.write_text(
        yaml.safe_dump(spec_dict(data, tmp_path / "state", **{"windows.train": "120D"}))
    )
    fast = subprocess.run(
        [*command, "--json"],
        cwd=tmp_path,
        env=run_env(tmp_path, live_server),
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert fast.returncode == 0, fast.stdout + fast.stderr
    runs = {r.id: r for r in ledger.runs(spec.name)}
    assert runs[killed.id].status == "failed"
    assert runs[killed.id].error == "abandoned: its process died"
    [rerun] = [r for r in runs.values() if r.id != killed.id]
    assert rerun.status == "promoted"
    assert {p.name for p in features.rglob("*.parquet")} == cached  # no feature recomputed
    assert json.loads(fast.stdout)["features_computed"] == 0
    assert [v.version for v in registry.versions()] == ["1"]
    assert registry.aliases() == {"champion": "1"}


@pytest.mark.slow
def test_a_crash_between_registering_and_moving_the_alias_leaves_a_consistent_state(
    tmp_path, bike_hourly, live_server
):
    data = tmp_path / "data"
    data.mkdir()
    bike_slice(bike_hourly, "2011-03-01", "2011-05-01").to_csv(data / "spring.csv", index=False)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(
        yaml.safe_dump(
            spec_dict(
                data, tmp_path / "state", **{"gate.tolerance": 0.5, "gate.require_approval": True}
            )
        )
    )
    spec = load_spec(spec_path)
    env = run_env(tmp_path, live_server)
    base = [str(RETRAIN), "run", "manual", "--spec", str(spec_path)]
    first = subprocess.run(
        [*base, "--as-of", "2011-04-22", "--auto-approve"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert first.returncode == 0, first.stdout + first.stderr
    ledger = Ledger(spec.state.ledger)
    registry = ModelRegistry(spec.state.tracking, spec.name, ledger)
    assert registry.aliases() == {"champion": "1"}

    # version 2 is registered, then the flow waits for an operator (on a real Prefect server:
    # without one the CLI refuses to wait): kill it right there
    proc = subprocess.Popen(
        [*base, "--as-of", "2011-04-29"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and registry.alias_version("challenger") != "2":
            assert proc.poll() is None, "the retrain ended before it registered version 2"
            time.sleep(0.3)
        assert registry.alias_version("challenger") == "2"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

    assert registry.aliases() == {"champion": "1", "challenger": "2"}
    assert registry.version("2").tags.get("retrain.approval") is None  # never decided

    rerun = subprocess.run(
        [*base, "--as-of", "2011-04-29", "--auto-approve"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )

    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    runs = ledger.runs(spec.name)
    assert [r.status for r in runs] == ["promoted", "failed", "promoted"]
    assert runs[1].error == "abandoned: its process died"
    aliases = registry.aliases()
    assert aliases["champion"] == "3" and aliases["previous"] == "1"
    assert registry.version("2").tags.get("retrain.approval") is None  # still never promoted
