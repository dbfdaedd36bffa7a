"""Links between Prefect and MLflow, readable run names, model cards and model events, read
back from the real MLflow registry and the real Prefect server after a flow run."""

from __future__ import annotations

import time
from typing import Any
from uuid import UUID

import httpx
from prefect import get_client
from prefect.settings import PREFECT_API_URL

from flows.links import FLOW_RUN_ID_TAG, FLOW_RUN_URL_TAG
from flows.retrain_flow import retrain_flow
from registry.cards import read_card
from tests.flows.conftest import artifacts_of, run_flow
from tests.flows.test_retrain_flow import AS_OF, registry_for, write_spec


def model_events(flow_run_id: UUID, timeout: float = 60.0, count: int = 1) -> list[dict[str, Any]]:
    """The ``retrain.model.*`` events this flow run emitted, as the server stored them."""
    query = {
        "filter": {
            "event": {"prefix": ["retrain.model."]},
            "related": {"id": [f"prefect.flow-run.{flow_run_id}"]},
        },
        "limit": 50,
    }
    deadline = time.monotonic() + timeout
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:  # events are written a little after they are sent
        response = httpx.post(f"{PREFECT_API_URL.value()}/events/filter", json=query)
        response.raise_for_status()
        found = response.json()["events"]
        if len(found) >= count:
            return found
        time.sleep(0.5)
    return found


def test_a_version_links_to_its_flow_run_and_the_run_links_to_the_version(tmp_path, bike_dir):
    spec_path = write_spec(tmp_path, bike_dir)

    outcome, flow_run_id = run_flow(
        retrain_flow, str(spec_path), as_of=AS_OF, auto_approve=True, actor="ci"
    )

    registry, _, _ = registry_for(spec_path)
    version = outcome["version"]
    info = registry.version(version)
    # MLflow -> Prefect
    assert info.tags[FLOW_RUN_ID_TAG] == str(flow_run_id)
    assert info.tags[FLOW_RUN_URL_TAG].endswith(f"/runs/flow-run/{flow_run_id}")
    assert info.tags[FLOW_RUN_URL_TAG].startswith("http://")
    run = registry.client.get_run(info.run_id)
    assert run.info.run_name == f"bike-test-manual-{AS_OF}"
    experiment = registry.client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    # Prefect -> MLflow (a file store: the models:/ URI)
    link = f"models:/bike-test/{version}"
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
    assert flow_run.name == f"bike-test-manual-{AS_OF}"
    assert {"model:bike-test", "mode:manual", "family:lightgbm"} <= set(flow_run.tags)
    # the verdict opens with the link to the version and holds the table of the three models
    [verdict] = artifacts_of(flow_run_id, "bike-test-backtest")
    assert verdict.data.startswith(f"**Registered as [bike-test version {version}]({link})")
    assert link in (verdict.description or "")
    assert f"| candidate | (new) | {outcome['candidate']:.4f} |" in verdict.data
    assert f"| baseline | - | {outcome['baseline']:.4f} |" in verdict.data
    [plot] = artifacts_of(flow_run_id, "bike-test-backtest-plot")
    assert link in (plot.description or "")
    # one artifact where there were three: no separate link or table of the same figures
    assert not artifacts_of(flow_run_id, "bike-test-mlflow-version")
    assert not artifacts_of(flow_run_id, "bike-test-backtest-table")


def test_every_version_gets_a_model_card_in_mlflow_and_prefect_naming_who_approved(
    tmp_path, bike_dir
):
    spec_path = write_spec(tmp_path, bike_dir)

    outcome, flow_run_id = run_flow(
        retrain_flow, str(spec_path), as_of=AS_OF, auto_approve=True, actor="ci"
    )

    registry, _, _ = registry_for(spec_path)
    card = read_card(registry, outcome["version"])
    assert card.startswith(f"# Model card: bike-test version {outcome['version']}")
    assert f"| candidate | {outcome['version']} | {outcome['candidate']:.6g} |" in card
    assert f"| baseline | - | {outcome['baseline']:.6g} |" in card
    assert "- promoted to champion" in card and "approved or rejected by: ci" in card
    # decided at once (auto-approved): one card, with the decision; a run that waits for an
    # operator or a live test publishes the pending card first (test_suspend, test_live_flow)
    cards = artifacts_of(flow_run_id, "bike-test-model-card")
    assert [c.data for c in cards] == [card]
    assert "## Decision\n\n- pending" not in card


def test_the_decision_is_an_event_on_the_model_with_the_evidence(tmp_path, bike_dir):
    spec_path = write_spec(tmp_path, bike_dir)
    first, first_run = run_flow(retrain_flow, str(spec_path), as_of=AS_OF, auto_approve=True)

    worse, worse_run = run_flow(
        retrain_flow,
        str(spec_path),
        as_of=AS_OF,
        auto_approve=True,
        overrides={"lightgbm.num_boost_round": 1},
    )

    [promoted] = model_events(first_run)
    assert promoted["event"] == "retrain.model.promoted"
    assert promoted["resource"]["prefect.resource.id"] == "retrain.model.bike-test"
    assert promoted["payload"]["version"] == first["version"]
    assert promoted["payload"]["candidate"] == first["candidate"]
    assert promoted["payload"]["baseline"] == first["baseline"]
    assert promoted["payload"]["data_end"].startswith("2011-04-2")
    [refused] = model_events(worse_run)
    assert refused["event"] == "retrain.model.refused"
    assert refused["payload"]["version"] == worse["version"]
    assert "worse than the champion" in refused["payload"]["reason"]
    assert refused["payload"]["gate_passed"] is False
    assert refused["payload"]["champion_version"] == first["version"]


def test_a_failed_retrain_is_an_event_with_the_error(tmp_path, bike_dir):
    spec_path = write_spec(tmp_path, bike_dir, label="rentals")

    state = retrain_flow(str(spec_path), as_of=AS_OF, auto_approve=True, return_state=True)

    assert state.is_failed()
    [failed] = model_events(state.state_details.flow_run_id)
    assert failed["event"] == "retrain.model.failed"
    assert "'rentals' (label) missing from the source" in failed["payload"]["error"]


def test_the_approval_form_links_to_the_version_and_the_request_is_an_event(tmp_path, bike_dir):
    from prefect.flow_runs import resume_flow_run
    from prefect.input.actions import read_flow_run_input
    from prefect.input.run_input import keyset_from_paused_state

    from tests.flows.test_retrain_flow import _run_in_thread, _wait_for_paused_run

    spec_path = write_spec(tmp_path, bike_dir, **{"gate.require_approval": True})
    thread, box = _run_in_thread(spec_path)
    paused = _wait_for_paused_run()

    keyset = keyset_from_paused_state(paused.state)
    form = read_flow_run_input(keyset["description"], flow_run_id=paused.id)
    assert "[bike-test version 1](models:/bike-test/1)" in form
    [requested] = model_events(paused.id)
    assert requested["event"] == "retrain.model.approval-requested"
    assert requested["payload"]["version"] == "1"
    assert requested["payload"]["form_url"].endswith(f"/runs/flow-run/{paused.id}")
    assert requested["payload"]["gate_passed"] is True
    resume_flow_run(paused.id, run_input={"decision": "reject", "approver": "ana", "comment": ""})
    thread.join(timeout=120)
    assert "error" not in box, box.get("error")
    events = {e["event"]: e for e in model_events(paused.id, count=2)}
    assert "rejected by ana" in events["retrain.model.refused"]["payload"]["reason"]
