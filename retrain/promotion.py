"""Promotion policy: whether a candidate becomes the champion. Pure functions, frozen decisions.

>>> approval = Approval(approved=True, approver="ana", comment="looks good")
>>> decide(version="3", gate_passed=True, gate_reasons=("beats champion",), approval=approval)
PromotionDecision(version='3', promote=True, gate_passed=True, approved=True, approver='ana', \
comment='looks good', automatic=False, reason='gate passed; approved by ana: looks good')
>>> decide(version="4", gate_passed=False, gate_reasons=("worse than champion",), approval=None)
PromotionDecision(version='4', promote=False, gate_passed=False, approved=False, approver=None, \
comment=None, automatic=False, reason='gate failed: worse than champion')
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from retrain.backtest import BacktestResult


@dataclass(frozen=True)
class Approval:
    """An operator's (or the automation's) answer to "promote this version?"."""

    approved: bool
    approver: str
    comment: str = ""
    automatic: bool = False


@dataclass(frozen=True)
class PromotionDecision:
    version: str
    promote: bool
    gate_passed: bool
    approved: bool
    approver: str | None
    comment: str | None
    automatic: bool
    reason: str


def offered_baseline(decision: PromotionDecision, why: str | None) -> PromotionDecision:
    """The decision on a fresh baseline (``why``: :func:`baseline_promotion`'s reason) says
    first why the baseline was offered, then its own decision; any other decision as it is.
    The same text whether the decision is taken in the run or after a suspended run resumed.

    >>> d = PromotionDecision("3", True, True, True, "ann", None, False, "approved by ann")
    >>> offered_baseline(d, "candidate lost to the baseline; baseline promoted").reason
    'candidate lost to the baseline; baseline promoted: approved by ann'
    >>> offered_baseline(d, None).reason
    'approved by ann'
    """
    return decision if why is None else replace(decision, reason=f"{why}: {decision.reason}")


def needs_operator(gate_passed: bool, require_approval: bool, auto_approve: bool) -> bool:
    """An operator is asked only for a candidate that passed the gate and when config wants one.

    >>> needs_operator(True, True, False), needs_operator(False, True, False)
    (True, False)
    >>> needs_operator(True, True, True), needs_operator(True, False, False)
    (False, False)
    """
    return gate_passed and require_approval and not auto_approve


def automatic_approval(actor: str) -> Approval:
    return Approval(approved=True, approver=actor, comment="auto-approved", automatic=True)


def decide(
    *,
    version: str,
    gate_passed: bool,
    gate_reasons: tuple[str, ...],
    approval: Approval | None,
) -> PromotionDecision:
    """Promote only when the gate passed AND the promotion was approved."""
    if not gate_passed:
        return PromotionDecision(
            version=version,
            promote=False,
            gate_passed=False,
            approved=False,
            approver=None,
            comment=None,
            automatic=False,
            reason="gate failed: " + "; ".join(r for r in gate_reasons),
        )
    if approval is None:
        return PromotionDecision(
            version=version,
            promote=False,
            gate_passed=True,
            approved=False,
            approver=None,
            comment=None,
            automatic=False,
            reason="gate passed but nobody approved the promotion",
        )
    who = "automatically" if approval.automatic else f"by {approval.approver}"
    verb = "approved" if approval.approved else "rejected"
    note = f": {approval.comment}" if approval.comment and not approval.automatic else ""
    return PromotionDecision(
        version=version,
        promote=approval.approved,
        gate_passed=True,
        approved=approval.approved,
        approver=approval.approver,
        comment=approval.comment,
        automatic=approval.automatic,
        reason=f"gate passed; {verb} {who}{note}",
    )


def approval_wait(
    timeout_seconds: int, suspend_after_seconds: int, in_deployment: bool
) -> Literal["pause", "suspend"]:
    """How a run waits for its operator: long waits of deployment runs suspend, others pause.

    A suspended run's process exits and the run is resubmitted when the operator answers, so
    a 24 h wait holds no worker; only a run that belongs to a deployment can be resubmitted.

    >>> approval_wait(86400, 3600, True), approval_wait(86400, 3600, False)
    ('suspend', 'pause')
    >>> approval_wait(600, 3600, True)
    'pause'
    """
    return "suspend" if in_deployment and timeout_seconds > suspend_after_seconds else "pause"


def timed_out(approval_timeout: str) -> Approval:
    """The answer of nobody: a wait that outlived ``gate.approval_timeout`` is a rejection."""
    return Approval(
        approved=False,
        approver="timeout",
        comment=f"no answer within {approval_timeout}: rejected",
    )


@dataclass(frozen=True)
class BaselinePromotion:
    """Whether the family's trivial baseline is registered and promoted in place of a refused
    candidate (``gate.promote_baseline``). The flow and the simulator both ask
    :func:`baseline_promotion`; a promoted baseline still goes through approval, the
    registry's invariant and the audit like any candidate."""

    promote: bool
    reason: str


def lost_to_baseline(result: BacktestResult) -> bool:
    """The candidate did not beat the trivial baseline on the holdout (or its metric is
    undefined there)."""
    cand, base = result.candidate, result.baseline
    if cand != cand:  # NaN
        return True
    return not (cand > base if result.greater_is_better else cand < base)


def baseline_asked(candidate: BacktestResult, refresh: bool = False) -> bool:
    """Whether a refused candidate gives the fresh baseline its chance (the families then
    judge it, :func:`baseline_promotion` decides): it lost to the baseline, the champion is a
    baseline itself (``refresh``), or there is no champion (nothing serves)."""
    return not candidate.passed and (
        lost_to_baseline(candidate) or refresh or candidate.champion is None
    )


def baseline_promotion(
    enabled: bool,
    candidate: BacktestResult,
    baseline: BacktestResult | None,
    refresh: bool = False,
) -> BaselinePromotion:
    """Promote the baseline when the candidate lost to it and the baseline itself passed the
    gate (``baseline``: the backtest with the baseline as the candidate, against the champion
    on the same rows, the refused candidate as the bar to beat). With no champion, any refused
    candidate gives way to the baseline (whose verdict then passes when its metric is defined):
    production serves the fresh baseline rather than nothing. Never when the flag is off or the
    candidate passed.

    >>> from retrain.backtest import GateSettings, backtest
    >>> import numpy as np, pandas as pd
    >>> t = pd.Timestamp("2011-01-01")
    >>> gate = GateSettings(metric="mae", task="regression", bootstrap_samples=10)
    >>> lost = backtest(gate, y_holdout=np.array([1.0, 2.0]),
    ...     candidate_pred=np.array([9.0, 9.0]), y_train=np.array([1.0, 2.0]),
    ...     holdout_start=t, holdout_end=t)
    >>> won = backtest(gate, y_holdout=np.array([1.0, 2.0]),
    ...     candidate_pred=np.array([1.5, 1.5]), baseline_pred=np.array([9.0, 9.0]),
    ...     y_train=np.array([1.0, 2.0]), holdout_start=t, holdout_end=t)
    >>> baseline_promotion(True, lost, won).promote, baseline_promotion(False, lost, won).promote
    (True, False)
    """
    if not enabled:
        return BaselinePromotion(False, "gate.promote_baseline is off")
    if candidate.passed:
        return BaselinePromotion(False, "the candidate passed the gate")
    vacant = candidate.champion is None  # nothing serves: the baseline rather than nothing
    if not baseline_asked(candidate, refresh):
        return BaselinePromotion(
            False, "the candidate beat the baseline but was refused: the champion stays"
        )
    if baseline is None:
        return BaselinePromotion(False, "the baseline was not judged: the champion stays")
    versus = (
        f"the baseline passes the gate against champion v{baseline.champion_version} "
        f"({baseline.candidate:.4f} vs {baseline.champion:.4f})"
        if baseline.champion is not None
        else "there is no champion"
    )
    if not baseline.passed:
        return BaselinePromotion(
            False,
            "candidate lost to the baseline, but the baseline does not pass the gate either ("
            + "; ".join(baseline.reasons)
            + "): the champion stays",
        )
    lost = (
        "lost to"
        if lost_to_baseline(candidate)
        else "was refused with no champion to keep serving; it beat"
        if vacant
        else "was refused; it beat"
    )
    return BaselinePromotion(
        True,
        f"candidate {lost} the baseline ({candidate.candidate:.4f} vs "
        f"{candidate.baseline:.4f} {candidate.metric}) and {versus}; baseline promoted",
    )
