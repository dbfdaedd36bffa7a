"""The hindsight oracle's inputs: the loss matrix of the scratch recipe and each fit's compute.

For every replay step ``i`` (every ``every``-th one; the first always), the model the scratch
recipe would train with the data before partition ``i`` is fitted through the family's own
steps (``family_of(spec)``: ``plan`` in the scheduled mode, ``fit_candidate``) on the spec's own
windows (:func:`retrain.features.plan_windows` at the cutoff), exactly as the simulator's
scheduled policies train, and timed (CPU with ``time.process_time``). It then scores every later
partition ``j >= i`` with :func:`retrain.backtest.score`, the replay's own step metric: the model
never sees ``j`` (prequential). The fit's CPU is the family step's whole cost, reading the
window from the feature cache included; as in the replay, each cached partition is read from
disk once (:func:`retrain.features.in_memory`), so an oracle fit and a policy's fit pay the same
read. Row ``0`` is the first
model kept to the end: the ``never`` policy without a gate. The oracle's compute is fits only;
it needs no gate (it knows the outcome) and no monitor.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from retrain.backtest import score
from retrain.config import ModelSpec
from retrain.errors import SimulationError
from retrain.families import family_of
from retrain.families.spine import Prepared
from retrain.features import MaterializeResult, in_memory, plan_windows
from retrain.ingest import IngestResult
from retrain.oracle import Capture, Schedule, capture, front, metric_of_loss, partition_loss
from retrain.simulate import ReplayData, Simulation, first_step

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LossMatrix:
    """``loss[k, j]``: the additive loss (see :func:`retrain.oracle.partition_loss`) of model
    ``k``, trained before partition ``starts[k]``, on partition ``j`` of the replay (NaN before
    its start); ``rows[j]``: the rows partition ``j`` was scored on; ``cpu_s`` / ``wall_s``: each
    model's fit."""

    metric: str
    greater_is_better: bool
    partitions: tuple[str, ...]
    starts: tuple[int, ...]
    loss: np.ndarray = field(repr=False)
    rows: np.ndarray = field(repr=False)
    cpu_s: np.ndarray = field(repr=False)
    wall_s: np.ndarray = field(repr=False)

    @property
    def total_rows(self) -> int:
        return int(self.rows.sum())

    def metric_of(self, schedule: Schedule) -> float:
        return metric_of_loss(self.metric, schedule.loss, self.total_rows)


ProgressCallback = Callable[[str, int, int], None]


def build_loss_matrix(
    spec: ModelSpec,
    data: ReplayData,
    every: int = 1,
    progress: ProgressCallback | None = None,
    scored_from: pd.Timestamp | None = None,
) -> LossMatrix:
    """Fit the scratch recipe at every ``every``-th step and score it on every later step
    (each cached partition read from disk once, as in the replay). ``scored_from``: the first
    partition scored, if later than the windows allow (the simulation's, e.g. a grid's)."""
    with in_memory():
        return _build_loss_matrix(spec, data, every, progress, scored_from)


def _build_loss_matrix(
    spec: ModelSpec,
    data: ReplayData,
    every: int,
    progress: ProgressCallback | None,
    scored_from: pd.Timestamp | None,
) -> LossMatrix:
    if spec.task not in {"regression", "binary"}:
        raise SimulationError(
            f"the hindsight oracle scores tabular models (task regression or binary), not "
            f"{spec.task!r}: drop --oracle for this spec"
        )
    if every < 1:
        raise SimulationError(f"--oracle-every must be at least 1, got {every}")
    family = family_of(spec)
    t0 = first_step(data, spec, scored_from)
    n = len(data.partitions) - t0
    starts = tuple(range(0, n, every))
    features = list(spec.features.columns)
    loss = np.full((len(starts), n), np.nan)
    rows = np.zeros(n)
    cpu = np.zeros(len(starts))
    wall = np.zeros(len(starts))
    spec_hash = spec.feature_spec_hash()
    for k, s in enumerate(starts):
        history = data.history(t0 + s)
        train, holdout = plan_windows(history.partitions, spec, as_of=history.end)
        prepared = Prepared(
            IngestResult(history.partitions, (), 0, 0),
            MaterializeResult((), (), ()),
            train,
            holdout,
            spec_hash,
        )
        # the family step's whole cost, reading its window from the feature cache included
        wall0, cpu0 = time.perf_counter(), time.process_time()
        plan = family.plan("scheduled", spec, None)
        trained = family.fit_candidate(spec, prepared, plan, None)
        if spec.gate.refit:
            # what production serves: the validated recipe refitted up to the as-of
            trained = family.refit(spec, prepared, trained, None)
        cpu[k] = time.process_time() - cpu0
        wall[k] = time.perf_counter() - wall0
        later = data.rows.iloc[data.offsets[t0 + s] :]
        pred = trained.model.predict(later[features])
        y = later[spec.label].to_numpy(dtype="float64")
        base = data.offsets[t0 + s]
        for j in range(s, n):
            lo, hi = data.offsets[t0 + j] - base, data.offsets[t0 + j + 1] - base
            value = score(spec.metric, y[lo:hi], pred[lo:hi]) if hi > lo else float("nan")
            if k == 0:
                # a partition the metric cannot score (no row; AUC of one class: it depends on
                # the labels only) counts for no model
                rows[j] = hi - lo if np.isfinite(value) else 0
            ok = rows[j] > 0 and np.isfinite(value)
            loss[k, j] = partition_loss(spec.metric, value, hi - lo) if ok else 0.0
        if progress is not None:
            progress("oracle", k + 1, len(starts))
    keys = tuple(p.key for p in data.partitions[t0:])
    return LossMatrix(spec.metric, spec.greater_is_better, keys, starts, loss, rows, cpu, wall)


@dataclass(frozen=True)
class OracleResult:
    """The oracle front and every policy's standing against it."""

    matrix: LossMatrix = field(repr=False)
    schedules: tuple[Schedule, ...]
    never: float  # the first model kept to the end (ungated)
    best: float  # the best schedule in hindsight
    captures: tuple[Capture, ...]

    def front_rows(self) -> list[dict[str, float | int | str]]:
        return [
            {
                "price_per_cpu_s": s.price,
                "retrains": len(s.retrains) - 1,
                self.matrix.metric: self.matrix.metric_of(s),
                "fit_cpu_s": s.compute,
                "retrain_steps": " ".join(self.matrix.partitions[i] for i in s.steps[1:]),
            }
            for s in self.schedules
        ]

    def capture_rows(self) -> list[dict[str, float | str | None]]:
        return [
            {
                "policy": c.policy,
                self.matrix.metric: c.metric,
                "total_cpu_s": c.compute,
                "share_of_oracle_gain": c.gain_share,
                "oracle_cpu_s_at_equal_quality": c.oracle_compute,
                "compute_share_of_oracle": c.compute_share,
            }
            for c in self.captures
        ]


def oracle_of(matrix: LossMatrix, simulation: Simulation | None = None) -> OracleResult:
    """Solve the front of ``matrix`` and measure the simulation's policies against it."""
    schedules = front(matrix.loss, matrix.cpu_s, starts=matrix.starts)
    rows = matrix.total_rows
    # the first model kept to the end (the top price's schedule, solved or not)
    never = metric_of_loss(matrix.metric, float(matrix.loss[0].sum()), rows)
    best = metric_of_loss(matrix.metric, schedules[-1].loss, rows)
    policies = (
        [(run.label, run.overall, run.total_cpu_s) for run in simulation.runs]
        if simulation is not None
        else []
    )
    captures = capture(policies, schedules, never, matrix.metric, rows, matrix.greater_is_better)
    return OracleResult(matrix, schedules, never, best, captures)
