"""The online decision: continue the live test, promote the challenger, or roll it back.

:func:`evaluate` reads per-request outcomes (see :mod:`retrain.live.outcomes`) and the spec's
``[live]`` table and returns a frozen :class:`LiveDecision` with its evidence (per-arm table,
test, p-value, sample size). :func:`promotion_decision` turns it into the SAME
:class:`~retrain.promotion.PromotionDecision` a backtest makes, so that the registry's invariant
(champion = a version that passed its gates and was approved) holds for live promotions too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from retrain.config import LiveSpec
from retrain.live import stats
from retrain.live.outcomes import Outcome
from retrain.promotion import Approval, PromotionDecision, decide

Action = Literal["continue", "promote", "rollback"]
# a guardrail on errors or latency needs this many challenger answers before it may fire
GUARDRAIL_MIN_REQUESTS = 20


@dataclass(frozen=True)
class ArmSummary:
    arm: str
    version: str
    requests: int
    labelled: int
    errors: int
    error_rate: float
    p99_latency_ms: float | None
    metric: float | None
    ci_low: float | None
    ci_high: float | None


@dataclass(frozen=True)
class LiveDecision:
    model: str
    routing: str
    action: Action
    reason: str
    champion_version: str
    challenger_version: str
    metric: str
    greater_is_better: bool
    test: str
    arms: tuple[ArmSummary, ...]
    # challenger minus champion in the metric's units (interleaving: challenger's win share - 0.5)
    effect: float | None = None
    effect_ci: tuple[float, float] | None = None
    p_value: float | None = None
    samples: int = 0
    required_samples: int | None = None
    guardrails_breached: tuple[str, ...] = field(default=())

    @property
    def sample_size_reached(self) -> bool:
        return self.required_samples is not None and self.samples >= self.required_samples

    def table(self) -> list[dict[str, Any]]:
        return [asdict(a) for a in self.arms]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["sample_size_reached"] = self.sample_size_reached
        return out

    def markdown(self) -> str:
        def num(v: float | None) -> str:
            return "-" if v is None or not math.isfinite(v) else f"{v:.4g}"

        lines = [
            f"**Live test ({self.routing}) of {self.model}: {self.action}** - {self.reason}",
            "",
            f"| arm | version | requests | labelled | error rate | p99 ms | {self.metric} | CI |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for a in self.arms:
            lines.append(
                f"| {a.arm} | {a.version} | {a.requests} | {a.labelled} | {a.error_rate:.2%} | "
                f"{num(a.p99_latency_ms)} | {num(a.metric)} | [{num(a.ci_low)}, {num(a.ci_high)}] |"
            )
        ci = f"[{num(self.effect_ci[0])}, {num(self.effect_ci[1])}]" if self.effect_ci else "-"
        required = self.required_samples if self.required_samples is not None else "-"
        lines += [
            "",
            f"- test: {self.test}; effect (challenger - champion): {num(self.effect)} {ci}; "
            f"p = {num(self.p_value)}",
            f"- samples per arm: {self.samples} of {required} required "
            f"(reached: {'yes' if self.sample_size_reached else 'no'})",
            f"- {self.metric}: {'larger' if self.greater_is_better else 'smaller'} is better",
        ]
        if self.guardrails_breached:
            lines.append(f"- guardrails breached: {'; '.join(self.guardrails_breached)}")
        return "\n".join(lines)


def _summary(arm: str, version: str, rows: Sequence[Outcome], alpha: float) -> ArmSummary:
    served = [o for o in rows if o.arm == arm]
    values = [o.value for o in served if o.value is not None]
    latencies = [o.latency_ms for o in served if o.latency_ms is not None]
    errors = sum(o.error for o in served)
    mean, low, high = stats.mean_ci(values, alpha)
    return ArmSummary(
        arm=arm,
        version=version,
        requests=len(served),
        labelled=len(values),
        errors=errors,
        error_rate=errors / len(served) if served else 0.0,
        p99_latency_ms=float(np.percentile(latencies, 99)) if latencies else None,
        metric=None if math.isnan(mean) else mean,
        ci_low=None if math.isnan(low) else low,
        ci_high=None if math.isnan(high) else high,
    )


def _guardrails(
    live: LiveSpec, champion: ArmSummary, challenger: ArmSummary, greater_is_better: bool
) -> tuple[str, ...]:
    breached = []
    if challenger.requests >= GUARDRAIL_MIN_REQUESTS:
        if challenger.error_rate > live.max_error_rate:
            breached.append(
                f"error rate {challenger.error_rate:.2%} > live.max_error_rate "
                f"{live.max_error_rate:.2%}"
            )
        if (
            live.routing != "shadow"
            and challenger.p99_latency_ms is not None
            and challenger.p99_latency_ms > live.max_latency_ms
        ):
            breached.append(
                f"p99 latency {challenger.p99_latency_ms:.1f} ms > live.max_latency_ms "
                f"{live.max_latency_ms:g}"
            )
    if (
        live.routing == "canary"
        and min(champion.labelled, challenger.labelled) >= live.min_samples
        and champion.metric is not None
        and challenger.metric is not None
        and champion.metric != 0
    ):
        worse = (challenger.metric - champion.metric) / abs(champion.metric)
        if greater_is_better:
            worse = -worse
        if worse > live.max_degradation:
            breached.append(
                f"metric {worse:.1%} worse than the champion > live.max_degradation "
                f"{live.max_degradation:.0%}"
            )
    return tuple(breached)


def _better(effect: float, greater_is_better: bool) -> float:
    """The improvement: positive when the challenger is better."""
    return effect if greater_is_better else -effect


def evaluate(
    live: LiveSpec,
    *,
    model: str,
    metric: str,
    greater_is_better: bool,
    champion_version: str,
    challenger_version: str,
    outcomes: Sequence[Outcome],
    seed: int = 0,
) -> LiveDecision:
    """The decision of the live test ``live.routing`` on the outcomes seen so far."""
    routing = live.routing
    if routing == "off":
        raise ValueError("live.routing is 'off': there is no live test to evaluate")
    mine = [o for o in outcomes if o.version in (champion_version, challenger_version) or o.winner]
    arms = (
        _summary("champion", champion_version, mine, live.alpha),
        _summary("challenger", challenger_version, mine, live.alpha),
    )
    base: dict[str, Any] = {
        "model": model,
        "routing": routing,
        "champion_version": champion_version,
        "challenger_version": challenger_version,
        "metric": metric,
        "greater_is_better": greater_is_better,
        "arms": arms,
    }
    breached = _guardrails(live, arms[0], arms[1], greater_is_better)
    if breached:
        return LiveDecision(
            action="rollback",
            reason="guardrail breached: " + "; ".join(breached),
            test="guardrails",
            guardrails_breached=breached,
            samples=min(a.labelled for a in arms),
            **base,
        )
    if routing == "interleave":
        return _interleave(live, mine, base)
    if routing == "bandit":
        return _bandit(live, mine, base, seed)
    champ = [o.value for o in mine if o.arm == "champion" and o.value is not None]
    chall = [o.value for o in mine if o.arm == "challenger" and o.value is not None]
    if routing == "shadow":
        return _shadow(live, mine, base)
    if routing == "ab":
        return _ab(live, champ, chall, base)
    return _fixed(live, stats.welch(champ, chall, live.alpha), "Welch z-test", base)


def _fixed(live: LiveSpec, cmp: stats.Comparison, test: str, base: dict[str, Any]) -> LiveDecision:
    """Shadow and canary: decide once the interval of the improvement excludes zero."""
    gib = base["greater_is_better"]
    n = min(cmp.n_a, cmp.n_b)
    common: dict[str, Any] = {
        "test": test,
        "samples": n,
        "required_samples": live.min_samples,
        **base,
    }
    if n < live.min_samples or math.isnan(cmp.effect):
        return LiveDecision(
            action="continue",
            reason=f"{n} labelled requests per arm of the {live.min_samples} needed",
            **common,
        )
    low, high = sorted((_better(cmp.low, gib), _better(cmp.high, gib)))
    evidence: dict[str, Any] = {
        "effect": cmp.effect,
        "effect_ci": (cmp.low, cmp.high),
        "p_value": cmp.p_value,
    }
    ci = f"{1 - live.alpha:.0%} interval of the improvement [{low:.4g}, {high:.4g}]"
    if low > 0:
        return LiveDecision(
            action="promote", reason=f"challenger better: {ci}", **evidence, **common
        )
    if high < 0:
        return LiveDecision(
            action="rollback", reason=f"challenger worse: {ci}", **evidence, **common
        )
    if n >= live.max_samples:
        return LiveDecision(
            action="rollback",
            reason=f"no evidence of improvement after {n} requests per arm: {ci}",
            **evidence,
            **common,
        )
    return LiveDecision(action="continue", reason=f"undecided: {ci}", **evidence, **common)


def _shadow(live: LiveSpec, rows: Sequence[Outcome], base: dict[str, Any]) -> LiveDecision:
    by_request: dict[str, dict[str, float]] = {}
    for o in rows:
        if o.value is not None:
            by_request.setdefault(o.request_id, {})[o.arm] = o.value
    pairs = [v for v in by_request.values() if len(v) == 2]
    cmp = stats.paired([p["champion"] for p in pairs], [p["challenger"] for p in pairs], live.alpha)
    return _fixed(live, cmp, "paired z-test (same requests)", base)


def _ab(
    live: LiveSpec, champ: Sequence[float], chall: Sequence[float], base: dict[str, Any]
) -> LiveDecision:
    gib = base["greater_is_better"]
    n = min(len(champ), len(chall))
    if len(champ) < live.min_samples:
        return LiveDecision(
            action="continue",
            reason=f"{len(champ)} labelled champion requests of the {live.min_samples} that "
            "estimate the outcome's spread for the sample size",
            test="sample size pending",
            samples=n,
            **base,
        )
    # the sample size is fixed by the first min_samples champion outcomes (time order): it
    # does not move as the test runs
    warm = np.asarray(champ[: live.min_samples], dtype=float)
    delta = live.mde * max(abs(float(warm.mean())), 1e-12)
    sigma = max(float(warm.std(ddof=1)), 1e-12)
    required = stats.sample_size(sigma, delta, live.alpha, live.power)
    cmp = stats.welch(champ, chall, live.alpha)
    common: dict[str, Any] = {"samples": n, "required_samples": required, **base}
    evidence: dict[str, Any] = {"effect": cmp.effect, "effect_ci": (cmp.low, cmp.high)}
    if live.sequential:
        p = stats.msprt_p_value(champ, chall, tau=delta)
        test = f"mSPRT always-valid p-value (tau = {delta:.4g}), alpha {live.alpha:g}"
        if p < live.alpha and n >= 2:
            action: Action = "promote" if _better(cmp.effect, gib) > 0 else "rollback"
            word = "better" if action == "promote" else "worse"
            return LiveDecision(
                action=action,
                reason=f"challenger {word}: always-valid p = {p:.3g} < {live.alpha:g}",
                test=test,
                p_value=p,
                **evidence,
                **common,
            )
        if n >= live.max_samples:
            return LiveDecision(
                action="rollback",
                reason=f"no significant difference after {n} requests per arm (p = {p:.3g})",
                test=test,
                p_value=p,
                **evidence,
                **common,
            )
        return LiveDecision(
            action="continue",
            reason=f"always-valid p = {p:.3g}: keep testing",
            test=test,
            p_value=p,
            **evidence,
            **common,
        )
    test = f"fixed-horizon Welch z-test at n = {required} per arm, alpha {live.alpha:g}"
    if n < required:
        return LiveDecision(
            action="continue",
            reason=f"{n} of the {required} requests per arm (no peeking before)",
            test=test,
            **common,
        )
    # read once, at the horizon: the first ``required`` outcomes of each arm
    cmp = stats.welch(champ[:required], chall[:required], live.alpha)
    evidence = {"effect": cmp.effect, "effect_ci": (cmp.low, cmp.high), "p_value": cmp.p_value}
    if cmp.p_value < live.alpha and _better(cmp.effect, gib) > 0:
        return LiveDecision(
            action="promote",
            reason=f"challenger better: p = {cmp.p_value:.3g} < {live.alpha:g}",
            test=test,
            **evidence,
            **common,
        )
    word = "worse" if cmp.p_value < live.alpha else "not significantly better"
    return LiveDecision(
        action="rollback",
        reason=f"challenger {word}: p = {cmp.p_value:.3g} at the planned sample size",
        test=test,
        **evidence,
        **common,
    )


def _interleave(live: LiveSpec, rows: Sequence[Outcome], base: dict[str, Any]) -> LiveDecision:
    winners = [o.winner for o in rows if o.winner in ("champion", "challenger")]
    wins = sum(w == "challenger" for w in winners)
    n = len(winners)
    test = "team-draft interleaving, two-sided sign test on the requests with a preference"
    common: dict[str, Any] = {
        "test": test,
        "samples": n,
        "required_samples": live.min_samples,
        **base,
    }
    if n < live.min_samples:
        return LiveDecision(
            action="continue",
            reason=f"{n} requests with a click preference of the {live.min_samples} needed",
            **common,
        )
    p = stats.binomial_p_value(wins, n)
    share = wins / n
    evidence: dict[str, Any] = {"effect": share - 0.5, "p_value": p}
    if p < live.alpha:
        action: Action = "promote" if share > 0.5 else "rollback"
        return LiveDecision(
            action=action,
            reason=f"challenger won {wins} of {n} preferences ({share:.1%}), p = {p:.3g}",
            **evidence,
            **common,
        )
    if n >= live.max_samples:
        return LiveDecision(
            action="rollback",
            reason=f"no preference after {n} requests ({share:.1%}), p = {p:.3g}",
            **evidence,
            **common,
        )
    return LiveDecision(
        action="continue", reason=f"challenger won {share:.1%}, p = {p:.3g}", **evidence, **common
    )


def _bandit(
    live: LiveSpec, rows: Sequence[Outcome], base: dict[str, Any], seed: int
) -> LiveDecision:
    champ = [o.value for o in rows if o.arm == "champion" and o.value is not None]
    chall = [o.value for o in rows if o.arm == "challenger" and o.value is not None]
    n = min(len(champ), len(chall))
    test = f"Thompson sampling, floor {live.floor:.0%}; P(challenger better) vs 1 - alpha"
    common: dict[str, Any] = {
        "test": test,
        "samples": n,
        "required_samples": live.min_samples,
        **base,
    }
    if n < live.min_samples:
        return LiveDecision(
            action="continue", reason=f"{n} labelled per arm of {live.min_samples}", **common
        )
    p_better = stats.prob_better(champ, chall, base["greater_is_better"], seed=seed)
    effect = float(np.mean(chall) - np.mean(champ))
    evidence: dict[str, Any] = {"effect": effect, "p_value": 1 - p_better}
    if p_better > 1 - live.alpha:
        return LiveDecision(
            action="promote",
            reason=f"P(challenger better) = {p_better:.3f} > {1 - live.alpha:g}",
            **evidence,
            **common,
        )
    if p_better < live.alpha:
        return LiveDecision(
            action="rollback",
            reason=f"P(challenger better) = {p_better:.3f} < {live.alpha:g}",
            **evidence,
            **common,
        )
    if n >= live.max_samples:
        return LiveDecision(
            action="rollback",
            reason=f"undecided after {n} per arm: P(challenger better) = {p_better:.3f}",
            **evidence,
            **common,
        )
    return LiveDecision(
        action="continue", reason=f"P(challenger better) = {p_better:.3f}", **evidence, **common
    )


def promotion_decision(
    live: LiveDecision,
    *,
    backtest_passed: bool,
    backtest_reasons: Sequence[str],
    approval: Approval | None,
) -> PromotionDecision:
    """The promotion decision of a finished live test: the challenger's gate passed only when
    its backtest gate did AND the live test says promote; the same :func:`decide` as a backtest.
    """
    if live.action == "continue":
        raise ValueError("a live test that continues has no promotion decision yet")
    passed = backtest_passed and live.action == "promote"
    reasons = [f"live {live.routing} test: {live.action} ({live.reason})"]
    if not backtest_passed:
        reasons.insert(0, "backtest gate failed: " + "; ".join(backtest_reasons))
    return decide(
        version=live.challenger_version,
        gate_passed=passed,
        gate_reasons=tuple(reasons),
        approval=approval if passed else None,
    )
