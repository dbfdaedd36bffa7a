"""Choosing a policy from a simulation: the Pareto front of quality against compute, and the
cheapest policy within a tolerance of the best."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from retrain.errors import SimulationError
from retrain.simulate.replay import Simulation


@dataclass(frozen=True)
class Candidate:
    name: str
    metric: float
    cost: float


@dataclass(frozen=True)
class PolicyChoice:
    policy: str
    best: str
    within: tuple[str, ...]
    reason: str


def _gap(value: float, best: float, greater_is_better: bool) -> float:
    """How much worse ``value`` is than ``best``, relative to ``|best|`` (0 = as good)."""
    worse = (best - value) if greater_is_better else (value - best)
    return worse / abs(best) if best else (0.0 if worse <= 0 else math.inf)


def choose_policy(
    candidates: Sequence[Candidate], tolerance: float, greater_is_better: bool
) -> PolicyChoice:
    """The cheapest policy whose metric is within ``tolerance`` (relative) of the best one.

    >>> c = [Candidate("daily", 10.0, 90.0), Candidate("weekly", 10.2, 13.0),
    ...      Candidate("never", 14.0, 0.2)]
    >>> choose_policy(c, 0.05, greater_is_better=False).policy
    'weekly'
    >>> choose_policy(c, 0.0, greater_is_better=False).policy
    'daily'
    """
    if not candidates:
        raise SimulationError("no policy to recommend: simulate at least one")
    if tolerance < 0 or not math.isfinite(tolerance):
        raise SimulationError(f"tolerance must be a non-negative fraction, got {tolerance!r}")
    scored = [c for c in candidates if math.isfinite(c.metric)]
    if not scored:
        raise SimulationError("no policy has a finite metric: nothing to recommend")
    key = (lambda c: -c.metric) if greater_is_better else (lambda c: c.metric)
    best = min(scored, key=lambda c: (key(c), c.cost))
    within = [c for c in scored if _gap(c.metric, best.metric, greater_is_better) <= tolerance]
    pick = min(within, key=lambda c: (c.cost, key(c)))
    if pick is best:
        reason = (
            f"{pick.name} is the best ({pick.metric:.4g}) and no policy within {tolerance:.1%} "
            "of it is cheaper"
        )
    else:
        gap = _gap(pick.metric, best.metric, greater_is_better)
        reason = (
            f"{pick.name} is within {tolerance:.1%} of the best policy {best.name} "
            f"({pick.metric:.4g} vs {best.metric:.4g}, {gap:+.1%}) for "
            f"{pick.cost:.3g} s of CPU instead of {best.cost:.3g} s"
        )
    return PolicyChoice(pick.name, best.name, tuple(c.name for c in within), reason)


def pareto_front(candidates: Sequence[Candidate], greater_is_better: bool) -> tuple[str, ...]:
    """The policies no other policy beats on both cost and metric, cheapest first.

    >>> c = [Candidate("a", 10.0, 5.0), Candidate("b", 11.0, 1.0), Candidate("c", 12.0, 6.0)]
    >>> pareto_front(c, greater_is_better=False)
    ('b', 'a')
    """
    sign = -1.0 if greater_is_better else 1.0
    front = []
    for c in candidates:
        dominated = any(
            o is not c
            and o.cost <= c.cost
            and sign * o.metric <= sign * c.metric
            and (o.cost < c.cost or sign * o.metric < sign * c.metric)
            for o in candidates
        )
        if not dominated:
            front.append(c)
    return tuple(c.name for c in sorted(front, key=lambda c: (c.cost, sign * c.metric)))


def candidates_of(simulation: Simulation) -> list[Candidate]:
    return [Candidate(r.label, r.overall, r.total_cpu_s) for r in simulation.runs]
