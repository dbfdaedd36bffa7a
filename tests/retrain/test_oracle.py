"""The hindsight oracle's dynamic program: optimal (checked against retrainopt's exact planner
and against brute force), and its front and capture figures."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from retrainopt.core.dp import solve_exact_schedule

from retrain.errors import SimulationError
from retrain.oracle import capture, front, metric_of_loss, solve


def _random_problem(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    # models age: a model's loss grows with the distance from its start, plus noise
    age = np.arange(n)[None, :] - np.arange(n)[:, None]
    loss = rng.uniform(0.5, 2.0, (n, 1)) + rng.uniform(0.0, 1.0, (n, 1)) * age
    loss = loss + rng.uniform(0.0, 0.5, (n, n))
    loss[age < 0] = np.nan
    return loss, rng.uniform(0.1, 3.0, n)


def _retrainopt_cost(loss: np.ndarray, compute: np.ndarray, price: float) -> float:
    """retrainopt's exact planner on the same problem: its initial model (supplied, free) is our
    model 0, every later model a candidate (step, 1) with training cost price * compute."""
    n = loss.shape[1]
    costs = {(-1, 0): {"training_cost": 0.0, "future_losses": dict(enumerate(loss[0]))}}
    for t in range(1, n):
        costs[(t, 1)] = {
            "training_cost": price * compute[t],
            "future_losses": {j: loss[t, j] for j in range(t, n)},
        }
    total, _, _, _ = solve_exact_schedule(n, costs, loss_cost_weight=1.0)
    return total + price * compute[0]


@pytest.mark.parametrize("seed", range(12))
def test_the_optimal_cost_equals_retrainopts_exact_planner(seed: int) -> None:
    rng = np.random.default_rng(seed)
    loss, compute = _random_problem(rng, int(rng.integers(1, 14)))
    for price in (0.0, 0.3, 1.0, 4.0, 50.0):
        ours = solve(loss, compute, price)
        assert ours.cost == pytest.approx(_retrainopt_cost(loss, compute, price), rel=1e-9)


def test_the_optimal_cost_equals_brute_force_over_every_schedule() -> None:
    rng = np.random.default_rng(99)
    loss, compute = _random_problem(rng, 8)
    for price in (0.1, 1.0, 3.0):
        best = math.inf
        for extra in itertools.product((0, 1), repeat=7):
            chosen = [0, *(t + 1 for t, on in enumerate(extra) if on)]
            ends = [*chosen[1:], 8]
            total = sum(loss[k, k:e].sum() for k, e in zip(chosen, ends, strict=True))
            best = min(best, total + price * compute[chosen].sum())
        assert solve(loss, compute, price).cost == pytest.approx(best)


def test_candidate_starts_restrict_the_schedule_to_those_steps() -> None:
    rng = np.random.default_rng(3)
    loss, compute = _random_problem(rng, 9)
    starts = [0, 3, 6]
    schedule = solve(loss[starts], compute[starts], 0.0, starts=starts)
    assert set(schedule.steps) <= set(starts)
    assert schedule.cost >= solve(loss, compute, 0.0).cost - 1e-9


def test_the_front_trades_compute_for_loss_from_never_to_the_best() -> None:
    rng = np.random.default_rng(7)
    loss, compute = _random_problem(rng, 12)
    schedules = front(loss, compute)
    assert schedules[0].retrains == (0,)  # the most expensive price: never retrain
    assert all(a.compute < b.compute and a.loss > b.loss for a, b in itertools.pairwise(schedules))
    assert schedules[-1].loss == pytest.approx(solve(loss, compute, 0.0).loss)


def test_capture_measures_gain_against_never_and_compute_at_equal_quality() -> None:
    rng = np.random.default_rng(11)
    loss, compute = _random_problem(rng, 10)
    rows = 10
    schedules = front(loss, compute)
    never = metric_of_loss("mae", schedules[0].loss, rows)
    best = metric_of_loss("mae", schedules[-1].loss, rows)
    halfway = (never + best) / 2
    got = {
        c.policy: c
        for c in capture(
            [("never", never, 1.0), ("best", best, 100.0), ("half", halfway, 5.0),
             ("beyond", best - 1.0, 9.0)],
            schedules, never, "mae", rows, greater_is_better=False,
        )
    }  # fmt: skip
    assert got["never"].gain_share == pytest.approx(0.0)
    assert got["best"].gain_share == pytest.approx(1.0)
    assert got["half"].gain_share == pytest.approx(0.5)
    assert got["best"].oracle_compute == pytest.approx(schedules[-1].compute)
    reach = min(s.compute for s in schedules if s.loss / rows <= halfway)
    assert got["half"].oracle_compute == pytest.approx(reach)
    assert got["half"].compute_share == pytest.approx(5.0 / reach)
    assert got["beyond"].oracle_compute is None and got["beyond"].gain_share > 1


def test_a_loss_missing_after_a_models_start_is_refused_by_name() -> None:
    loss = np.array([[1.0, np.nan], [np.nan, 1.0]])
    with pytest.raises(SimulationError, match="model 0 has a missing, infinite or negative loss"):
        solve(loss, np.ones(2), 1.0)


def test_a_negative_price_is_refused() -> None:
    with pytest.raises(SimulationError, match="price of compute must be finite and non-negative"):
        solve(np.ones((1, 3)), np.ones(1), -1.0)
