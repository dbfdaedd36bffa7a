"""The hindsight oracle: the best retraining schedule, knowing the future, at every price.

Given a loss matrix ``L[k, j]`` (the loss, summed over the rows of partition ``j``, of the model
``k`` trained from scratch with the data before partition ``start[k]``, for ``j >= start[k]``)
and the measured compute ``c[k]`` of each fit, a schedule is a set of models to train (model 0,
the first model, always); each serves from its start until the next one starts. Its cost is the
total loss plus ``price`` times the total compute. :func:`solve` finds the optimal schedule by a
dynamic program over "the last retrain": ``F[k]`` is the best cost of serving ``start[k]`` to the
end given that model ``k`` was just trained,

    F[k] = price * c[k] + min over k' > k of (sum of L[k, start[k] .. start[k'] - 1] + F[k'])

with "keep model k to the end" as the last option; O(m * n) for m models and n partitions. This
is the problem of Yang and Mathioudakis ("Automated Retraining for Cost-Optimal ML", ECML PKDD
2026); ``retrainopt.core.dp.solve_exact_schedule`` solves it too (tests check the two agree).
:func:`front` sweeps the price and keeps each distinct schedule: the oracle's quality-vs-compute
front. :func:`capture` says how much of the oracle's gain over ``never`` a policy captures and
at what share of the compute the oracle needs for the same quality.

Pure numpy and frozen dataclasses; the loss matrix is built by :mod:`retrain.oracle_losses`.

>>> L = np.array([[1.0, 5.0, 5.0, 5.0],
...               [np.nan, 1.0, 1.0, 1.0],
...               [np.nan, np.nan, 1.0, 1.0],
...               [np.nan, np.nan, np.nan, 1.0]])
>>> c = np.array([2.0, 2.0, 2.0, 2.0])
>>> solve(L, c, price=1.0).retrains  # one retrain at step 1 saves 12 for a price of 2
(0, 1)
>>> solve(L, c, price=7.0).retrains  # at 7 per second the retrain (14) costs more than it saves
(0,)
>>> [(s.retrains, s.loss, s.compute) for s in front(L, c, prices=[0.1, 1.0, 10.0])]
[((0,), 16.0, 2.0), ((0, 1), 4.0, 4.0)]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from retrain.errors import SimulationError

# Metrics whose per-partition value times its rows is the partition's additive loss; the
# overall metric is total loss / rows. ``accuracy`` and the ranking metrics (and ``auc``, as an
# approximation: the row-weighted mean of per-partition AUCs) are turned into a loss as 1 - m;
# ``rmse`` adds squared errors.
ONE_MINUS = {"accuracy", "auc", "ndcg", "map", "precision"}


def partition_loss(metric: str, value: float, rows: int) -> float:
    """The additive loss of one partition scored ``value`` on ``rows`` rows.

    >>> partition_loss("accuracy", 0.75, 8), partition_loss("rmse", 2.0, 3)
    (2.0, 12.0)
    """
    if metric in ONE_MINUS:
        return (1.0 - value) * rows
    if metric == "rmse":
        return value * value * rows
    return value * rows


def metric_of_loss(metric: str, loss: float, rows: int) -> float:
    """The overall metric of a schedule whose partitions add up to ``loss`` over ``rows`` rows.

    >>> metric_of_loss("accuracy", 2.0, 8), metric_of_loss("rmse", 12.0, 3)
    (0.75, 2.0)
    """
    if rows <= 0:
        return math.nan
    mean = loss / rows
    if metric in ONE_MINUS:
        return 1.0 - mean
    if metric == "rmse":
        return math.sqrt(mean)
    return mean


@dataclass(frozen=True)
class Schedule:
    """One schedule of the oracle: which models it trains and what it costs.

    ``retrains`` are model indices (0 = the first model, always trained); ``steps`` the first
    partition each one serves.
    """

    price: float
    retrains: tuple[int, ...]
    steps: tuple[int, ...]
    loss: float
    compute: float

    @property
    def cost(self) -> float:
        return self.loss + self.price * self.compute


def _check(loss: np.ndarray, compute: np.ndarray, starts: np.ndarray) -> None:
    m, n = loss.shape
    if m == 0 or n == 0:
        raise SimulationError("the loss matrix is empty: replay at least one partition")
    if compute.shape != (m,) or starts.shape != (m,):
        raise SimulationError(
            f"the loss matrix has {m} models but {compute.shape[0]} compute figures and "
            f"{starts.shape[0]} start steps: one each per model"
        )
    if starts[0] != 0 or np.any(np.diff(starts) <= 0) or starts[-1] >= n:
        raise SimulationError(
            "model starts must begin at step 0 and increase strictly within the replay"
        )
    for k, s in enumerate(starts):
        row = loss[k, s:]
        if not np.all(np.isfinite(row)) or np.any(row < 0):
            raise SimulationError(
                f"model {k} has a missing, infinite or negative loss from its start (step {s}) "
                "on: every model needs a finite, non-negative loss on every later partition"
            )
    if not np.all(np.isfinite(compute)) or np.any(compute < 0):
        raise SimulationError("compute figures must be finite and non-negative (CPU seconds)")


def solve(
    loss: np.ndarray,
    compute: np.ndarray,
    price: float,
    starts: Sequence[int] | np.ndarray | None = None,
) -> Schedule:
    """The schedule of least ``total loss + price * total compute`` (ties: fewer retrains).

    ``loss`` is ``(m, n)``: model ``k`` (trained before partition ``starts[k]``, by default
    ``k``) on each of the ``n`` partitions; entries before a model's start are ignored.
    """
    loss = np.asarray(loss, dtype="float64")
    compute = np.asarray(compute, dtype="float64")
    if loss.ndim != 2:
        raise SimulationError(f"the loss matrix must be 2-d, got shape {loss.shape}")
    m, n = loss.shape
    start = np.arange(m) if starts is None else np.asarray(starts, dtype=int)
    _check(loss, compute, start)
    if not math.isfinite(price) or price < 0:
        raise SimulationError(f"the price of compute must be finite and non-negative, got {price}")
    # cum[k, j] = loss of model k on its partitions before j (0 before its start)
    served = np.where(np.arange(n)[None, :] >= start[:, None], loss, 0.0)
    cum = np.concatenate([np.zeros((m, 1)), np.cumsum(served, axis=1)], axis=1)
    best = np.empty(m + 1)
    nxt = np.empty(m, dtype=int)
    best[m] = 0.0
    stops = np.append(start, n)  # model k' starts at stops[k']; m = "keep to the end"
    for k in range(m - 1, -1, -1):
        later = np.arange(k + 1, m + 1)
        options = cum[k, stops[later]] - cum[k, start[k]] + best[later]
        # the last minimum: on a tie, keep the current model longer
        pick = len(options) - 1 - int(np.argmin(options[::-1]))
        nxt[k] = later[pick]
        best[k] = price * compute[k] + options[pick]
    chosen = [0]
    while nxt[chosen[-1]] < m:
        chosen.append(int(nxt[chosen[-1]]))
    total_loss = math.fsum(
        cum[k, stops[after]] - cum[k, start[k]]
        for k, after in zip(chosen, [*chosen[1:], m], strict=True)
    )
    return Schedule(
        price=float(price),
        retrains=tuple(chosen),
        steps=tuple(int(start[k]) for k in chosen),
        loss=float(total_loss),
        compute=float(math.fsum(compute[k] for k in chosen)),
    )


def default_prices(loss: np.ndarray, compute: np.ndarray, count: int = 60) -> np.ndarray:
    """Prices from "retrain whenever it helps at all" to "never retrain" (log-spaced)."""
    compute = np.asarray(compute, dtype="float64")
    positive = compute[compute > 0]
    if positive.size == 0:
        return np.array([0.0])
    # above this price one retrain costs more than the whole loss of the first model: never
    first = np.asarray(loss, dtype="float64")[0]
    top = max(float(np.nansum(first)), 1e-12) / float(positive.min())
    return np.concatenate([[0.0], np.geomspace(top * 1e-7, top, count - 1)])


def front(
    loss: np.ndarray,
    compute: np.ndarray,
    prices: Sequence[float] | np.ndarray | None = None,
    starts: Sequence[int] | np.ndarray | None = None,
) -> tuple[Schedule, ...]:
    """The oracle's quality-vs-compute front: the optimal schedule at each price, distinct
    schedules only, cheapest first (each is the best possible loss for its compute)."""
    grid = default_prices(loss, compute) if prices is None else np.asarray(prices, dtype=float)
    found: dict[tuple[int, ...], Schedule] = {}
    for price in sorted(grid, reverse=True):
        schedule = solve(loss, compute, float(price), starts)
        found.setdefault(schedule.retrains, schedule)
    ordered = sorted(found.values(), key=lambda s: (s.compute, s.loss))
    # a schedule that costs more compute must lose less, or it is not on the front
    kept: list[Schedule] = []
    for schedule in ordered:
        if not kept or schedule.loss < kept[-1].loss:
            kept.append(schedule)
    return tuple(kept)


@dataclass(frozen=True)
class Capture:
    """How one policy compares with the oracle.

    ``gain_share``: the policy's improvement over ``never`` as a share of the oracle's best
    improvement (1 = as good as the best schedule in hindsight). ``oracle_compute``: the least
    compute with which the oracle reaches the policy's quality (None: the policy is better than
    every oracle schedule, e.g. thanks to a warm start the oracle does not use), and
    ``compute_share`` the policy's compute over it.
    """

    policy: str
    metric: float
    compute: float
    gain_share: float
    oracle_compute: float | None
    compute_share: float | None


def capture(
    policies: Sequence[tuple[str, float, float]],
    schedules: Sequence[Schedule],
    never: float,
    metric: str,
    rows: int,
    greater_is_better: bool,
) -> tuple[Capture, ...]:
    """Each ``(name, metric value, compute)`` against the oracle front ``schedules``.

    ``never`` is the metric of the first model kept to the end (the zero of the gain); ``rows``
    the rows the losses were summed over.

    >>> L = np.array([[1.0, 5.0, 5.0], [np.nan, 1.0, 1.0], [np.nan, np.nan, 1.0]])
    >>> s = front(L, np.array([1.0, 1.0, 1.0]), prices=[0.0, 100.0])
    >>> [(x.retrains, x.loss) for x in s]
    [((0,), 11.0), ((0, 1), 3.0)]
    >>> c = capture([("p", 5.0 / 3, 3.0)], s, never=11.0 / 3, metric="mae", rows=3,
    ...             greater_is_better=False)
    >>> round(c[0].gain_share, 3), c[0].oracle_compute, c[0].compute_share
    (0.75, 2.0, 1.5)
    """
    if not schedules:
        raise SimulationError("the oracle front is empty: solve at least one price")
    sign = 1.0 if greater_is_better else -1.0
    values = [metric_of_loss(metric, s.loss, rows) for s in schedules]
    best = max(values, key=lambda v: sign * v)
    oracle_gain = sign * (best - never)
    out = []
    for name, value, compute in policies:
        share = sign * (value - never) / oracle_gain if oracle_gain > 0 else math.nan
        reach = [
            s.compute
            for s, v in zip(schedules, values, strict=True)
            if sign * v >= sign * value - 1e-12
        ]
        needed = min(reach) if reach else None
        out.append(
            Capture(
                policy=name,
                metric=value,
                compute=compute,
                gain_share=share,
                oracle_compute=needed,
                compute_share=(compute / needed if needed else None),
            )
        )
    return tuple(out)
