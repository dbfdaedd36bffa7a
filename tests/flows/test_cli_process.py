"""The ``retrain`` console script in a process of its own: what a user's terminal or a script
sees (stdout, stderr, exit code), with Prefect's temporary server or none. Runs stopped before
their end (signals, read-only or full disks) are in test_cli_stopped_runs.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import spec_dict
from tests.flows.conftest import BIN, base_env

START_TIMEOUT = 300  # the first start of a temporary Prefect server migrates its database


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
