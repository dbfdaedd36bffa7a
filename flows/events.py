"""Prefect events for every state change of a model: the only module that emits events.

Each event's resource is the model (``retrain.model.<name>``), its payload the evidence
(version, metrics, gate reasons, data end, links). Prefect automations (deploy/automations.py,
docs/operations.md) match on the event names to notify, page or run deployments.

=================================== ======================================================
``retrain.model.retrain-requested`` the monitor asks for a continual retrain (reasons)
``retrain.model.approval-requested`` a candidate passed the gate and waits for an operator
``retrain.model.promoted``           ``champion`` moved to a new version
``retrain.model.refused``            a candidate was not promoted (gate, operator, timeout)
``retrain.model.failed``             a retrain ended with an error
``retrain.model.rolled-back``        ``champion`` moved back to ``previous``
``retrain.alias.tampered``           an alias is not where the audit says (the monitor)
=================================== ======================================================
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from prefect.context import FlowRunContext, TaskRunContext
from prefect.events import emit_event
from prefect.settings import PREFECT_API_URL

from retrain.families.spine import Evaluated, Trained

logger = logging.getLogger(__name__)

PREFIX = "retrain.model."
RETRAIN_REQUESTED = PREFIX + "retrain-requested"
APPROVAL_REQUESTED = PREFIX + "approval-requested"
PROMOTED = PREFIX + "promoted"
REFUSED = PREFIX + "refused"
FAILED = PREFIX + "failed"
ROLLED_BACK = PREFIX + "rolled-back"
# an alias moved outside retrain (MLflow UI, MlflowClient), found by the monitor's check
ALIAS_TAMPERED = "retrain.alias.tampered"
EVENTS = (
    RETRAIN_REQUESTED,
    APPROVAL_REQUESTED,
    PROMOTED,
    REFUSED,
    FAILED,
    ROLLED_BACK,
    ALIAS_TAMPERED,
)


def model_resource(model: str) -> dict[str, str]:
    """The resource every event of a model is about (automations match on its id)."""
    return {"prefect.resource.id": f"{PREFIX}{model}", "prefect.resource.name": model}


# the resource label of a ``failed`` event: how many of the model's runs failed in a row, this
# one included ("1": the run before it did not fail); the page automation matches on it
FAILURES_IN_A_ROW = "retrain.failures-in-a-row"


def _emit(
    event: str,
    model: str,
    payload: Mapping[str, Any],
    labels: Mapping[str, str] | None = None,
) -> None:
    in_a_run = FlowRunContext.get() is not None or TaskRunContext.get() is not None
    if PREFECT_API_URL.value() is None and not in_a_run:
        # a CLI command on the embedded setup: no server, so no automation, listens (emitting
        # would start Prefect's temporary server for nothing)
        logger.debug("no Prefect server configured: %s for %s not emitted", event, model)
        return
    resource = {**model_resource(model), **(labels or {})}
    sent = emit_event(event=event, resource=resource, payload=dict(payload))
    logger.debug("%s %s for %s", "emitted" if sent else "no events client: skipped", event, model)


def retrain_requested(model: str, payload: Mapping[str, Any]) -> None:
    _emit(RETRAIN_REQUESTED, model, payload)


def alias_tampered(model: str, payload: Mapping[str, Any]) -> None:
    """An alias is not where retrain's audit says (payload: alias, registry_version,
    audited_version, reverted)."""
    _emit(ALIAS_TAMPERED, model, payload)


def approval_requested(
    model: str, version: str, form_url: str | None, evidence: Mapping[str, Any]
) -> None:
    """``form_url``: the paused flow run's page, where the Resume button opens the form."""
    _emit(APPROVAL_REQUESTED, model, {**evidence, "version": version, "form_url": form_url or ""})


def promoted(
    model: str, version: str, previous: str | None, approver: str, evidence: Mapping[str, Any]
) -> None:
    _emit(
        PROMOTED,
        model,
        {**evidence, "version": version, "previous": previous or "", "approver": approver},
    )


def refused(model: str, version: str, reason: str, evidence: Mapping[str, Any]) -> None:
    _emit(REFUSED, model, {**evidence, "version": version, "reason": reason})


def failed(model: str, error: str, in_a_row: int, evidence: Mapping[str, Any]) -> None:
    """``in_a_row``: the model's runs that failed one after the other, this one included
    (:func:`retrain.ledger.failures_in_a_row`), in the payload and as a resource label."""
    _emit(
        FAILED,
        model,
        {**evidence, "error": error, "failures_in_a_row": in_a_row},
        {FAILURES_IN_A_ROW: str(in_a_row)},
    )


def rolled_back(model: str, was: str, now: str, actor: str, reason: str) -> None:
    _emit(
        ROLLED_BACK,
        model,
        {"from_version": was, "to_version": now, "actor": actor, "reason": reason},
    )


def evidence(
    version: str, trained: Trained, evaluated: Evaluated, run_id: int, links: Mapping[str, str]
) -> dict[str, Any]:
    """What an event says about a candidate: its metrics, the gate's reasons, its data, links."""
    result = evaluated.result
    return {
        "version": version,
        "version_url": links.get("version_url", ""),
        "flow_run_url": links.get("flow_run_url", ""),
        "run_id": run_id,
        "metric": result.metric,
        "candidate": result.candidate,
        "champion": result.champion,
        "champion_version": result.champion_version,
        "baseline": result.baseline,
        "improvement": result.improvement,
        "gate_passed": result.passed,
        "reasons": list(result.reasons),
        "data_version": trained.window.version,
        "data_end": str(trained.data_end) if trained.data_end is not None else "",
        "holdout": f"{result.holdout_start} .. {result.holdout_end}",
    }
