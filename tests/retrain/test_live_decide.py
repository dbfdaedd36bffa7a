"""The live tests decide right on seeded simulations where the better arm is known.

Error rates are checked over many seeded runs: a test at alpha = 0.05 may wrongly promote an
equal challenger in at most about 5% of them, and must find a challenger that is better by the
minimum detectable effect in about ``power`` of them (bounds allow three binomial standard errors).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np
import pytest

from retrain.config import LiveSpec
from retrain.live import LiveDecision, evaluate, promotion_decision
from retrain.live.interleave import credit, team_draft
from retrain.live.outcomes import Outcome
from retrain.live.routing import route
from retrain.live.stats import sample_size, thompson_share
from retrain.promotion import Approval

T0 = datetime(2026, 1, 1)
TIMES = [T0 + timedelta(seconds=i) for i in range(20_000)]
RUNS = 200


def slack(p: float, runs: int = RUNS) -> float:
    return 3 * math.sqrt(p * (1 - p) / runs)


def arm_outcomes(
    arm: str, version: str, values, *, latency: float = 5.0, errors: int = 0, start: int = 0
) -> list[Outcome]:
    rows = [
        Outcome(
            f"{arm}-{start + i}",
            arm,
            version,
            T0 + timedelta(seconds=start + i),
            True,
            latency,
            False,
            float(v),
        )
        for i, v in enumerate(values)
    ]
    rows += [
        Outcome(f"{arm}-err-{i}", arm, version, T0, True, latency, True, None)
        for i in range(errors)
    ]
    return rows


def decide(
    live: LiveSpec, rows: list[Outcome], greater: bool = True, seed: int = 0
) -> LiveDecision:
    return evaluate(
        live,
        model="m",
        metric="reward" if greater else "mae",
        greater_is_better=greater,
        champion_version="1",
        challenger_version="2",
        outcomes=rows,
        seed=seed,
    )


def two_arms(rng: np.random.Generator, n: int, mean_a: float, mean_b: float, sd: float):
    return arm_outcomes("champion", "1", rng.normal(mean_a, sd, n)) + arm_outcomes(
        "challenger", "2", rng.normal(mean_b, sd, n)
    )


# --- A/B: fixed horizon ------------------------------------------------------------------------
AB = LiveSpec(routing="ab", mde=0.1, alpha=0.05, power=0.8, min_samples=200)


def ab_rate(mean_b: float, live: LiveSpec = AB, n: int = 700) -> tuple[float, LiveDecision]:
    promoted, last = 0, None
    for seed in range(RUNS):
        last = decide(live, two_arms(np.random.default_rng(seed), n, 1.0, mean_b, 0.5))
        promoted += last.action == "promote"
    assert last is not None
    return promoted / RUNS, last


def test_ab_states_its_sample_size_up_front_and_waits_for_it():
    rows = two_arms(np.random.default_rng(1), 300, 1.0, 1.5, 0.5)
    decision = decide(AB, rows)
    assert decision.action == "continue"  # a huge effect, but no peeking before the horizon
    assert decision.required_samples == pytest.approx(sample_size(0.5, 0.1, 0.05, 0.8), rel=0.2)
    assert "no peeking" in decision.reason and not decision.sample_size_reached


def test_ab_rarely_promotes_an_equal_challenger():
    rate, last = ab_rate(1.0)
    assert last.sample_size_reached
    assert rate <= 0.05 + slack(0.05)


def test_ab_finds_a_challenger_better_by_the_mde_at_the_stated_power():
    rate, _ = ab_rate(1.1)
    assert rate >= 0.8 - slack(0.8)


def test_ab_rolls_back_a_worse_challenger():
    decision = decide(AB, two_arms(np.random.default_rng(3), 700, 1.0, 0.85, 0.5))
    assert decision.action == "rollback" and "worse" in decision.reason


# --- A/B: sequential (mSPRT) -------------------------------------------------------------------
SEQ = LiveSpec(routing="ab", mde=0.1, sequential=True, min_samples=100, max_samples=3000)


def test_msprt_keeps_its_error_rate_under_continuous_peeking():
    """The always-valid p-value is the running minimum over every request: stopping at the
    first crossing is what the test does, and it still rarely decides for equal arms."""
    decided = sum(
        decide(SEQ, two_arms(np.random.default_rng(seed), 800, 1.0, 1.0, 0.5)).action != "continue"
        for seed in range(RUNS)
    )
    assert decided / RUNS <= 0.05 + slack(0.05)


def test_msprt_stops_early_for_a_clearly_better_challenger():
    found = [
        decide(SEQ, two_arms(np.random.default_rng(seed), 800, 1.0, 1.12, 0.5))
        for seed in range(60)
    ]
    assert sum(d.action == "promote" for d in found) >= 54
    assert all(d.action != "rollback" for d in found)


# --- shadow and canary -------------------------------------------------------------------------
def shadow_rows(rng: np.random.Generator, n: int, gain: float) -> list[Outcome]:
    base = rng.normal(10.0, 3.0, n)  # per-request absolute errors of the champion
    rows = []
    for i, v in enumerate(base):
        at = T0 + timedelta(seconds=i)
        rows.append(Outcome(str(i), "champion", "1", at, True, 4.0, False, float(v)))
        other = float(v - gain + rng.normal(0, 1.0))
        rows.append(Outcome(str(i), "challenger", "2", at, False, 4.0, False, other))
    return rows


SHADOW = LiveSpec(routing="shadow", min_samples=200, max_samples=2000)


def test_shadow_promotes_a_challenger_with_smaller_errors_on_the_same_requests():
    decision = decide(SHADOW, shadow_rows(np.random.default_rng(0), 300, gain=0.5), greater=False)
    assert decision.action == "promote" and decision.test.startswith("paired")


def test_shadow_rolls_back_a_challenger_with_larger_errors():
    decision = decide(SHADOW, shadow_rows(np.random.default_rng(0), 300, gain=-0.5), greater=False)
    assert decision.action == "rollback" and "worse" in decision.reason


def test_shadow_rarely_promotes_an_equal_challenger():
    promoted = sum(
        decide(SHADOW, shadow_rows(np.random.default_rng(s), 300, 0.0), greater=False).action
        == "promote"
        for s in range(RUNS)
    )
    assert promoted / RUNS <= 0.05 + slack(0.05)


def test_shadow_waits_for_min_samples():
    decision = decide(SHADOW, shadow_rows(np.random.default_rng(0), 50, gain=5.0), greater=False)
    assert decision.action == "continue" and "50 labelled" in decision.reason


CANARY = LiveSpec(
    routing="canary",
    share=0.05,
    min_samples=50,
    max_error_rate=0.02,
    max_latency_ms=100,
    max_degradation=0.1,
)


def test_canary_error_guardrail_rolls_back_before_any_label():
    rows = arm_outcomes("champion", "1", [1.0] * 100) + arm_outcomes(
        "challenger", "2", [], errors=0
    )
    rows += [
        Outcome(f"c{i}", "challenger", "2", T0, True, 5.0, i % 10 == 0, None) for i in range(30)
    ]
    decision = decide(CANARY, rows)
    assert decision.action == "rollback"
    assert "error rate 10.00% > live.max_error_rate 2.00%" in decision.reason


def test_canary_latency_guardrail_rolls_back():
    rows = arm_outcomes("champion", "1", [1.0] * 100) + arm_outcomes(
        "challenger", "2", [1.0] * 30, latency=250.0
    )
    decision = decide(CANARY, rows)
    assert decision.action == "rollback" and "p99 latency 250.0 ms" in decision.reason


def test_canary_metric_guardrail_rolls_back_a_much_worse_challenger():
    rng = np.random.default_rng(0)
    rows = arm_outcomes("champion", "1", rng.normal(10, 1, 200)) + arm_outcomes(
        "challenger", "2", rng.normal(12, 1, 60)
    )
    decision = decide(CANARY, rows, greater=False)
    assert decision.action == "rollback" and "worse than the champion" in decision.reason


def test_canary_promotes_a_better_challenger_within_its_guardrails():
    rng = np.random.default_rng(0)
    rows = arm_outcomes("champion", "1", rng.normal(10, 1, 1000)) + arm_outcomes(
        "challenger", "2", rng.normal(9.5, 1, 80)
    )
    decision = decide(CANARY, rows, greater=False)
    assert decision.action == "promote", decision.reason


# --- interleaving ------------------------------------------------------------------------------
def simulate_interleaving(rng: np.random.Generator, requests: int, better: str) -> list[Outcome]:
    """Users click relevant items (more likely near the top); the better ranker puts more
    relevant items in its top 10."""
    rows = []
    for r in range(requests):
        relevant = set(rng.choice(100, 10, replace=False).tolist())
        good = sorted(relevant)[:6] + [i for i in range(100) if i not in relevant][:4]
        poor = sorted(relevant)[:3] + [i for i in range(100) if i not in relevant][10:17]
        lists = (
            {"champion": poor, "challenger": good}
            if better == "challenger"
            else {"champion": good, "challenger": poor}
        )
        for name in lists:
            rng.shuffle(lists[name])
        items, teams = team_draft(lists["champion"], lists["challenger"], 10, seed=r)
        clicks = [
            i
            for pos, i in enumerate(items)
            if i in relevant and rng.random() < 0.6 / (1 + pos * 0.2)
        ]
        rows.append(
            Outcome(
                str(r),
                "interleaved",
                "1|2",
                T0 + timedelta(seconds=r),
                True,
                3.0,
                False,
                None,
                credit(teams, items, clicks),
            )
        )
    return rows


INTERLEAVE = LiveSpec(routing="interleave", min_samples=100, max_samples=5000)


def test_team_draft_takes_turns_and_never_repeats_an_item():
    items, teams = team_draft([1, 2, 3, 4], [1, 5, 6, 7], k=6, seed=3)
    assert len(items) == len(set(items)) == 6
    assert abs(teams.count("champion") - teams.count("challenger")) <= 1
    assert credit(teams, items, [items[teams.index("challenger")]]) == "challenger"
    assert credit(teams, items, []) == "tie"


@pytest.mark.parametrize("better, action", [("challenger", "promote"), ("champion", "rollback")])
def test_interleaving_finds_the_better_ranker(better: str, action: str):
    hits = sum(
        decide(INTERLEAVE, simulate_interleaving(np.random.default_rng(s), 300, better)).action
        == action
        for s in range(25)
    )
    assert hits >= 23  # power of this effect at 300 requests is > 0.95


# --- bandit ------------------------------------------------------------------------------------
BANDIT = LiveSpec(routing="bandit", floor=0.05, min_samples=100, max_samples=20_000)


def run_bandit(seed: int, p_champion: float, p_challenger: float, rounds: int = 30, per: int = 200):
    """The gateway's loop: every poll the challenger's share is recomputed (Thompson), requests
    are assigned by the sticky hash against it, clicks come back; the evaluation decides."""
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {"champion": [], "challenger": []}
    rows: list[Outcome] = []
    served = {"champion": 0, "challenger": 0}
    decision = None
    for r in range(rounds):
        share = thompson_share(values["champion"], values["challenger"], True, BANDIT.floor, seed=r)
        for i in range(per):
            key = f"{seed}-{r}-{i}"
            arm = route("bandit", "m", key, has_challenger=True, share=share).arm
            p = p_challenger if arm == "challenger" else p_champion
            v = float(rng.random() < p)
            values[str(arm)].append(v)
            served[str(arm)] += 1
            rows.append(
                Outcome(
                    key,
                    str(arm),
                    "1" if arm == "champion" else "2",
                    T0 + timedelta(seconds=len(rows)),
                    True,
                    2.0,
                    False,
                    v,
                )
            )
        decision = decide(BANDIT, rows, seed=seed)
        if decision.action != "continue":
            break
    return decision, served


def test_bandit_sends_most_traffic_to_the_better_arm_and_promotes_it():
    results = [run_bandit(s, 0.10, 0.16) for s in range(40)]
    promoted = sum(d.action == "promote" for d, _ in results)
    assert promoted >= 36
    assert sum(1 for d, _ in results if d.action == "rollback") <= 2
    shares = [s["challenger"] / (s["champion"] + s["challenger"]) for _, s in results]
    assert np.median(shares) > 0.5


def test_bandit_keeps_the_floor_share_for_a_worse_arm_and_rolls_it_back():
    results = [run_bandit(s, 0.16, 0.10) for s in range(40)]
    assert sum(d.action == "rollback" for d, _ in results) >= 36
    share = thompson_share([1.0] * 500, [0.0] * 500, True, 0.05)
    assert share == pytest.approx(0.05)


# --- the promotion invariant -------------------------------------------------------------------
def test_a_live_promotion_goes_through_the_same_decide_as_a_backtest():
    decision = decide(SHADOW, shadow_rows(np.random.default_rng(0), 300, gain=0.5), greater=False)
    approval = Approval(approved=True, approver="ana", comment="online win")
    promotion = promotion_decision(
        decision, backtest_passed=True, backtest_reasons=(), approval=approval
    )
    assert promotion.promote and promotion.version == "2" and promotion.approver == "ana"
    refused = promotion_decision(
        decision,
        backtest_passed=False,
        backtest_reasons=("worse than champion",),
        approval=approval,
    )
    assert not refused.promote and "backtest gate failed: worse than champion" in refused.reason


def test_a_rolled_back_live_test_is_a_failed_gate():
    decision = decide(SHADOW, shadow_rows(np.random.default_rng(0), 300, gain=-0.5), greater=False)
    promotion = promotion_decision(
        decision, backtest_passed=True, backtest_reasons=(), approval=None
    )
    assert not promotion.promote and not promotion.gate_passed
    assert promotion.reason.startswith("gate failed: live shadow test: rollback")


def test_a_continuing_test_has_no_promotion_decision():
    decision = decide(SHADOW, [], greater=False)
    with pytest.raises(ValueError, match="continues has no promotion decision"):
        promotion_decision(decision, backtest_passed=True, backtest_reasons=(), approval=None)


def test_the_evidence_shows_arms_test_and_sample_size():
    decision = decide(AB, two_arms(np.random.default_rng(0), 700, 1.0, 1.1, 0.5))
    text = decision.markdown()
    assert "| champion | 1 |" in text and "| challenger | 2 |" in text
    assert "fixed-horizon Welch" in text and "required (reached: yes)" in text
