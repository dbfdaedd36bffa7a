"""The monitor flow of the continual mode: measure signals, decide, emit an event.

monitor -> signals stored in the ledger -> trigger policy -> (maybe) a typed Prefect event
``retrain.model.retrain-requested`` on the model's resource, which the continual deployment's
trigger turns into a stateful retrain with the reasons as parameters.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows import events
from flows.events import RETRAIN_REQUESTED as RETRAIN_EVENT
from flows.events import model_resource
from flows.retrain_flow import _flow_run_id, load_champion, make_registry, recover_alias_changes
from flows.settings import resolve_spec
from registry import ModelRegistry
from retrain.config import ModelSpec
from retrain.families.spine import Champion, parse_as_of
from retrain.ledger import Ledger
from retrain.monitor_check import MonitorResult, monitor_check
from retrain.reports import drift_report

logger = logging.getLogger(__name__)

TAMPERED_EVENT = events.ALIAS_TAMPERED

__all__ = ["RETRAIN_EVENT", "TAMPERED_EVENT", "model_resource", "monitor_flow"]


def _key(*parts: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def report_path(spec: ModelSpec, check_id: int) -> Path:
    return (spec.state.dir / "reports" / f"drift-check-{check_id}.png").resolve()


@task(cache_policy=NO_CACHE)
def check_signals(
    spec: ModelSpec, ledger: Ledger, champion: Champion, as_of: str | None
) -> MonitorResult:
    return monitor_check(spec, ledger, champion, parse_as_of(as_of))


@task(cache_policy=NO_CACHE)
def check_aliases(spec: ModelSpec, registry: ModelRegistry) -> list[dict[str, Any]]:
    """Aliases moved outside retrain: each one is an event on the model's resource and, with
    ``monitor.revert_tampered_alias``, is moved back where retrain's audit says (audited)."""
    recover_alias_changes(registry)
    drift = registry.alias_drift()
    revert = spec.monitor.revert_tampered_alias and bool(drift)
    if revert:
        registry.revert_drift(drift, actor="monitor", flow_run_id=_flow_run_id())
    found = []
    for d in drift:
        get_run_logger().warning(
            "%s%s", d.describe(spec.name), "; moved back" if revert else " (not moved back)"
        )
        found.append(
            {
                "alias": d.alias,
                "registry_version": d.registry_version,
                "audited_version": d.audited_version,
                "reverted": revert,
            }
        )
        events.alias_tampered(
            spec.name, {k: "" if v is None else str(v) for k, v in found[-1].items()}
        )
    return found


@flow(name="retrain-monitor")
def monitor_flow(
    spec_path: str, as_of: str | None = None, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One monitor check of a model; emits a retrain request when the policy says so."""
    spec = resolve_spec(spec_path, overrides)
    with Ledger(spec.state.ledger) as ledger:  # its connections closed when the check ends
        return _check(spec, ledger, as_of)


def _check(spec: ModelSpec, ledger: Ledger, as_of: str | None) -> dict[str, Any]:
    ledger.migrate()
    registry = make_registry(spec, ledger)
    tampered = check_aliases(spec, registry)
    champion = load_champion(registry)
    if champion is None:
        message = f"{spec.name} has no champion yet: train one first (`retrain run manual`)"
        get_run_logger().warning(message)
        return {
            "model": spec.name,
            "status": "no-champion",
            "retrain": False,
            "reasons": [message],
            "tampered": tampered,
        }
    result = check_signals(spec, ledger, champion, as_of)
    decision = result.decision
    reasons = list(decision.reasons)
    retrain = decision.retrain
    in_flight = ledger.retrain_in_flight(spec.name)
    if retrain and in_flight is not None:
        retrain = False
        reasons.append(f"a retrain of {spec.name} is already running (ledger run {in_flight.id})")
    check_id = ledger.record_check(
        spec.name,
        result.as_of,
        champion.version,
        result.signals,
        retrain=retrain,
        fired=decision.fired,
        reasons=reasons,
        blocked_by=decision.blocked_by,
        flow_run_id=_flow_run_id(),
    )
    drift_report(report_path(spec, check_id), result)
    create_table_artifact(
        key=_key(spec.name, "signals"),
        table=result.table(),
        description=f"signals of {spec.name} champion v{champion.version} at {result.as_of}",
    )
    create_markdown_artifact(
        key=_key(spec.name, "trigger-decision"),
        markdown=f"## {'Retrain requested' if retrain else 'No retrain'}\n\n"
        + "\n".join(f"- {r}" for r in reasons)
        + (
            "\n\n### Data problems\n" + "\n".join(f"- {b}" for b in decision.blocked_by)
            if decision.blocked_by
            else ""
        ),
    )
    if retrain:
        events.retrain_requested(
            spec.name,
            {
                "reason": "continual trigger: " + "; ".join(reasons),
                "reasons": reasons,
                "as_of": "" if as_of is None else str(as_of),
                "check_id": str(check_id),
                "champion_version": champion.version,
                "signals": {
                    f"{s.name}:{s.feature}" if s.feature else s.name: round(s.value, 6)
                    for s in result.signals
                    if s.fired
                },
            },
        )
        get_run_logger().info("retrain requested for %s: %s", spec.name, "; ".join(reasons))
    return {
        "model": spec.name,
        "status": "checked",
        "check_id": check_id,
        "retrain": retrain,
        "reasons": reasons,
        "blocked_by": list(decision.blocked_by),
        "fired": list(decision.fired),
        "fresh_rows": result.fresh_rows,
        "tampered": tampered,
    }
