"""Long approval waits suspend the run: no process waits, the ledger keeps the claim.

A deployment's run whose approval timeout is longer than ``gate.suspend_after`` suspends (its
process exits) instead of pausing; the operator's answer resubmits the run, which goes straight
to the decision. Real ``prefect server start`` and ``retrain serve`` (the live_server fixture).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from prefect.client.schemas.objects import FlowRun

from registry import ModelRegistry
from registry.cards import read_card
from retrain.config import load_spec
from retrain.ledger import Ledger
from tests.conftest import spec_dict
from tests.flows.conftest import BIN, PrefectServer, client_of, read_deployment, start, stop, tail

RUN_TIMEOUT = 420.0  # ingest, train, backtest and register on a loaded 2-core machine
NEVER = "0 0 1 1 *"  # the deployment's own schedule must not fire during the test


def write_spec(tmp_path: Path, bike_dir: Path, name: str, **overrides: Any) -> Path:
    """One model name per test: the tests share a server, and a deployment of the same name
    would still carry the previous test's parameters until ``retrain serve`` re-registers it."""
    path = tmp_path / "spec.yaml"
    values = {
        "name": name,
        "gate.require_approval": True,
        "gate.suspend_after": "1s",
        "schedule.cron": NEVER,
        **overrides,
    }
    path.write_text(yaml.safe_dump(spec_dict(bike_dir, tmp_path / "state", **values)))
    return path


def wait_for_state(
    server: PrefectServer, run_id, names: set[str], log: Path, timeout: float = RUN_TIMEOUT
) -> FlowRun:
    deadline = time.monotonic() + timeout
    with client_of(server) as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(run_id)
            if run.state and run.state.name in names:
                return run
            if run.state and run.state.is_final():
                pytest.fail(f"flow run {run.name} ended {run.state.name}:\n{tail(log)}")
            time.sleep(1)
    pytest.fail(
        f"flow run {run_id} never reached {sorted(names)} within {timeout:g} s "
        f"(it is {run.state.name if run.state else None}):\n{tail(log)}"
    )


def serve(server: PrefectServer, spec_path: Path, tmp_path: Path):
    log = tmp_path / "serve.log"
    env = {**server.env(), "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    process = start([str(BIN / "retrain"), "serve", "--spec", str(spec_path)], env, log, tmp_path)
    return process, log


def new_run(server: PrefectServer, deployment) -> Any:
    with client_of(server) as client:
        return client.create_flow_run_from_deployment(deployment.id).id


@pytest.mark.slow
def test_a_long_approval_wait_suspends_holds_the_model_and_resumes_on_the_answer(
    live_server, tmp_path, bike_dir
):
    spec_path = write_spec(tmp_path, bike_dir, "bike-answered")
    spec = load_spec(spec_path)
    process, log = serve(live_server, spec_path, tmp_path)
    try:
        deployment = read_deployment(live_server, f"retrain/{spec.name}-scheduled")
        first = new_run(live_server, deployment)
        wait_for_state(live_server, first, {"Suspended"}, log)
        ledger = Ledger(spec.state.ledger)
        [waiting] = [r for r in ledger.runs(spec.name) if r.status == "suspended"]
        assert waiting.model_version == "1"

        # while it waits, nothing else retrains the model: a second request is skipped
        second = new_run(live_server, deployment)
        wait_for_state(live_server, second, {"Completed"}, log)
        skipped = ledger.run_of_flow_run(str(second))
        assert skipped is not None and skipped.status == "skipped"
        assert skipped.error == (
            f"another retrain of {spec.name} is running (ledger run {waiting.id})"
        )

        with client_of(live_server) as client:
            client.resume_flow_run(
                first, run_input={"decision": "approve", "approver": "ana", "comment": "ok"}
            )
        done = wait_for_state(live_server, first, {"Completed"}, log)
    finally:
        stop(process)

    assert "Suspending flow run" in log.read_text(errors="replace")
    # one ledger run for the flow run, suspended and resumed: promoted by the operator
    runs = [r for r in ledger.runs(spec.name) if r.id == waiting.id]
    assert [(r.status, r.promoted, r.actor) for r in runs] == [("promoted", True, "ana")]
    assert len([r for r in ledger.runs(spec.name) if r.model_version == "1"]) == 1
    registry = ModelRegistry(spec.state.tracking, spec.name, ledger)
    assert registry.alias_version("champion") == "1"
    tags = registry.version("1").tags
    assert (tags["retrain.approval"], tags["retrain.approver"]) == ("approved", "ana")
    # the card, read back from MLflow, was rewritten by the resumed run: who approved, when
    card = read_card(registry, "1")
    assert (
        "- promoted to champion: gate passed; approved by ana: ok (answered after the run was "
        "suspended)" in card
    )
    assert "- approved or rejected by: ana" in card
    [when] = [line for line in card.splitlines() if line.startswith("- decided at: ")]
    decided = pd.Timestamp(when.removeprefix("- decided at: ").removesuffix(" UTC"))
    assert decided >= pd.Timestamp(waiting.started_at)
    assert "- pending" not in card and "| candidate | 1 |" in card  # the rest is kept
    [moved] = [r for r in ledger.alias_history(spec.name) if r["alias"] == "champion"]
    assert moved["flow_run_id"] == str(done.id)
    # the claim is released: the next retrain may run
    assert (
        ledger.claim_model(spec.name, 10_000, stale_after=pd.Timedelta(spec.gate.approval_timeout))
        is None
    )


@pytest.mark.slow
def test_a_suspended_run_nobody_answers_is_rejected_by_the_next_run(
    live_server, tmp_path, bike_dir
):
    spec_path = write_spec(
        tmp_path, bike_dir, "bike-unanswered", **{"gate.approval_timeout": "10s"}
    )
    spec = load_spec(spec_path)
    process, log = serve(live_server, spec_path, tmp_path)
    try:
        deployment = read_deployment(live_server, f"retrain/{spec.name}-scheduled")
        first = new_run(live_server, deployment)
        wait_for_state(live_server, first, {"Suspended"}, log)
        ledger = Ledger(spec.state.ledger)
        [waiting] = [r for r in ledger.runs(spec.name) if r.status == "suspended"]
        time.sleep(12)  # past gate.approval_timeout: nobody answered

        second = new_run(live_server, deployment)
        wait_for_state(live_server, second, {"Suspended"}, log)
    finally:
        stop(process)

    [expired] = [r for r in ledger.runs(spec.name) if r.id == waiting.id]
    assert (expired.status, expired.promoted, expired.actor) == ("rejected", False, "timeout")
    assert expired.error == "gate passed; rejected by timeout: no answer within 10s: rejected"
    registry = ModelRegistry(spec.state.tracking, spec.name, ledger)
    assert registry.alias_version("champion") is None
    tags = registry.version(waiting.model_version).tags
    assert (tags["retrain.approval"], tags["retrain.approver"]) == ("rejected", "timeout")
    # the second run took the model over and now waits for its own operator
    current = ledger.run_of_flow_run(str(second))
    assert current is not None and current.status == "suspended"
    assert current.model_version == "2"
