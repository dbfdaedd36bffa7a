"""The MLflow tracking server killed while a candidate is being registered.

A real ``mlflow server`` (SQLite backend, proxied artifacts) serves a first retrain that makes
version 1 the champion. During the second retrain, as soon as its MLflow run exists, the
server is killed with SIGKILL: the flow gives up after its bounded retries, the run is recorded
as failed, and the registry (read straight from the server's database) still has version 1 as
champion. With the server back, the next retrain goes through.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from registry import ModelRegistry, RegistryError
from retrain.ledger import Ledger
from tests.conftest import spec_dict

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module", autouse=True)
def prefect_server(prefect_harness: None) -> None:
    """The in-process flows run on the test process's Prefect harness (tests/conftest.py)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_mlflow(db: Path, artifacts: Path, port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            *("--backend-store-uri", f"sqlite:///{db}"),
            *("--artifacts-destination", str(artifacts)),
            *("--host", "127.0.0.1", "--port", str(port)),
            # one worker process (default 4): the flow's calls are sequential, and the kill
            # takes the server's whole process group either way; 3 fewer imports per start
            *("--workers", "1"),
        ],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-2000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                if answer.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    stop(proc)
    raise AssertionError("mlflow server did not start:\n" + log.read_text()[-2000:])


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def run_count(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM runs").fetchone()[0])


def test_the_tracking_server_dying_mid_registration_fails_the_run_and_keeps_the_champion(
    tmp_path, bike_dir, monkeypatch
):
    from flows.retrain_flow import retrain_flow

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    db, artifacts, log = tmp_path / "mlflow.db", tmp_path / "artifacts", tmp_path / "mlflow.log"
    port = free_port()
    spec = spec_dict(bike_dir, tmp_path / "state", **{"gate.tolerance": 0.5})
    spec["state"]["tracking_uri"] = f"http://127.0.0.1:{port}"
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    server = start_mlflow(db, artifacts, port, log)
    killed = threading.Event()
    try:
        first = retrain_flow(str(spec_path), as_of="2011-04-22", auto_approve=True)
        assert first["promoted"] and first["version"] == "1"
        runs_before = run_count(db)

        def kill_when_the_run_exists() -> None:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                if run_count(db) > runs_before:
                    stop(server)
                    killed.set()
                    return
                time.sleep(0.02)

        watcher = threading.Thread(target=kill_when_the_run_exists, daemon=True)
        watcher.start()
        with pytest.raises(RegistryError, match=r"does not answer \(gave up after its retries\)"):
            retrain_flow(str(spec_path), as_of="2011-04-29", auto_approve=True)
        watcher.join(timeout=5)
        assert killed.is_set()
    finally:
        stop(server)

    ledger = Ledger(f"sqlite:///{tmp_path / 'state' / 'ledger.db'}")
    runs = ledger.runs("bike-test")
    assert [r.status for r in runs] == ["failed", "promoted"]
    assert "does not answer" in (runs[0].error or "")
    # the registry, read straight from the dead server's database: nothing moved
    direct = ModelRegistry(f"sqlite:///{db}", "bike-test", ledger)
    assert direct.aliases().get("champion") == "1"
    for version in direct.versions():
        if version.version != "1":
            assert "champion" not in version.aliases
            assert version.tags.get("retrain.approval") is None
    champion_moves = [a for a in ledger.alias_history("bike-test") if a["alias"] == "champion"]
    assert [a["to_version"] for a in champion_moves] == ["1"]

    server = start_mlflow(db, artifacts, port, log)
    try:
        again = retrain_flow(str(spec_path), as_of="2011-04-29", auto_approve=True)
    finally:
        stop(server)
    assert again["status"] != "failed"
    assert ledger.runs("bike-test")[0].status in {"promoted", "rejected"}
