"""The model card of a registered version: markdown for people, rendered from facts.

A pure function of a frozen :class:`CardFacts`; the flow logs the result as the version run's
``model_card.md`` in MLflow and publishes it as a Prefect markdown artifact.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from retrain.backtest import BacktestResult
from retrain.config import ModelSpec
from retrain.families.spine import Champion, Evaluated, Prepared, Trained
from retrain.freshness import data_age, format_age
from retrain.promotion import PromotionDecision

# what every card says a backtest cannot tell (the rest depends on the run)
STANDING_LIMITS = (
    "The verdict is a backtest on past rows the model never trained on; live traffic can differ "
    "(shadow, canary or A/B tests judge that: docs/live.md).",
)


@dataclass(frozen=True)
class CardFacts:
    model: str
    version: str
    family: str
    mode: str
    strategy: str
    reason: str
    actor: str
    window_start: str
    window_end: str
    rows: int
    data_end: str
    data_age: str
    as_of: str
    result: BacktestResult
    parent_version: str | None = None
    champion_version: str | None = None
    data_version: str = ""
    # the decision: "pending" until known, then "approved by X" / "rejected by X: why" / ...
    decision: str = "pending"
    approver: str | None = None
    decided_at: str | None = None  # when the decision was made (UTC)
    links: tuple[tuple[str, str], ...] = ()  # (label, url)
    limits: tuple[str, ...] = field(default=())
    refit: bool = False  # the served fit is the validated recipe refitted through the holdout
    # a multiclass model: its classes (as the data writes them) and their training shares
    classes: tuple[tuple[str, float | None], ...] = ()


def run_limits(facts: CardFacts) -> tuple[str, ...]:
    """What this run's evidence cannot say."""
    r = facts.result
    found = []
    if r.champion is None:
        found.append("No champion to compare with: judged against the baseline only.")
    if facts.refit:
        found.append(
            "The served fit was refitted through the holdout (gate.refit): the metrics above are "
            "of the validated recipe, not of this exact fit, which no held-out row has judged."
        )
    if not r.passed:
        found.append("Refused by the gate: not fit to serve.")
    return tuple(found)


def _class_lines(classes: tuple[tuple[str, float | None], ...]) -> list[str]:
    """A multiclass model's classes with their shares of the training rows."""
    if not classes:
        return []
    shares = ", ".join(
        name if share is None else f"{name} ({share:.1%})" for name, share in classes
    )
    return [f"- multiclass, answers one of {len(classes)} classes (training share): {shares}"]


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def render_card(facts: CardFacts) -> str:
    """The card's markdown: what it is, data, metrics vs champion and baseline, slices,
    lineage, decision and who made it, known limits, links."""
    r = facts.result
    better = "higher" if r.greater_is_better else "lower"
    lines = [
        f"# Model card: {facts.model} version {facts.version}",
        "",
        "## What it is",
        "",
        f"- family: **{facts.family}**, trained by a **{facts.mode}** retrain "
        f"({facts.strategy}): {facts.reason}",
        f"- started by: {facts.actor}",
        *_class_lines(facts.classes),
        "",
        "## Data",
        "",
        f"- training window: {facts.window_start} .. {facts.window_end} ({facts.rows} rows)",
        f"- data version: `{facts.data_version or '-'}`",
        f"- last training row: {facts.data_end}; data age {facts.data_age} at the as-of "
        f"{facts.as_of}",
        f"- holdout: {r.holdout_start} .. {r.holdout_end} ({r.rows} rows)",
        "",
        f"## Metrics ({r.metric}, {better} is better, same holdout rows)",
        "",
        "| model | version | " + r.metric + " |",
        "|---|---|---|",
        f"| candidate | {facts.version} | {_num(r.candidate)} |",
    ]
    if r.champion is not None:
        lines.append(f"| champion | {r.champion_version or '-'} | {_num(r.champion)} |")
    lines.append(f"| baseline | - | {_num(r.baseline)} |")
    lines.append("")
    if r.improvement is not None:
        ci = (
            f" (95% CI {_num(r.ci_low)} .. {_num(r.ci_high)})"
            if r.ci_low is not None and r.ci_high is not None
            else ""
        )
        lines += [f"Improvement over the champion: {_num(r.improvement)}{ci}.", ""]
    lines += [f"Gate: **{'passed' if r.passed else 'refused'}**", ""]
    lines += [f"- {reason}" for reason in r.reasons]
    lines.append("")
    if r.slices:
        lines += ["## Slices", "", "| feature | value | rows | candidate | champion | change |"]
        lines.append("|---|---|---|---|---|---|")
        lines += [
            f"| {s.feature} | {s.value} | {s.rows} | {_num(s.candidate)} | {_num(s.champion)} "
            f"| {s.degradation:+.2%} |"
            for s in r.slices
        ]
        lines.append("")
    else:
        lines += ["## Slices", "", "No per-slice scores for this run (none configured).", ""]
    lines += [
        "## Lineage",
        "",
        f"- parent version (weights inherited from): {facts.parent_version or 'none (scratch)'}",
        f"- champion when trained: {facts.champion_version or 'none'}",
        "",
        *decision_section(facts.decision, facts.approver, facts.decided_at),
        "## Known limits",
        "",
    ]
    lines += [f"- {limit}" for limit in (*facts.limits, *run_limits(facts), *STANDING_LIMITS)]
    if facts.links:
        lines += ["", "## Links", ""]
        lines += [f"- [{label}]({url})" for label, url in facts.links]
    return "\n".join(lines) + "\n"


DECISION_HEADING = "## Decision"


def decision_section(decision: str, approver: str | None, decided_at: str | None) -> list[str]:
    """The card's decision section (its heading to the blank line before the next one)."""
    lines = [DECISION_HEADING, "", f"- {decision}"]
    if approver:
        lines.append(f"- approved or rejected by: {approver}")
    if decided_at:
        lines.append(f"- decided at: {decided_at}")
    return [*lines, ""]


def with_decision(
    markdown: str,
    model: str,
    version: str,
    decision: PromotionDecision,
    decided_at: str,
    how: str = "",
) -> str:
    r"""The card ``markdown`` with its decision section rewritten (the rest kept as written):
    for a decision made after the run that rendered the card ended (a suspended run resumed by
    its operator, a live test's verdict). ``how``: how it was decided, e.g. ``after the live
    canary test``. A version without a card gets one holding its decision only.

    >>> card = "# Model card: m version 3\n\n## Decision\n\n- pending\n\n## Known limits\n"
    >>> from retrain.promotion import PromotionDecision
    >>> d = PromotionDecision("3", True, True, True, "ana", None, False, "approved by ana")
    >>> print(with_decision(card, "m", "3", d, "2026-01-02 03:04:05+00:00"))
    # Model card: m version 3
    <BLANKLINE>
    ## Decision
    <BLANKLINE>
    - promoted to champion: approved by ana
    - approved or rejected by: ana
    - decided at: 2026-01-02 03:04:05+00:00
    <BLANKLINE>
    ## Known limits
    <BLANKLINE>
    """
    line = decision_line(decision) + (f" ({how})" if how else "")
    section = decision_section(line, decision.approver, decided_at)
    lines = markdown.splitlines()
    if DECISION_HEADING not in lines:
        head = lines or [f"# Model card: {model} version {version}", ""]
        if head[-1]:
            head = [*head, ""]
        return "\n".join([*head, *section]) + "\n"
    start = lines.index(DECISION_HEADING)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join([*lines[:start], *section, *lines[end:]]) + "\n"


def decision_line(decision: PromotionDecision) -> str:
    """The decision line of a card."""
    if decision.promote:
        return f"promoted to champion: {decision.reason}"
    return f"not promoted: {decision.reason}"


LINK_LABELS = {"version_url": "MLflow version", "flow_run_url": "Prefect flow run"}


def card_facts(
    spec: ModelSpec,
    mode: str,
    reason: str,
    actor: str,
    version: str,
    prepared: Prepared,
    trained: Trained,
    evaluated: Evaluated,
    champion: Champion | None,
    refit: bool,
    links: Mapping[str, str],
) -> CardFacts:
    """The facts of a freshly registered version (its decision still pending)."""
    as_of = prepared.holdout.end
    return CardFacts(
        model=spec.name,
        version=version,
        family=spec.family,
        mode=mode,
        strategy=trained.plan.strategy,
        reason=reason,
        actor=actor,
        window_start=str(trained.window.start),
        window_end=str(trained.window.end),
        rows=trained.rows,
        data_end=str(trained.data_end) if trained.data_end is not None else "unknown",
        data_age=format_age(data_age(as_of, trained.data_end)),
        as_of=str(as_of),
        result=evaluated.result,
        parent_version=trained.plan.parent_version,
        champion_version=champion.version if champion else None,
        data_version=trained.window.version,
        links=tuple((LINK_LABELS.get(k, k), url) for k, url in links.items()),
        refit=refit,
        classes=tuple(
            (name, trained.label_stats.get(f"share_{name}")) for name in spec.class_labels
        ),
    )
