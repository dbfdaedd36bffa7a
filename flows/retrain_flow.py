"""The retrain flow: features -> train -> backtest -> register -> (approval) -> promote.

It reads like the data flow in DESIGN.md. Every decision is made in ``retrain``; the registry
carries it out. An operator approves in the Prefect UI (a paused run with a typed form), or
``auto_approve`` approves scripted runs.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import logging
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar

import pandas as pd
from prefect import flow, get_run_logger, pause_flow_run, suspend_flow_run, task
from prefect.artifacts import (
    create_image_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout, Pause
from prefect.input import RunInput
from prefect.runtime import deployment, flow_run
from prefect.utilities.annotations import opaque

from flows import events
from flows.errors import ApprovalError
from flows.links import (
    FLOW_RUN_ID_TAG,
    FLOW_RUN_URL_TAG,
    flow_run_url,
    retrain_run_name,
    run_name,
    tag_flow_run,
)
from flows.settings import model_env_cache, resolve_spec
from registry import CandidateRecord, ModelRegistry
from registry.cards import log_card, read_card
from registry.infra import validate_version
from registry.links import version_link
from retrain.card import CardFacts, card_facts, decision_line, render_card, with_decision
from retrain.config import ModelSpec
from retrain.families import family_of
from retrain.families.baseline import (
    baseline_evaluated,
    baseline_kind,
    baseline_tags,
    fresh_baseline,
    write_baseline_evidence,
)
from retrain.families.lineage import Tag, lineage_tags, refit_tags
from retrain.families.spine import (
    Champion,
    Evaluated,
    Prepared,
    Trained,
    align_to_champion,
    parse_as_of,
    prepare,
    source_rows,
)
from retrain.features import in_memory
from retrain.freshness import data_age, data_end, format_age
from retrain.infra import InfraCheck, gate_with_infra, infra_wanted
from retrain.ledger import Ledger, RunRecord, now
from retrain.promotion import (
    Approval,
    BaselinePromotion,
    PromotionDecision,
    approval_wait,
    automatic_approval,
    baseline_promotion,
    decide,
    needs_operator,
    offered_baseline,
    timed_out,
)
from retrain.stateful import skip_reason, unchanged_reason
from retrain.statuses import Mode

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

# A claim on a model outlives the approval timeout by this much before it counts as stale.
CLAIM_MARGIN = pd.Timedelta(hours=12)
# the ledger metric that holds why a fresh baseline was offered (its decision's first words)
BASELINE_WHY = "baseline_promotion"


class ApprovalInput(RunInput):
    """The form an operator fills in the Prefect UI to answer "promote this candidate?"."""

    decision: Literal["approve", "reject"] = "reject"
    approver: str = ""
    comment: str = ""


@dataclass(frozen=True)
class RetrainOutcome:
    model: str
    mode: Mode
    run_id: int
    version: str
    data_version: str
    strategy: str
    metric: str
    candidate: float
    champion: float | None
    baseline: float
    gate_passed: bool
    promoted: bool
    decision: str
    previous_champion: str | None
    features_computed: int
    features_cached: int
    # gate.promote_baseline: the candidate that lost to the baseline registered as ``version``
    refused_candidate: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"status": "promoted" if self.promoted else "rejected", **asdict(self)}


def step(fn: Callable[P, R]) -> Callable[P, R]:
    """A task of the retrain flow (no result cache), called like the function.

    Prefect walks every argument of a task call looking for the futures and states of upstream
    runs, into dataclasses and pydantic models: a prepared data set's every partition, the
    spec's every table (13 ms of CPU a call for the demo's 108 partitions, several calls a
    model). The flow passes values, never futures, so each argument goes in as ``opaque``:
    resolved at its top level only, so the run graph still links a task to the task whose
    result it was given, and not walked into.

    A task run costs the Prefect server three events (its Pending, Running and Completed
    states) and a log line: about 26 ms of the server's CPU each on SQLite (measured; a
    fleet's models ran seven each). So the steps that read (:func:`load_champion`), compute
    only (:func:`backtest_candidate`) or write one card (:func:`publish_card`) are steps of
    the flow itself, logged in its run; the task runs are the steps that ingest, train,
    register and decide (and refit, fit a baseline, validate the served model).
    """
    run: Callable[..., R] = task(cache_policy=NO_CACHE)(fn)

    @functools.wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        return run(
            *(opaque(value) for value in args),
            **{name: opaque(value) for name, value in kwargs.items()},
        )

    call.task = run  # type: ignore[attr-defined]
    return call


def _artifact_key(*parts: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def _rounded(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Table rows with floats shown to 4 decimals (Prefect table artifacts print them raw)."""
    return [{k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows]


def _flow_run_id() -> str | None:
    value = flow_run.get_id()
    return str(value) if value else None


@step
def prepare_data(spec: ModelSpec, as_of: pd.Timestamp | None, ledger: Ledger) -> Prepared:
    prepared = prepare(spec, as_of=as_of, ledger=ledger)
    get_run_logger().info(
        "%d partitions ingested (%d quarantined); features computed for %d, cached for %d; "
        "train %s %s, holdout %s",
        len(prepared.ingest.partitions),
        len(prepared.ingest.quarantined),
        len(prepared.cache.computed),
        len(prepared.cache.hits),
        prepared.train.describe(),
        prepared.train.version,
        prepared.holdout.describe(),
    )
    return prepared


def recover_alias_changes(registry: ModelRegistry) -> list[str]:
    """Revert an alias change an earlier run left halfway (killed, MLflow or ledger down)."""
    notes = registry.recover_alias_changes()
    for note in notes:
        get_run_logger().warning("recovered an interrupted alias change: %s", note)
    return notes


def load_champion(registry: ModelRegistry) -> Champion | None:
    """The champion (None: there is none yet), loaded after the registry's trust checks. A
    step of the flow itself, not a task run (see :func:`step`): a read."""
    info = registry.alias_info("champion")  # the version, its run and tags: one read
    if info is None:
        return None
    # a refitted version keeps its validated fit: the gate's equal-staleness counterpart
    model, validated = registry.load_with_validated(info.version, info)
    return Champion.registered(info.version, model, info.tags, validated)


@step
def train_candidate(
    spec: ModelSpec, mode: Mode, prepared: Prepared, champion: Champion | None
) -> Trained:
    family = family_of(spec)
    plan = family.plan(mode, spec, champion)
    get_run_logger().info("training plan: %s", plan.reason)
    return family.fit_candidate(spec, prepared, plan, champion)


@step
def refit_candidate(
    spec: ModelSpec, prepared: Prepared, validated: Trained, champion: Champion | None
) -> Trained:
    served = family_of(spec).refit(spec, prepared, validated, champion)
    get_run_logger().info(
        "gate.refit: the validated %s recipe refitted on %s to %s (%d rows) is registered",
        validated.plan.strategy,
        served.window.start,
        served.window.end,
        served.rows,
    )
    return served


@step
def fit_baseline(spec: ModelSpec, prepared: Prepared, choice: BaselinePromotion) -> Trained:
    """The fresh baseline (gate.promote_baseline): fitted on the data up to the as-of."""
    fresh = fresh_baseline(spec, family_of(spec), prepared, choice.reason)
    get_run_logger().info(
        "%s: the %s baseline refitted on %s to %s (%d rows) is registered",
        choice.reason,
        baseline_kind(fresh.model),
        fresh.window.start,
        fresh.window.end,
        fresh.rows,
    )
    return fresh


def backtest_candidate(
    spec: ModelSpec, trained: Trained, prepared: Prepared, champion: Champion | None
) -> Evaluated:
    """The backtest and its gate verdict. A step of the flow itself, not a task run (see
    :func:`step`): pure, and quicker than a task run's orchestration; its verdict is logged
    and published with the registered version."""
    evaluated = family_of(spec).evaluate(spec, trained, prepared.holdout, champion)
    get_run_logger().info("backtest: %s", "; ".join(evaluated.result.reasons))
    return evaluated


@step
def register_candidate(
    spec: ModelSpec,
    registry: ModelRegistry,
    mode: Mode,
    reason: str,
    actor: str,
    as_of: pd.Timestamp | None,
    prepared: Prepared,
    trained: Trained,
    evaluated: Evaluated,
    champion: Champion | None,
    trigger_check: str | None = None,
    validated: Trained | None = None,
    beaten: str | None = None,
) -> str:
    """Log and register the candidate (or, with ``beaten``, the fresh baseline that beat
    candidate version ``beaten``: gate.promote_baseline) as a new version."""
    result = evaluated.result
    baseline = beaten is not None
    workdir = Path(tempfile.mkdtemp(prefix="candidate-", dir=_tmp_root(spec)))
    try:
        model_dir = trained.model.save(workdir / "trainer")
        # the validated fit of a refitted candidate (a baseline keeps none: the fit beside it
        # is the candidate that lost to it, no counterpart of the baseline's)
        validated_dir = (
            validated.model.save(workdir / "validated")
            if validated is not None and not baseline and validated.model is not trained.model
            else None
        )
        family = family_of(spec)
        evidence = (
            write_baseline_evidence(workdir / "evidence", spec, prepared, evaluated)
            if baseline
            else family.write_evidence(workdir / "evidence", spec, prepared, trained, evaluated)
        )
        tags = lineage_tags(
            spec,
            mode,
            reason,
            trained,
            prepared,
            evaluated,
            champion.version if champion else None,
            actor,
        )
        if validated is not None:
            tags.update(refit_tags(validated))
        if evaluated.comparison is not None:  # the champion counterpart the gate judged
            tags.update(evaluated.comparison.tags)
        if baseline:
            tags.update(baseline_tags(trained.model, beaten))
        run_url = flow_run_url(_flow_run_id())
        if run_url:  # the way back from MLflow to the Prefect flow run
            tags[FLOW_RUN_URL_TAG] = run_url
        tags[FLOW_RUN_ID_TAG] = _flow_run_id() or "none"
        if trigger_check:
            report = spec.state.dir / "reports" / f"drift-check-{trigger_check}.png"
            if report.exists():
                evidence["drift_report"] = report.resolve()
            tags[str(Tag.TRIGGER_CHECK)] = trigger_check
        params: dict[str, Any] = {
            **trained.model.non_default_params(),
            "windows.train": spec.windows.train,
            "strategy_reason": trained.plan.reason,
            "windows.holdout": spec.windows.holdout,
            "as_of": str(as_of) if as_of is not None else "latest",
        }
        metrics: dict[str, float] = {
            f"backtest_{result.metric}": result.candidate,
            f"baseline_{result.metric}": result.baseline,
            "train_rows": float(trained.rows),
            "holdout_rows": float(result.rows),
        }
        if result.champion is not None:
            metrics[f"champion_{result.metric}"] = result.champion
            metrics["improvement"] = float(result.improvement or 0.0)
        metrics.update({f"label_{k}": v for k, v in trained.label_stats.items()})
        description = (
            f"{mode} retrain: the {baseline_kind(trained.model)} baseline, in place of "
            f"candidate v{beaten} that lost to it ({reason})"
            if baseline
            else f"{mode} retrain ({trained.plan.strategy}): {reason}"
        )
        record = CandidateRecord(
            model_dir=model_dir,
            description=description,
            params=params,
            metrics=metrics,
            version_tags=tags,
            artifacts=evidence,
            curves={} if baseline else family.curves(trained),
            run_name=run_name(spec.name, mode, _as_of_label(as_of)),
            sample=family.signature_sample(spec, prepared, trained),
            family="baseline" if baseline else spec.family,
            predict_params=family.predict_params(spec),
            inputs=family.serving_inputs(spec),
            validated_dir=validated_dir,
        )
        version = registry.register_candidate(record, actor=actor, flow_run_id=_flow_run_id())
        link = version_link(spec.state.tracking, spec.name, version)
        judged = validated if validated is not None else trained
        publish_backtest(
            spec, judged, evaluated, champion, prepared.holdout.end, version, link, record
        )
        _plot_artifact(spec, evidence.get("backtest_plot"), result.metric, _md_link(version, link))
        return version
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def infra_check(
    spec: ModelSpec, registry: ModelRegistry, version: str, prepared: Prepared
) -> InfraCheck | None:
    """The infra validation of ``gate.infra_validation`` (a task run), or None when it does
    not run (then no task run either)."""
    setting = spec.gate.infra_validation  # only "deployments" needs to know (an API read)
    if not infra_wanted(spec.gate, setting == "deployments" and _in_deployment()):
        return None
    return validate_infra(spec, registry, version, prepared)


def _in_deployment() -> bool:
    """Whether this run is a deployment's (or nested in one): the run's own record first;
    ``prefect.runtime.deployment.id`` reads the flow run from the API again otherwise."""
    context = FlowRunContext.get()
    run = context.flow_run if context is not None else None
    if run is not None and run.deployment_id is not None:
        return True
    return deployment.id is not None


@step
def validate_infra(
    spec: ModelSpec, registry: ModelRegistry, version: str, prepared: Prepared
) -> InfraCheck:
    """Serve the candidate with `mlflow models serve` and check its answers to raw holdout
    rows."""
    params = family_of(spec).predict_params(spec)
    if "probabilities" in params:  # multiclass: compare every probability, not only the class
        params = {**params, "probabilities": True}
    check = validate_version(
        registry,
        version,
        source_rows(spec, prepared.holdout),
        params,
        model_env_cache(),  # machine-wide: 50 models of one requirements build one environment
        spec.gate.infra_timeout_seconds,
    )
    get_run_logger().info("%s", check.reason)
    return check


def _md_link(version: str, link: str) -> str:
    return f"(MLflow: [version {version}]({link}))"


def publish_backtest(
    spec: ModelSpec,
    trained: Trained,
    evaluated: Evaluated,
    champion: Champion | None,
    as_of: pd.Timestamp,
    version: str,
    link: str,
    record: CandidateRecord,
) -> None:
    """The backtest's verdict (its table of candidate, champion and baseline), the data age
    and the link to the MLflow version it judged as one markdown artifact; the per-window and
    ranking tables as table artifacts when there are several windows or segments, each linking
    to the version too.

    One artifact where there were three (a link to the version, the verdict, a table of the
    three models' metric the verdict already showed): each is a call to the Prefect API, and a
    fleet's sweep makes them for every model."""
    result = evaluated.result
    freshness = [
        "",
        "### Data age",
        "",
        f"- candidate: last training row {trained.data_end}, data age "
        f"{format_age(data_age(as_of, trained.data_end))} at the as-of {as_of}",
    ]
    if champion is not None:
        end = data_end(champion.tags)
        freshness.append(
            f"- champion v{champion.version}: last training row {end}, data age "
            f"{format_age(data_age(as_of, end))}"
        )
    create_markdown_artifact(
        key=_artifact_key(spec.name, "backtest"),
        markdown=f"**Registered as [{spec.name} version {version}]({link}) in MLflow** "
        f"({record.description}).\n\n"
        + result.markdown()
        + "\n".join(freshness)
        + f"\n\nRegistered as [{spec.name} version {version}]({link}) in MLflow.",
        description=f"backtest verdict for {spec.name} {_md_link(version, link)}",
    )
    if len(result.windows) > 1:
        create_table_artifact(
            key=_artifact_key(spec.name, "backtest-windows"),
            table=_rounded(result.window_table()),
            description=f"{result.metric} per backtest window; improvement > 0: candidate "
            f"better; {_md_link(version, link)}",
        )
    ranking = getattr(evaluated, "ranking", None)  # the recommendation family's segments
    if ranking is not None:
        create_table_artifact(
            key=_artifact_key(spec.name, "ranking-segments"),
            table=_rounded(ranking.table()),
            description=f"precision/MAP/NDCG@{ranking.k} for all, warm and cold users; "
            f"{_md_link(version, link)}",
        )


def _as_of_label(as_of: pd.Timestamp | None) -> str | None:
    """The as-of in a run name: its date at midnight, else its ISO time (None: latest)."""
    if as_of is None:
        return None
    return str(as_of.date()) if as_of == as_of.normalize() else as_of.isoformat()


def _plot_artifact(spec: ModelSpec, plot: Path | None, metric: str, note: str = "") -> None:
    """The backtest plot (metric per window, both models) on the flow run, inline: the
    approver sees it next to the verdict without access to MLflow's artifact store."""
    if plot is None or not Path(plot).exists():
        return
    encoded = base64.b64encode(Path(plot).read_bytes()).decode("ascii")
    create_image_artifact(
        image_url=f"data:image/png;base64,{encoded}",
        key=_artifact_key(spec.name, "backtest-plot"),
        description=f"{metric} per backtest window: candidate, champion and baseline {note}",
    )


def _tmp_root(spec: ModelSpec) -> Path:
    root = spec.state.dir / "tmp"
    root.mkdir(parents=True, exist_ok=True)
    return root


def wait_for_approval(
    spec: ModelSpec,
    ledger: Ledger,
    run_id: int,
    version: str,
    evaluated: Evaluated,
    evidence: dict[str, Any] | None = None,
) -> Approval:
    """Wait until an operator answers the form in the Prefect UI (or the timeout rejects).

    Short waits, and runs outside a deployment, PAUSE: the process polls for the answer. Waits
    longer than ``gate.suspend_after`` of a deployment's run SUSPEND: the ledger keeps the
    run's claim on the model, the process exits, and the answer resubmits the flow run, which
    finds its suspended ledger run and goes straight to :func:`resume_after_answer`.
    """
    link = version_link(spec.state.tracking, spec.name, version)
    description = (
        f"# Promote {spec.name} version {version} to champion?\n\n"
        f"The candidate in MLflow: [{spec.name} version {version}]({link}); its model card is "
        "among this run's artifacts.\n\n"
        + evaluated.result.markdown()
        + "\n\nChoose **approve** or **reject**, give your name and a comment, then Submit."
    )
    timeout = spec.gate.approval_timeout_seconds
    how = approval_wait(timeout, spec.gate.suspend_after_seconds, deployment.id is not None)
    events.approval_requested(
        spec.name, version, flow_run_url(_flow_run_id()), evidence or {"version_url": link}
    )
    if how == "suspend":
        get_run_logger().info(
            "suspending until an operator answers (at most %s); nothing runs meanwhile",
            spec.gate.approval_timeout,
        )
        ledger.suspend_run(spec.name, run_id)
        return _suspended_answer(spec, version, description)
    form = ApprovalInput.with_initial_data(description=description, decision="reject")
    logger.warning(
        "%s v%s waits for an operator (at most %s): answer in the Prefect UI%s, or with "
        "`retrain approve %s %s` / `retrain reject %s %s`",
        spec.name,
        version,
        spec.gate.approval_timeout,
        f" ({_run_page()})" if _run_page() else "",
        spec.name,
        version,
        spec.name,
        version,
    )
    try:
        answer = pause_flow_run(
            wait_for_input=form,
            timeout=timeout,
            poll_interval=max(1, min(10, timeout // 4)),
            key=_artifact_key("approve", spec.name, version),
        )
    except FlowPauseTimeout:
        return timed_out(spec.gate.approval_timeout)
    return _approval(answer, spec)


def _run_page() -> str | None:
    """This flow run's page in the Prefect UI, when the server has one."""
    from prefect.settings import get_current_settings

    ui = get_current_settings().ui_url
    run = _flow_run_id()
    return f"{ui}/runs/flow-run/{run}" if ui and run else None


def _suspended_answer(spec: ModelSpec, version: str, description: str) -> Approval:
    """Suspend (raises Prefect's Pause signal: the process exits); once the run was resumed
    with an answer, the same call (same key) returns that answer instead of suspending."""
    form = ApprovalInput.with_initial_data(description=description, decision="reject")
    answer = suspend_flow_run(
        wait_for_input=form,
        timeout=spec.gate.approval_timeout_seconds,
        key=_artifact_key("approve", spec.name, version),
    )
    if answer is None:
        raise ApprovalError(f"flow run resumed without an answer for {spec.name} version {version}")
    return _approval(answer, spec)


def _approval(answer: ApprovalInput, spec: ModelSpec) -> Approval:
    approver = answer.approver.strip() or "unknown operator"
    if answer.decision == "approve" and not spec.gate.approver_allowed(approver):
        # the Prefect form accepts any name: an approval only counts from gate.approvers
        return Approval(False, approver, f"{approver!r} is not in gate.approvers: not counted")
    return Approval(answer.decision == "approve", approver, answer.comment)


def expire_unanswered(spec: ModelSpec, ledger: Ledger, registry: ModelRegistry) -> int:
    """Suspended runs nobody answered within ``gate.approval_timeout`` are rejections: tag the
    version, finish the ledger run, release the model. Returns how many expired. A step of
    the flow itself, not a task run: almost always one ledger query that finds nothing."""
    expired = ledger.expired_suspensions(spec.name, pd.Timedelta(spec.gate.approval_timeout))
    for run in expired:
        decision = _decision_of(run, timed_out(spec.gate.approval_timeout))
        registry.record_decision(decision)
        ledger.finish_run(
            run.id, "rejected", promoted=False, actor="timeout", error=decision.reason
        )
        ledger.release_model(spec.name, run.id)
        events.refused(
            spec.name, decision.version, decision.reason, {"run_id": run.id, **run.metrics}
        )
        get_run_logger().warning(
            "ledger run %s (version %s) was never answered: %s",
            run.id,
            run.model_version,
            decision.reason,
        )
    return len(expired)


def _decision_of(run: RunRecord, approval: Approval) -> PromotionDecision:
    if run.model_version is None:
        raise ApprovalError(f"suspended ledger run {run.id} has no model version; cannot decide")
    decision = decide(
        version=run.model_version,
        gate_passed=bool(run.metrics.get("passed")),
        gate_reasons=tuple(run.metrics.get("reasons", ())),
        approval=approval,
    )
    return offered_baseline(decision, run.metrics.get(BASELINE_WHY))


def _failures_in_a_row(ledger: Ledger, model: str) -> int:
    """The streak of failed runs that this failure extends (at least 1: this run failed); an
    unreachable ledger counts this failure alone rather than hide the first error."""
    try:
        return max(1, ledger.failures_in_a_row(model))
    except Exception as exc:  # the error being reported matters more than the count
        logger.warning("could not count %s's failed runs in a row: %s", model, exc)
        return 1


@contextlib.contextmanager
def holding_claim(
    ledger: Ledger, model: str, run_id: int, on_pause: Callable[[], None] | None = None
) -> Iterator[None]:
    """The body of a ledger run that holds the model's claim.

    An error finishes the run as failed (with the error) and releases the claim; a Pause
    (the run suspended for its operator) keeps the run and its claim in the ledger, after
    ``on_pause``; a body that ends in any other way releases the claim.
    """
    suspended = False
    try:
        yield
    except Pause:
        suspended = True
        if on_pause is not None:
            on_pause()
        raise
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        ledger.finish_run(run_id, "failed", promoted=False, error=error)
        events.failed(
            model,
            error,
            _failures_in_a_row(ledger, model),
            {"run_id": run_id, "flow_run_url": flow_run_url(_flow_run_id()) or ""},
        )
        raise
    finally:
        if not suspended:
            ledger.release_model(model, run_id)


def _finish(ledger: Ledger, run_id: int, decision: PromotionDecision, actor: str) -> None:
    ledger.finish_run(
        run_id,
        "promoted" if decision.promote else "rejected",
        promoted=decision.promote,
        actor=decision.approver or actor,
        error=None if decision.promote else decision.reason,
    )


def resume_after_answer(
    spec: ModelSpec, ledger: Ledger, registry: ModelRegistry, run: RunRecord, actor: str
) -> dict[str, Any]:
    """The second half of a suspended run: read the operator's answer, decide, promote."""
    version = run.model_version
    if version is None:
        raise ApprovalError(f"suspended ledger run {run.id} has no model version; cannot decide")
    ledger.resume_run(spec.name, run.id)
    get_run_logger().info("resumed ledger run %s: reading the operator's answer", run.id)
    # suspended once more (Prefect did not find the answer): the run keeps its claim
    with holding_claim(ledger, spec.name, run.id, lambda: ledger.suspend_run(spec.name, run.id)):
        approval = _suspended_answer(spec, version, "")
        decision = _decision_of(run, approval)
        previous = apply_decision(registry, decision, actor)
        _finish(ledger, run.id, decision, actor)
        publish_decision(spec, registry, decision, "answered after the run was suspended")
    announce(spec, decision, previous, {"run_id": run.id, **run.metrics})
    return {
        "status": "promoted" if decision.promote else "rejected",
        "model": spec.name,
        "mode": run.mode,
        "run_id": run.id,
        "version": version,
        "data_version": run.data_version,
        "gate_passed": decision.gate_passed,
        "promoted": decision.promote,
        "decision": decision.reason,
        "previous_champion": previous if decision.promote else None,
        "resumed": True,
    }


@step
def apply_decision(registry: ModelRegistry, decision: PromotionDecision, actor: str) -> str | None:
    """Tag the version with the decision; move ``champion`` only when it says promote."""
    registry.record_decision(decision)
    if not decision.promote:
        get_run_logger().info("version %s not promoted: %s", decision.version, decision.reason)
        return registry.alias_version("champion")
    return registry.promote(decision, actor=decision.approver or actor, flow_run_id=_flow_run_id())


def announce(
    spec: ModelSpec, decision: PromotionDecision, previous: str | None, evidence: dict[str, Any]
) -> None:
    """The decision as an event: promoted, or refused with the reason."""
    if decision.promote:
        approver = decision.approver or "automatic"
        events.promoted(spec.name, decision.version, previous, approver, evidence)
    else:
        events.refused(spec.name, decision.version, decision.reason, evidence)


def _links(spec: ModelSpec, version: str) -> dict[str, str]:
    """Where a person finds the version (MLflow) and this run (Prefect)."""
    links = {"version_url": version_link(spec.state.tracking, spec.name, version)}
    run_url = flow_run_url(_flow_run_id())
    if run_url:
        links["flow_run_url"] = run_url
    return links


def publish_card(spec: ModelSpec, registry: ModelRegistry, facts: CardFacts) -> str:
    """The model card: ``model_card.md`` on the version's MLflow run and a Prefect artifact
    (on the flow run). A step of the flow itself, not a task run: rendering is pure and the
    two writes are quick, and a task run costs a fleet's Prefect server three events and a
    log line a model."""
    markdown = render_card(facts)
    log_card(registry, facts.version, markdown)
    _card_artifact(spec, facts.version, markdown)
    return markdown


def _card_artifact(spec: ModelSpec, version: str, markdown: str) -> None:
    create_markdown_artifact(
        key=_artifact_key(spec.name, "model-card"),
        markdown=markdown,
        description=f"model card of {spec.name} version {version} "
        f"{_md_link(version, version_link(spec.state.tracking, spec.name, version))}",
    )


def decided_at() -> str:
    """When a decision is made, for its card (UTC, to the second)."""
    return f"{now().replace(microsecond=0).isoformat(sep=' ')} UTC"


@step
def publish_decision(
    spec: ModelSpec, registry: ModelRegistry, decision: PromotionDecision, how: str
) -> str:
    """Rewrite the decision section of the version's card (read back from MLflow) after a
    decision made once the run that rendered it was gone: a resumed suspended run, a live
    test's verdict. The card is logged again and published as a Prefect artifact."""
    markdown = with_decision(
        read_card(registry, decision.version),
        spec.name,
        decision.version,
        decision,
        decided_at(),
        how,
    )
    log_card(registry, decision.version, markdown)
    _card_artifact(spec, decision.version, markdown)
    return markdown


def _skipped(ledger: Ledger, spec: ModelSpec, mode: Mode, run_id: int, why: str) -> dict[str, Any]:
    """Record a run that had nothing to do (or was not allowed to run) and say why."""
    get_run_logger().info("retrain of %s skipped: %s", spec.name, why)
    ledger.finish_run(run_id, "skipped", promoted=False, error=why)
    return {
        "status": "skipped",
        "model": spec.name,
        "mode": mode,
        "run_id": run_id,
        "decision": why,
    }


def _awaiting_live(
    ledger: Ledger,
    spec: ModelSpec,
    mode: Mode,
    run_id: int,
    version: str,
    why: str,
    **extra: Any,
) -> dict[str, Any]:
    """Record a run whose version passed the backtest gate and waits for the live test (the
    online evaluation, flows/live_flow.py, decides), and say so."""
    ledger.finish_run(run_id, "live", promoted=False, error=why)
    return {
        "status": "live",
        "model": spec.name,
        "mode": mode,
        "run_id": run_id,
        "version": version,
        **extra,
        "gate_passed": True,
        "promoted": False,
        "decision": why,
    }


@dataclass(frozen=True)
class _Run:
    """What every step of one retrain run shares."""

    spec: ModelSpec
    ledger: Ledger
    registry: ModelRegistry
    mode: Mode
    reason: str
    actor: str
    cutoff: pd.Timestamp | None
    trigger_check: str | None
    run_id: int


@dataclass(frozen=True)
class _Offered:
    """A version registered, gated, carded and decided (its decision applied)."""

    version: str
    evaluated: Evaluated
    evidence: dict[str, Any]
    facts: CardFacts
    decision: PromotionDecision
    previous: str | None


def _offer(
    run: _Run,
    prepared: Prepared,
    champion: Champion | None,
    trained: Trained,
    evaluated: Evaluated,
    validated: Trained | None,
    auto_approve: bool,
    *,
    beaten: str | None = None,
    why: str | None = None,
) -> _Offered | dict[str, Any]:
    """One version through register -> infra gate -> card -> (live test | approval) ->
    decision: the candidate, or (``beaten``: the candidate version it replaces, ``why``: the
    baseline promotion's reason) the fresh baseline. Returns the run's outcome instead when
    the version waits for its live test."""
    spec, ledger, registry = run.spec, run.ledger, run.registry
    version = register_candidate(
        spec,
        registry,
        run.mode,
        run.reason,
        run.actor,
        run.cutoff,
        prepared,
        trained,
        evaluated,
        champion,
        run.trigger_check or None,
        validated=validated,
        beaten=beaten,
    )
    # the served version answers raw rows over HTTP as in process, or the gate fails
    result = gate_with_infra(evaluated.result, infra_check(spec, registry, version, prepared))
    if why is not None:
        result = replace(result, reasons=(why, *result.reasons))
    if result is not evaluated.result:
        evaluated = replace(evaluated, result=result)
    replaced = {} if beaten is None else {"refused_candidate": beaten}
    # a suspended run's decision, taken when it resumes, is worded from these (_decision_of)
    offered = {} if why is None else {BASELINE_WHY: why}
    ledger.update_run(
        run.run_id,
        model_version=version,
        data_version=trained.window.version,
        train_start=trained.window.start,
        train_end=trained.window.end,
        rows=trained.rows,
        metrics={**result.to_dict(), **replaced, **offered},
    )
    links = _links(spec, version)
    evidence = {**events.evidence(version, trained, evaluated, run.run_id, links), **replaced}
    facts = card_facts(
        spec,
        run.mode,
        run.reason,
        run.actor,
        version,
        prepared,
        trained,
        evaluated,
        champion,
        refit=validated is not None,
        links=links,
    )
    if result.passed and spec.live.required != "none":
        # backtest gate -> challenger -> live test -> champion: the online evaluation
        # (flows/live_flow.py) decides, with the same invariant, approval and audit
        publish_card(spec, registry, facts)  # decision pending until the live test ends
        waiting = f"{why or 'backtest gate passed'}; awaiting the live {spec.live.required} test"
        return _awaiting_live(ledger, spec, run.mode, run.run_id, version, waiting, **replaced)
    approval: Approval | None
    if needs_operator(result.passed, spec.gate.require_approval, auto_approve):
        publish_card(spec, registry, facts)  # what the operator reads, decision pending
        approval = wait_for_approval(spec, ledger, run.run_id, version, evaluated, evidence)
    else:
        approval = automatic_approval(run.actor) if result.passed else None
    decision = decide(
        version=version,
        gate_passed=result.passed,
        gate_reasons=result.reasons,
        approval=approval,
    )
    decision = offered_baseline(decision, why)
    previous = apply_decision(registry, decision, run.actor)
    return _Offered(version, evaluated, evidence, facts, decision, previous)


def _decided(run: _Run, offered: _Offered, *, finish: bool) -> None:
    """Close the run in the ledger (``finish``: no other version follows) and rewrite the
    version's card with its decision."""
    decision = offered.decision
    if finish:
        _finish(run.ledger, run.run_id, decision, run.actor)
    publish_card(
        run.spec,
        run.registry,
        replace(
            offered.facts,
            decision=decision_line(decision),
            approver=decision.approver,
            decided_at=decided_at(),
        ),
    )


def make_registry(spec: ModelSpec, ledger: Ledger) -> ModelRegistry:
    return ModelRegistry.for_spec(spec.state, spec.name, ledger)


@flow(name="retrain", log_prints=False, flow_run_name=retrain_run_name)
def retrain_flow(
    spec_path: str,
    mode: Mode = "manual",
    reason: str = "operator request",
    as_of: str | None = None,
    auto_approve: bool = False,
    actor: str = "operator",
    overrides: dict[str, Any] | None = None,
    trigger_check: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Retrain one model and promote the candidate if it earns it.

    ``mode`` is manual or scheduled (from scratch on the sliding window), stateful or continual
    (warm start / refit from the champion on the partitions since its training end, from
    scratch every ``stateful.scratch_every`` increments). ``trigger_check`` is the ledger id of
    the monitor check that requested a continual retrain: its drift report is logged with the
    new version. A run whose data and spec are the champion's is skipped unless ``force``.
    """
    spec = resolve_spec(spec_path, overrides)
    cutoff = parse_as_of(as_of)
    # its connections closed when the run ends; each cached partition read once per run (the
    # fit, the gate and the refit share the frames)
    with Ledger(spec.state.ledger) as ledger, in_memory():
        return _retrain(
            spec, ledger, mode, reason, cutoff, auto_approve, actor, trigger_check, force
        )


def _retrain(
    spec: ModelSpec,
    ledger: Ledger,
    mode: Mode,
    reason: str,
    cutoff: pd.Timestamp | None,
    auto_approve: bool,
    actor: str,
    trigger_check: str | None,
    force: bool = False,
) -> dict[str, Any]:
    ledger.migrate()
    registry = make_registry(spec, ledger)
    recover_alias_changes(registry)
    tag_flow_run(f"model:{spec.name}", f"mode:{mode}", f"family:{spec.family}")
    earlier = ledger.run_of_flow_run(_flow_run_id() or "")
    if earlier is not None and earlier.status == "suspended":
        return resume_after_answer(spec, ledger, registry, earlier, actor)
    expire_unanswered(spec, ledger, registry)
    run_id = ledger.start_run(spec.name, mode, reason, actor=actor, flow_run_id=_flow_run_id())
    # suspended for its operator: the run and its claim wait in the ledger; an interrupt from
    # here on (Ctrl-C, SIGTERM) finishes the run as failed
    with holding_claim(ledger, spec.name, run_id):
        # one retrain per model: a run still waiting for approval keeps its claim until it ends
        holder = ledger.claim_model(
            spec.name, run_id, stale_after=pd.Timedelta(spec.gate.approval_timeout) + CLAIM_MARGIN
        )
        if holder is not None:
            note = f"another retrain of {spec.name} is running (ledger run {holder})"
            return _skipped(ledger, spec, mode, run_id, note)
        prepared = prepare_data(spec, cutoff, ledger)
        champion = load_champion(registry)
        prepared = align_to_champion(prepared, mode, champion, spec.gate.refit)
        skip = skip_reason(
            mode,
            champion.state() if champion else None,
            champion.data_versions[-1] if champion and champion.data_versions else None,
            prepared.train.version,
            prepared.holdout.start,
            len(prepared.holdout.partitions),
            refit=spec.gate.refit,
        ) or unchanged_reason(
            champion.version if champion else None,
            champion.tags if champion else {},
            prepared.train.version,
            prepared.spec_hash,
            spec.config_hash(),
            force,
        )
        if skip is not None:
            return _skipped(ledger, spec, mode, run_id, skip)
        trained = train_candidate(spec, mode, prepared, champion)
        ledger.update_run(
            run_id,
            data_version=trained.window.version,
            train_start=trained.window.start,
            train_end=trained.window.end,
            rows=trained.rows,
        )
        evaluated = backtest_candidate(spec, trained, prepared, champion)
        validated = trained
        if evaluated.result.passed and spec.gate.refit:
            # learn up to now: the validated recipe, fitted again through the holdout
            trained = refit_candidate(spec, prepared, validated, champion)
            ledger.update_run(
                run_id,
                data_version=trained.window.version,
                train_start=trained.window.start,
                train_end=trained.window.end,
                rows=trained.rows,
            )
        run = _Run(spec, ledger, registry, mode, reason, actor, cutoff, trigger_check, run_id)
        offered = _offer(
            run,
            prepared,
            champion,
            trained,
            evaluated,
            validated if validated is not trained else None,
            auto_approve,
        )
        if isinstance(offered, dict):
            return offered
        # the baseline is a model: the same decision as the simulator's (retrain.promotion)
        choice = baseline_promotion(
            spec.gate.promote_baseline,
            offered.evaluated.result,
            evaluated.baseline_result,
            evaluated.baseline_refresh,
        )
        if not choice.promote and spec.gate.promote_baseline and not offered.decision.gate_passed:
            get_run_logger().info("baseline not promoted: %s", choice.reason)
        refused = offered.version
        if choice.promote:
            _decided(run, offered, finish=False)
            announce(spec, offered.decision, offered.previous, offered.evidence)  # the refusal
            served = fit_baseline(spec, prepared, choice)
            offered = _offer(
                run,
                prepared,
                champion,
                served,
                baseline_evaluated(evaluated),
                validated if spec.gate.refit else None,
                auto_approve,
                beaten=refused,
                why=choice.reason,
            )
            if isinstance(offered, dict):
                return offered
            trained = served
        _decided(run, offered, finish=True)
        version, decision, previous = offered.version, offered.decision, offered.previous
        evidence, result = offered.evidence, offered.evaluated.result
    announce(spec, decision, previous, evidence)
    outcome = RetrainOutcome(
        model=spec.name,
        mode=mode,
        run_id=run_id,
        version=version,
        data_version=trained.window.version,
        strategy=trained.plan.strategy,
        metric=result.metric,
        candidate=result.candidate,
        champion=result.champion,
        baseline=result.baseline,
        gate_passed=result.passed,
        promoted=decision.promote,
        decision=decision.reason,
        previous_champion=previous if decision.promote else None,
        features_computed=len(prepared.cache.computed),
        features_cached=len(prepared.cache.hits),
        refused_candidate=refused if refused != version else None,
    )
    return outcome.to_dict()
