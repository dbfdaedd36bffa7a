"""``retrain approve`` / ``retrain reject`` answer the run that waits for approval, as the form
in the Prefect UI does; interrupting a waiting run stops it at once. A real ``prefect server
start`` (live_server); the run and the answers are ``retrain`` processes of their own."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from uuid import UUID

import pytest
import yaml

from flows.cli_edge import TERMINATED
from retrain.config import load_spec
from retrain.ledger import Ledger
from tests.conftest import spec_dict
from tests.flows.conftest import BIN, PrefectServer, client_of, start, stop, tail

WAIT_TIMEOUT = 420.0  # ingest, train, backtest and register on a loaded 2-core machine


def write_spec(tmp_path: Path, bike_dir: Path, name: str, **overrides) -> Path:
    path = tmp_path / "spec.yaml"
    values = {"name": name, "gate.require_approval": True, **overrides}
    path.write_text(yaml.safe_dump(spec_dict(bike_dir, tmp_path / "state", **values)))
    return path


def start_run(server: PrefectServer, spec: Path, tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    log = tmp_path / "run.log"
    command = [str(BIN / "retrain"), "run", "manual", "--spec", str(spec), "--as-of", "2011-04-29"]
    env = {**server.env()}
    env.pop("PREFECT_LOGGING_LEVEL")  # the CLI's quiet default
    return start(command, env, log, tmp_path), log


def paused(server: PrefectServer, spec: Path, process, log: Path) -> str:
    """Wait until the run's version 1 waits for approval (its flow run Paused)."""
    model = load_spec(spec)
    ledger = Ledger(model.state.ledger)
    deadline = time.monotonic() + WAIT_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the run exited with {process.returncode}:\n{tail(log)}")
        waiting = None
        if (tmp_path_of(spec) / "state" / "ledger.db").exists():
            try:
                waiting = ledger.waiting_flow_run(model.name, "1")
            except Exception:  # the schema is being created
                waiting = None
        if waiting is not None:
            with client_of(server) as client:
                state = client.read_flow_run(UUID(waiting[1])).state
            if state is not None and state.is_paused():
                return waiting[1]
        time.sleep(1)
    pytest.fail(f"the run did not pause for approval within {WAIT_TIMEOUT:g} s:\n{tail(log)}")


def tmp_path_of(spec: Path) -> Path:
    return spec.parent


def answer(server: PrefectServer, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "retrain"), *args],
        env=server.env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_retrain_approve_answers_the_paused_run_and_only_from_an_allowed_approver(
    live_server, tmp_path, bike_dir
):
    spec = write_spec(tmp_path, bike_dir, "bike-approve", **{"gate.approvers": ["ana"]})
    process, log = start_run(live_server, spec, tmp_path)
    try:
        paused(live_server, spec, process, log)

        bob = answer(live_server, tmp_path, "approve", "bike-approve", "1", "--approver", "bob",
                     "--spec", str(spec))  # fmt: skip
        assert bob.returncode == 5
        assert bob.stderr.splitlines() == [
            "error: 'bob' may not answer for bike-approve: gate.approvers allows only ana; ask "
            "one of them, or add the name to [gate] approvers in the spec"
        ]
        wrong = answer(live_server, tmp_path, "approve", "bike-approve", "7", "--approver", "ana",
                       "--spec", str(spec))  # fmt: skip
        assert wrong.returncode == 1
        assert "no retrain of bike-approve waits for approval of version 7" in wrong.stderr

        ana = answer(live_server, tmp_path, "approve", "bike-approve", "1", "--approver", "ana",
                     "--comment", "checked the backtest", "--spec", str(spec))  # fmt: skip
        assert ana.returncode == 0, ana.stderr
        assert ana.stdout.startswith("bike-approve v1: approved by ana; the waiting run")
        process.wait(timeout=WAIT_TIMEOUT)
    finally:
        stop(process)

    output = log.read_text()
    assert process.returncode == 0, tail(log)
    assert "bike-approve v1 waits for an operator (at most 24h): answer in the Prefect UI" in (
        output
    )
    assert "`retrain approve bike-approve 1`" in output
    assert "Traceback" not in output
    model = load_spec(spec)
    [run] = Ledger(model.state.ledger).runs(model.name)
    assert (run.status, run.promoted, run.actor) == ("promoted", True, "ana")


@pytest.mark.slow
def test_retrain_reject_answers_the_paused_run_with_the_comment(live_server, tmp_path, bike_dir):
    spec = write_spec(tmp_path, bike_dir, "bike-reject")
    process, log = start_run(live_server, spec, tmp_path)
    try:
        paused(live_server, spec, process, log)
        li = answer(live_server, tmp_path, "reject", "bike-reject", "1", "--approver", "li",
                    "--comment", "holiday week", "--spec", str(spec))  # fmt: skip
        assert li.returncode == 0, li.stderr
        process.wait(timeout=WAIT_TIMEOUT)
    finally:
        stop(process)

    assert process.returncode == 5, tail(log)  # not promoted
    model = load_spec(spec)
    [run] = Ledger(model.state.ledger).runs(model.name)
    assert (run.status, run.promoted, run.actor) == ("rejected", False, "li")
    assert "holiday week" in (run.error or "")


@pytest.mark.slow
def test_a_run_waiting_for_approval_stops_within_seconds_on_sigterm(
    live_server, tmp_path, bike_dir
):
    spec = write_spec(tmp_path, bike_dir, "bike-waiting")
    process, log = start_run(live_server, spec, tmp_path)
    try:
        paused(live_server, spec, process, log)
        process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        process.wait(timeout=60)
        took = time.monotonic() - sent
    finally:
        stop(process)

    assert took < 10, f"took {took:.1f} s"
    assert process.returncode == 143
    lines = log.read_text().splitlines()
    assert lines[-1] == f"error: {TERMINATED}"
    assert "Traceback" not in log.read_text()
    model = load_spec(spec)
    [run] = Ledger(model.state.ledger).runs(model.name)
    assert run.status == "failed"
