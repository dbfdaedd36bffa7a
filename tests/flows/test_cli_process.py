"""The ``retrain`` console script in a process of its own: what a user's terminal or a script
sees (stdout, stderr, exit code, time to stop), with Prefect's temporary server or none."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from flows.cli_edge import INTERRUPTED, TERMINATED
from retrain.config import load_spec
from retrain.ledger import Ledger, model_locks
from tests.conftest import spec_dict
from tests.flows.conftest import BIN, base_env, tail

START_TIMEOUT = 300  # the first start of a temporary Prefect server migrates its database
STOP_BOUND = 10.0


def write_spec(tmp_path: Path, bike_dir: Path, **overrides) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec_dict(bike_dir, tmp_path / "state", **overrides)))
    return path


def quiet_env(tmp_path: Path) -> dict[str, str]:
    """No PREFECT_API_URL and no Prefect profile: the embedded default."""
    env = base_env(tmp_path / "prefect-home")
    env.pop("PREFECT_LOGGING_LEVEL")  # the CLI's own default, not the test's
    return env


def test_a_run_that_would_wait_for_approval_without_a_prefect_server_is_refused_in_one_line(
    tmp_path, bike_dir
):
    spec = write_spec(tmp_path, bike_dir, **{"gate.require_approval": True})

    done = subprocess.run(
        [str(BIN / "retrain"), "run", "manual", "--spec", str(spec), "--as-of", "2011-04-29"],
        env=quiet_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 2
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("error: bike-test needs an operator's approval")
    assert "pass --auto-approve" in line
    assert "`prefect server start`; `export PREFECT_API_URL=http://127.0.0.1:4200/api`" in line
    assert "`retrain approve bike-test VERSION`" in line
    assert not (tmp_path / "state" / "ledger.db").exists()  # refused before any work


def running_run(ledger_path: Path, process: subprocess.Popen, log: Path) -> None:
    """Wait until the process's retrain holds a ledger run (it is ingesting or training)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"retrain exited with {process.returncode}:\n{tail(log)}")
        if ledger_path.exists():
            try:
                runs = Ledger(f"sqlite:///{ledger_path}").runs("bike-test")
            except Exception:  # the schema is being created
                runs = []
            if runs and runs[0].status == "running":
                return
        time.sleep(0.2)
    pytest.fail(f"no running retrain within {START_TIMEOUT} s:\n{tail(log)}")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "code", "line"),
    [(signal.SIGINT, 130, INTERRUPTED), (signal.SIGTERM, 143, TERMINATED)],
    ids=["ctrl-c", "sigterm"],
)
def test_an_interrupted_run_exits_within_seconds_with_one_line_and_is_recorded(
    tmp_path, bike_dir, sig, code, line
):
    spec = write_spec(tmp_path, bike_dir)
    log = tmp_path / "stderr.txt"
    process = subprocess.Popen(
        [str(BIN / "retrain"), "run", "manual", "--spec", str(spec), "--auto-approve"],
        env=quiet_env(tmp_path),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
        start_new_session=True,
    )
    try:
        running_run(tmp_path / "state" / "ledger.db", process, log)
        process.send_signal(sig)
        sent = time.monotonic()
        process.wait(timeout=60)
        took = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()

    assert took < STOP_BOUND, f"took {took:.1f} s to stop"
    assert process.returncode == code
    assert log.read_text().splitlines() == [f"error: {line}"]
    [run] = Ledger(load_spec(spec).state.ledger).runs("bike-test")
    assert run.status == "failed"


@pytest.mark.slow
def test_a_run_prints_json_alone_on_stdout_and_nothing_on_stderr(tmp_path, bike_dir):
    spec = write_spec(tmp_path, bike_dir)

    done = subprocess.run(
        [
            str(BIN / "retrain"),
            "run",
            "manual",
            "--spec",
            str(spec),
            "--as-of",
            "2011-04-29",
            "--auto-approve",
            "--json",
        ],
        env=quiet_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "promoted"
    # no Prefect INFO lines, no MLflow warnings, no flow-run tracebacks
    assert done.stderr == ""


@pytest.mark.slow
def test_a_failing_run_is_one_error_line_without_prefects_tracebacks(tmp_path, bike_dir):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here
    spec = write_spec(tmp_path, bike_dir, **{"state.tracking_uri": f"http://127.0.0.1:{port}"})
    env = {**quiet_env(tmp_path), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}

    done = subprocess.run(
        [str(BIN / "retrain"), "run", "manual", "--spec", str(spec), "--as-of", "2011-04-29",
         "--auto-approve"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=START_TIMEOUT,
    )  # fmt: skip

    assert done.returncode == 7  # infrastructure down
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith(f"error: the MLflow tracking server http://127.0.0.1:{port} does not")


@pytest.fixture
def mounted(tmp_path):
    """Mount a small tmpfs (root only): ``mounted(size, read_only)`` -> its path."""
    import os

    mounts: list[Path] = []

    def mount(size: str, read_only: bool = False) -> Path:
        where = tmp_path / f"disk{len(mounts)}"
        where.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True
        )
        if done.returncode != 0:
            message = f"cannot mount a tmpfs here (root needed): {done.stderr.decode()}"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        mounts.append(where)
        return where

    yield mount
    for where in reversed(mounts):
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def run_on_state(tmp_path: Path, bike_dir: Path, state: Path) -> subprocess.CompletedProcess:
    spec = write_spec(tmp_path, bike_dir)
    return subprocess.run(
        [str(BIN / "retrain"), "run", "manual", "--spec", str(spec), "--as-of", "2011-04-29",
         "--auto-approve", "--state-dir", str(state)],
        env=quiet_env(tmp_path), cwd=tmp_path, capture_output=True, text=True,
        timeout=START_TIMEOUT,
    )  # fmt: skip


@pytest.mark.slow
def test_a_read_only_state_dir_is_one_line_naming_it_and_exit_7(tmp_path, bike_dir, mounted):
    state = mounted("1m", read_only=True) / "state"

    done = run_on_state(tmp_path, bike_dir, state)

    assert done.returncode == 7, done.stderr  # infrastructure: the machine, not the input
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("error:") and "Read-only file system" in line
    assert str(tmp_path) in line  # names where


@pytest.mark.slow
def test_a_full_disk_mid_run_is_one_line_and_frees_the_model(tmp_path, bike_dir, mounted):
    """The state on a disk that fills up during the run (the feature cache); the ledger on
    another disk records the run as failed and releases the model's claim."""
    disk = mounted("3m")
    ledger_path = tmp_path / "ledger.db"
    spec = tmp_path / "spec.yaml"
    data = spec_dict(bike_dir, disk / "state", **{"state.ledger_url": f"sqlite:///{ledger_path}"})
    data["state"]["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec.write_text(yaml.safe_dump(data))
    with open(disk / "filler", "wb", buffering=0) as fh:  # leave about 100 KB
        fh.write(b"\0" * (3 * 1024 * 1024 - 100 * 1024))

    done = subprocess.run(
        [str(BIN / "retrain"), "run", "manual", "--spec", str(spec), "--as-of", "2011-04-29",
         "--auto-approve"],
        env=quiet_env(tmp_path), cwd=tmp_path, capture_output=True, text=True,
        timeout=START_TIMEOUT,
    )  # fmt: skip

    assert done.returncode == 7, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("error:") and "No space left on device" in line
    ledger = Ledger(f"sqlite:///{ledger_path}")
    [run] = ledger.runs("bike-test")
    assert run.status == "failed" and "No space left on device" in (run.error or "")
    with ledger.engine.connect() as conn:
        assert conn.execute(sa.select(model_locks)).all() == []  # the claim was released
    ledger.dispose()
