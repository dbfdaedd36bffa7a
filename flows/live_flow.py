"""The online evaluation flow: logged answers + feedback -> live decision -> registry.

Reads like the live half of the data flow: join the gateway's predictions with their feedback
(respecting ``live.label_delay``), evaluate the live test (retrain.live), show the evidence, ask
the operator when the gate wants one, and carry the decision out through registry/: promote the
challenger with the same invariant as a backtest promotion, or end it (roll back).
"""

from __future__ import annotations

import base64
import logging
import re
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, pause_flow_run, task
from prefect.artifacts import (
    create_image_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import FlowPauseTimeout
from prefect.runtime import flow_run

from flows import events
from flows.retrain_flow import ApprovalInput, make_registry, publish_decision
from flows.settings import resolve_spec
from registry import ModelRegistry
from registry.client import GATE_TAG
from registry.live import end_challenger, live_versions, record_live_result
from retrain.config import ModelSpec
from retrain.families.lineage import Lineage
from retrain.labelled import labelled_frame, write_partitions
from retrain.ledger import Ledger, now
from retrain.live import LiveDecision, evaluate, outcomes, promotion_decision
from retrain.live.outcomes import Outcome, online_metric
from retrain.promotion import Approval, automatic_approval, needs_operator, timed_out
from retrain.reports import live_plot
from retrain.statuses import live_run_mode

logger = logging.getLogger(__name__)


def _key(*parts: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def _flow_run_id() -> str | None:
    value = flow_run.get_id()
    return str(value) if value else None


@task(cache_policy=NO_CACHE)
def join_outcomes(spec: ModelSpec, ledger: Ledger) -> list[Outcome]:
    """Every logged answer of the model old enough for its labels, with its feedback."""
    predictions = ledger.predictions(spec.name)
    feedback = ledger.feedback([str(p["request_id"]) for p in predictions])
    delay = timedelta(seconds=spec.live.label_delay_delta.total_seconds())
    return outcomes(
        spec.family,
        spec.metric,
        predictions,
        feedback,
        now=now(),
        label_delay=delay,
        label_code=spec.label_code,
    )


@task(cache_policy=NO_CACHE)
def export_labelled(spec: ModelSpec, ledger: Ledger) -> int:
    """Labelled answers -> parquet partitions in ``live.labelled_dir`` (training data)."""
    if spec.live.labelled_dir is None:
        return 0
    predictions = ledger.predictions(spec.name, with_inputs=True)
    feedback = ledger.feedback([str(p["request_id"]) for p in predictions])
    frame = labelled_frame(spec, predictions, feedback)
    write_partitions(frame, spec.live.labelled_dir)
    get_run_logger().info("%d labelled rows written to %s", len(frame), spec.live.labelled_dir)
    return len(frame)


@task(cache_policy=NO_CACHE)
def decide_live(
    spec: ModelSpec, champion: str, challenger: str, found: list[Outcome]
) -> LiveDecision:
    metric, greater = online_metric(spec.family, spec.metric)
    decision = evaluate(
        spec.live,
        model=spec.name,
        metric=metric,
        greater_is_better=greater,
        champion_version=champion,
        challenger_version=challenger,
        outcomes=found,
        seed=spec.seed,
    )
    get_run_logger().info(
        "live %s test: %s (%s)", spec.live.routing, decision.action, decision.reason
    )
    create_markdown_artifact(
        key=_key(spec.name, "live-test"),
        markdown=decision.markdown(),
        description=f"online evaluation of {spec.name}",
    )
    create_table_artifact(
        key=_key(spec.name, "live-arms"),
        table=[
            {k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()}
            for row in decision.table()
        ],
        description="per-arm requests, errors, latency and online metric with its interval",
    )
    create_image_artifact(
        image_url=live_plot_url(spec, decision),
        key=_key(spec.name, "live-plot"),
        description="online metric per arm with its interval; labelled requests vs required",
    )
    return decision


def live_plot_url(spec: ModelSpec, decision: LiveDecision) -> str:
    """The live test's plot as a data URL: shown inline in the artifact and the pause form."""
    with tempfile.TemporaryDirectory(prefix="retrain-live-") as tmp:
        png = live_plot(Path(tmp) / "live.png", decision)
        return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def ask_operator(spec: ModelSpec, decision: LiveDecision) -> Approval:
    """The Prefect pause form, showing the online evidence (per-arm table, test, sample size)."""
    description = (
        f"# Promote {spec.name} version {decision.challenger_version} to champion?\n\n"
        + decision.markdown()
        + "\n\nThe plot of the arms is the run's `live-plot` artifact (Artifacts tab)."
        + "\n\nChoose **approve** or **reject**, give your name and a comment, then Submit."
    )
    timeout = spec.gate.approval_timeout_seconds
    form = ApprovalInput.with_initial_data(description=description, decision="reject")
    try:
        answer = pause_flow_run(
            wait_for_input=form,
            timeout=timeout,
            poll_interval=max(1, min(10, timeout // 4)),
            key=_key("approve-live", spec.name, decision.challenger_version),
        )
    except FlowPauseTimeout:
        return timed_out(spec.gate.approval_timeout)
    return Approval(
        answer.decision == "approve", answer.approver.strip() or "unknown operator", answer.comment
    )


@task(cache_policy=NO_CACHE)
def carry_out(
    spec: ModelSpec,
    registry: ModelRegistry,
    decision: LiveDecision,
    approval: Approval | None,
    actor: str,
) -> dict[str, Any]:
    tags = registry.version(decision.challenger_version).tags
    promotion = promotion_decision(
        decision,
        backtest_passed=tags.get(GATE_TAG) == "passed",
        backtest_reasons=(Lineage(tags).decision or "see the version's backtest",),
        approval=approval,
    )
    record_live_result(
        registry, decision.challenger_version, f"{decision.action}: {decision.reason}"
    )
    who = promotion.approver or actor
    evidence = {
        "routing": decision.routing,
        "test": decision.test,
        "metric": decision.metric,
        "effect": "" if decision.effect is None else str(decision.effect),
        "p_value": "" if decision.p_value is None else str(decision.p_value),
        "samples": str(decision.samples),
        "champion": decision.champion_version,
    }
    if promotion.promote:
        previous = registry.alias_version("champion")
        registry.record_decision(promotion)
        registry.promote(promotion, actor=who, flow_run_id=_flow_run_id())
        events.promoted(decision.model, decision.challenger_version, previous, who, evidence)
    else:
        end_challenger(registry, promotion, actor=who, flow_run_id=_flow_run_id())
        events.refused(decision.model, decision.challenger_version, promotion.reason, evidence)
    publish_decision(spec, registry, promotion, f"after the live {decision.routing} test")
    return {"promoted": promotion.promote, "decision": promotion.reason}


@flow(name="live-evaluate", log_prints=False)
def live_evaluate_flow(
    spec_path: str,
    auto_approve: bool = False,
    actor: str = "online-evaluation",
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate the model's live test once; promote or end the challenger when it is decided."""
    spec = resolve_spec(spec_path, overrides)
    with Ledger(spec.state.ledger) as ledger:
        ledger.migrate()
        registry = make_registry(spec, ledger)
        exported = export_labelled(spec, ledger)
        versions = live_versions(registry)
        if spec.live.routing == "off" or versions.champion is None or versions.challenger is None:
            why = (
                "live.routing is 'off'"
                if spec.live.routing == "off"
                else f"no live test running (champion {versions.champion}, challenger "
                f"{versions.challenger}: a challenger must have passed its backtest gate and be "
                "undecided)"
            )
            return {"status": "idle", "model": spec.name, "decision": why, "labelled": exported}
        found = join_outcomes(spec, ledger)
        decision = decide_live(spec, versions.champion, versions.challenger, found)
        result: dict[str, Any] = {
            "status": decision.action,
            "model": spec.name,
            "champion": versions.champion,
            "challenger": versions.challenger,
            "evidence": decision.to_dict(),
            "decision": decision.reason,
            "labelled": exported,
        }
        if decision.action == "continue":
            return result
        run_id = ledger.start_run(
            spec.name, live_run_mode(spec.live.routing), decision.reason, actor, _flow_run_id()
        )
        approval: Approval | None = None
        if decision.action == "promote":
            if needs_operator(True, spec.gate.require_approval, auto_approve):
                approval = ask_operator(spec, decision)
            else:
                approval = automatic_approval(actor)
        done = carry_out(spec, registry, decision, approval, actor)
        ledger.update_run(run_id, model_version=decision.challenger_version)
        ledger.finish_run(
            run_id,
            "promoted" if done["promoted"] else "rejected",
            promoted=done["promoted"],
            metrics=decision.to_dict(),
            error=None if done["promoted"] else done["decision"],
        )
        return {**result, **done, "status": "promoted" if done["promoted"] else "rolled back"}
