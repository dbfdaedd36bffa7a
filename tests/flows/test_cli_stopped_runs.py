"""The ``retrain`` console script in a process of its own, stopped before its end: by Ctrl-C or
SIGTERM, by a read-only state directory, by a disk that fills up mid-run. Each says so in one
line with its exit code, and the ledger records the run as failed (split from
test_cli_process.py, so the two files run in parallel)."""

from __future__ import annotations

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
from tests.flows.conftest import BIN, tail
from tests.flows.test_cli_process import START_TIMEOUT, quiet_env, write_spec

STOP_BOUND = 10.0


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
