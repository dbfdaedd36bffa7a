"""The replay: every policy's decisions carried out through production's own steps.

The history is replayed partition by partition. At step ``t`` every policy's current champion
first scores partition ``t`` (prequential: the partition is unseen; the family's ``score``),
then partition ``t`` joins the history and the policy decides, with the data before the end of
partition ``t`` only, whether to retrain. A retrain is a flow's retrain, in-process: the windows
of :func:`retrain.features.plan_windows`, the family's ``plan``, ``fit_candidate`` (with its
``stateful.compare_with_scratch`` fallback and the straddling-partition rule of
:func:`retrain.families.spine.increment_window`) and ``evaluate`` (the backtest gate), and
:func:`retrain.promotion.decide`. Promotions are approved automatically (there is no operator in
a replay) and nothing is registered. A candidate that lost to the trivial baseline is followed
by a fresh baseline as the next version when :func:`retrain.promotion.baseline_promotion` says
so (``gate.promote_baseline``: the flow's own decision, on the family's ``baseline_verdict``).
When no first model passes and the baseline is not promoted, the family's trivial baseline
serves (version 0) until a model does.

A refused or failed step (a ``RetrainError`` of the family's steps, e.g. a warm increment that
adds no trees without ``compare_with_scratch``) is recorded as production records it: the
champion keeps serving, and the next retrain's increment covers the rows. Any other error stops
the replay of that policy with a ``SimulationError`` naming the policy, the step and the as-of;
every finished policy is already on disk (``checkpoints``) and a rerun with ``resume`` continues
from them.

Compute accounting: every fit and every gate is timed (wall clock with ``time.perf_counter``,
CPU with ``time.process_time``), and so is every decision (the continual policy's drift tests);
the per-training figures add up to each policy's totals.
"""

from __future__ import annotations

import hashlib
import logging
import math
import multiprocessing
import pickle
import re
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retrain.config import ModelSpec
from retrain.errors import (
    BacktestError,
    EmptyWindowError,
    LookAheadError,
    RetrainError,
    SimulationError,
)
from retrain.families import family_of
from retrain.families.baseline import fresh_baseline
from retrain.families.spine import Prepared, Scored, Trained, align_to_champion
from retrain.features import MaterializeResult, Window, in_memory, plan_windows
from retrain.freshness import last_row
from retrain.ingest import TS, IngestResult
from retrain.promotion import BaselinePromotion, automatic_approval, baseline_promotion, decide
from retrain.simulate.history import History, ReplayData, first_step, load_replay
from retrain.simulate.policies import (
    Decision,
    DecisionMode,
    Periodic,
    Policy,
    PolicyState,
    SimChampion,
)
from retrain.stateful import TrainingPlan, skip_reason

logger = logging.getLogger(__name__)

SIMULATOR = "simulator"
# a TrainingRecord's strategy when no model came out of the step
NOT_TRAINED = ("skipped", "failed")


def metric_name(spec: ModelSpec) -> str:
    """The replay's metric, as the family names it (``rmse``, ``ndcg@10``)."""
    return family_of(spec).metric_name(spec)


@dataclass(frozen=True)
class TrainingRecord:
    """One training (or a skipped one) and what it cost."""

    policy: str
    at: pd.Timestamp  # the data cutoff when the policy decided
    strategy: str  # scratch | warm | refit | foldin | baseline, or skipped | failed
    reason: str
    data_start: pd.Timestamp | None
    data_end: pd.Timestamp | None
    rows: int
    fit_wall_s: float
    fit_cpu_s: float
    gate_wall_s: float
    gate_cpu_s: float
    gate_passed: bool
    promoted: bool
    verdict: str
    version: int | None

    @property
    def wall_s(self) -> float:
        return self.fit_wall_s + self.gate_wall_s

    @property
    def cpu_s(self) -> float:
        return self.fit_cpu_s + self.gate_cpu_s


@dataclass(frozen=True)
class StepRecord:
    """One prequential step: the champion scored on a partition it never saw."""

    policy: str
    partition: str
    start: pd.Timestamp
    rows: int
    metric: float
    champion_version: int
    decision: str
    # what the policy's decision cost (the continual policy measures signals at every step)
    decide_wall_s: float = 0.0
    decide_cpu_s: float = 0.0


@dataclass(frozen=True)
class PolicyRun:
    policy: str
    metric: str
    overall: float  # the metric over every scored row
    mean_step: float  # mean of the per-partition metrics
    steps: tuple[StepRecord, ...]
    trainings: tuple[TrainingRecord, ...]
    wall_s: float  # the whole replay of this policy (scoring and deciding included)
    # the grid point this run replayed (spec keys set on top of the spec), empty without a grid
    point: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        """The policy, with its grid point when there is one: ``weekly [windows.train=60D]``."""
        if not self.point:
            return self.policy
        return f"{self.policy} [{', '.join(f'{k}={v}' for k, v in self.point)}]"

    @property
    def fits(self) -> tuple[TrainingRecord, ...]:
        return tuple(t for t in self.trainings if t.strategy not in NOT_TRAINED)

    @property
    def retrains(self) -> int:
        """Trainings after the first model."""
        return max(len(self.fits) - 1, 0)

    @property
    def promotions(self) -> int:
        """Promotions after the first model."""
        return sum(t.promoted for t in self.fits[1:])

    @property
    def train_wall_s(self) -> float:
        return math.fsum(t.wall_s for t in self.trainings)

    @property
    def train_cpu_s(self) -> float:
        return math.fsum(t.cpu_s for t in self.trainings)

    @property
    def decide_cpu_s(self) -> float:
        return math.fsum(s.decide_cpu_s for s in self.steps)

    @property
    def decide_wall_s(self) -> float:
        return math.fsum(s.decide_wall_s for s in self.steps)

    @property
    def gates(self) -> int:
        """Backtests run (a refitted baseline has none)."""
        return sum(t.strategy != "baseline" for t in self.fits)

    @property
    def failed(self) -> int:
        """Retrains refused or failed (recorded; the champion kept serving)."""
        return sum(t.strategy == "failed" for t in self.trainings)

    @property
    def total_wall_s(self) -> float:
        return self.train_wall_s + self.decide_wall_s

    @property
    def total_cpu_s(self) -> float:
        """What the policy costs: training and gating, plus its own decisions (monitoring)."""
        return self.train_cpu_s + self.decide_cpu_s

    def summary(self) -> dict[str, Any]:
        """One row of the report: quality, and what every decision of the policy cost (fits,
        including compare_with_scratch's rival fits, gates, the continual policy's signal
        tests), wall clock and CPU."""
        return {
            "policy": self.label,
            self.metric: self.overall,
            f"mean_step_{self.metric}": self.mean_step,
            "retrains": self.retrains,
            "promotions": self.promotions,
            "failed": self.failed,
            "gates": self.gates,
            "train_wall_s": self.train_wall_s,
            "train_cpu_s": self.train_cpu_s,
            "decide_wall_s": self.decide_wall_s,
            "decide_cpu_s": self.decide_cpu_s,
            "total_wall_s": self.total_wall_s,
            "total_cpu_s": self.total_cpu_s,
        }


@dataclass(frozen=True)
class Simulation:
    spec_name: str
    metric: str
    greater_is_better: bool
    first_step: str
    last_step: str
    partitions: int
    features_computed: int
    features_cached: int
    runs: tuple[PolicyRun, ...]
    notes: tuple[str, ...] = ()

    def table(self) -> list[dict[str, Any]]:
        return [run.summary() for run in self.runs]

    def steps_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {
                    "policy": run.label,
                    "partition": s.partition,
                    "start": s.start,
                    "rows": s.rows,
                    self.metric: s.metric,
                    "champion_version": s.champion_version,
                    "decision": s.decision,
                }
                for run in self.runs
                for s in run.steps
            ]
        )

    def trainings_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {
                    "policy": run.label,
                    "at": t.at,
                    "strategy": t.strategy,
                    "reason": t.reason,
                    "data_start": t.data_start,
                    "data_end": t.data_end,
                    "rows": t.rows,
                    "fit_wall_s": t.fit_wall_s,
                    "fit_cpu_s": t.fit_cpu_s,
                    "gate_wall_s": t.gate_wall_s,
                    "gate_cpu_s": t.gate_cpu_s,
                    "gate_passed": t.gate_passed,
                    "promoted": t.promoted,
                    "verdict": t.verdict,
                    "version": t.version,
                }
                for run in self.runs
                for t in run.trainings
            ]
        )


class _Timer:
    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __enter__(self) -> _Timer:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu

    def add(self, other: _Timer) -> _Timer:
        """This timer with ``other``'s time added (the served refit counts as fit time)."""
        self.wall += other.wall
        self.cpu += other.cpu
        return self


@contextmanager
def _step(
    policy: str,
    step: str,
    at: pd.Timestamp,
    expected: tuple[type[Exception], ...] = (SimulationError, LookAheadError),
) -> Iterator[None]:
    """Names the policy, the step and the as-of of an unexpected error (not ``expected``)."""
    try:
        yield
    except expected:
        raise
    except Exception as exc:
        raise SimulationError(
            f"policy {policy}: the {step} step at as-of {at} failed "
            f"({type(exc).__name__}: {exc}); the policies already replayed are kept, rerun "
            "with --resume to continue from them"
        ) from exc


class _Replayer:
    """Carries out one policy's decisions (train, gate, promote) on what a History shows,
    through the family's steps (``family_of(spec)``), as a flow run does."""

    def __init__(self, spec: ModelSpec, policy: Policy) -> None:
        self.spec = spec
        self.family = family_of(spec)
        self.policy = policy
        self.champion: SimChampion | None = None
        self.state = PolicyState(None, None)
        self.trainings: list[TrainingRecord] = []
        self.versions = 0

    def _not_trained(self, at: pd.Timestamp, status: str, reason: str) -> None:
        """A step that produced no model: the champion keeps serving (as the ledger says)."""
        self.trainings.append(
            TrainingRecord(
                self.policy.name, at, status, reason, None, None, 0,
                0.0, 0.0, 0.0, 0.0, False, False, reason, None,
            )
        )  # fmt: skip

    def decide(self, history: History) -> Decision:
        """The policy's decision at this step: it sees ``history`` and its own state only."""
        with _step(self.policy.name, "decide", history.end):
            return self.policy.decide(history, self.state)

    def carry_out(self, history: History, decision: Decision) -> str:
        """Train, gate and promote as ``decision`` says; returns what happened in a word."""
        if decision.mode == "continual":
            self.state = PolicyState(
                self.state.champion,
                self.state.last_trained_at,
                (*self.state.fired_history, frozenset(decision.fired)),
                self.state.last_triggered_at,
            )
        if not decision.train:
            return "keep"
        if decision.mode == "continual":
            self.state = PolicyState(
                self.state.champion,
                self.state.last_trained_at,
                self.state.fired_history,
                history.end,
            )
        self.train(history, decision)
        last = self.trainings[-1]
        if last.strategy in NOT_TRAINED:
            return last.strategy
        return f"{last.strategy}, {'promoted' if last.promoted else 'rejected'}"

    def train(self, history: History, decision: Decision) -> None:
        """One retrain through the family's steps, on the windows of the visible partitions
        (read from the feature cache, as a flow's retrain does). A ``RetrainError`` of a step
        is recorded as failed, as the ledger records a failed run; the champion keeps serving
        and the next retrain's increment covers the rows."""
        spec, family, at, name = self.spec, self.family, history.end, self.policy.name
        self.state = PolicyState(
            self.state.champion, at, self.state.fired_history, self.state.last_triggered_at
        )
        try:
            train, holdout = plan_windows(history.partitions, spec, as_of=at)
        except EmptyWindowError as exc:
            self._not_trained(at, "skipped", str(exc))
            return
        champion = self.champion.as_champion() if self.champion else None
        prepared = Prepared(
            IngestResult(history.partitions, (), 0, 0),
            MaterializeResult((), (), ()),
            train,
            holdout,
            spec.feature_spec_hash(),
        )
        step = "plan"
        try:
            with _step(name, step, at, (RetrainError,)):
                if decision.mode == "baseline":
                    plan = TrainingPlan("baseline", decision.reason, None, 0)
                else:
                    plan = family.plan(decision.mode, spec, champion)
                    prepared = align_to_champion(prepared, decision.mode, champion, spec.gate.refit)
                    holdout = prepared.holdout
                    skip = skip_reason(
                        decision.mode,
                        champion.state() if champion else None,
                        self.champion.data_version if self.champion else None,
                        train.version,
                        holdout.start,
                        len(holdout.partitions),
                        refit=spec.gate.refit,
                    )
                    if skip is not None:
                        self._not_trained(at, "skipped", skip)
                        return
            model: Any
            step = "fit"
            with _step(name, step, at, (RetrainError,)), _Timer() as fit_time:
                if plan.strategy == "baseline":
                    # the baseline policy: the same fresh baseline a promotion registers
                    fresh = fresh_baseline(spec, family, prepared, decision.reason)
                    window, rows, model = fresh.window, fresh.rows, fresh.model
                    data_versions: tuple[str, ...] = fresh.data_versions
                    data_end = fresh.data_end
                else:
                    trained = family.fit_candidate(spec, prepared, plan, champion)
                    plan, window, rows, model = (
                        trained.plan,
                        trained.window,
                        trained.rows,
                        trained.model,
                    )
                    data_versions, data_end = trained.data_versions, trained.data_end
            validated: Trained | None = None
            step = "gate"
            choice: BaselinePromotion | None = None
            with _step(name, step, at, (RetrainError,)), _Timer() as gate_time:
                if plan.strategy == "baseline":
                    passed, verdict, value = True, "the baseline is refitted without a gate", None
                else:
                    try:
                        evaluated = family.evaluate(spec, trained, holdout, champion)
                    except BacktestError as exc:  # a refitted champion past the whole holdout
                        self._not_trained(at, "skipped", str(exc))
                        return
                    result = evaluated.result
                    passed, verdict = result.passed, "; ".join(result.reasons)
                    value = result.candidate
                    # the baseline is a model: the flow's decision, through the same function
                    choice = baseline_promotion(
                        spec.gate.promote_baseline,
                        result,
                        evaluated.baseline_result,
                        evaluated.baseline_refresh,
                    )
            if choice is not None and choice.promote and evaluated.baseline_result is not None:
                # the refused candidate is a version of its own, as the flow registers it;
                # the fresh baseline is the next one, promoted
                step = "baseline"
                with _step(name, step, at, (RetrainError,)), _Timer() as baseline_time:
                    fresh = fresh_baseline(spec, family, prepared, choice.reason)
                self._record(
                    history, decision, plan, model, window, data_versions, data_end, rows,
                    fit_time, gate_time, False, verdict, value,
                )  # fmt: skip
                plan = fresh.plan
                window, rows, model = fresh.window, fresh.rows, fresh.model
                data_versions, data_end = fresh.data_versions, fresh.data_end
                passed, verdict = True, choice.reason
                value = evaluated.baseline_result.candidate
                fit_time, gate_time = baseline_time, _Timer()
            if passed and spec.gate.refit and plan.strategy != "baseline":
                # learn up to now: the validated recipe fitted again through the holdout, as
                # the flow registers it (its time counts as fit time)
                step = "refit"
                with _step(name, step, at, (RetrainError,)), _Timer() as refit_time:
                    validated = trained
                    trained = family.refit(spec, prepared, trained, champion)
                    window, rows, model = trained.window, trained.rows, trained.model
                    data_versions, data_end = trained.data_versions, trained.data_end
                fit_time.add(refit_time)
        except RetrainError as exc:
            if isinstance(exc, SimulationError | LookAheadError):
                raise
            logger.info("policy %s: %s at %s failed: %s", name, step, at, exc)
            self._not_trained(at, "failed", f"{step} failed: {exc}")
            return
        self._record(
            history, decision, plan, model, window, data_versions, data_end, rows, fit_time,
            gate_time, passed, verdict, value, validated,
        )  # fmt: skip

    def _record(
        self,
        history: History,
        decision: Decision,
        plan: TrainingPlan,
        model: Any,
        window: Window,
        data_versions: tuple[str, ...],
        data_end: pd.Timestamp | None,
        rows: int,
        fit_time: _Timer,
        gate_time: _Timer,
        passed: bool,
        verdict: str,
        cand_metric: float | None,
        validated: Trained | None = None,
    ) -> None:
        """Promote as the promotion policy decides (approved automatically) and record.
        ``validated``: the fit the gate judged when ``model`` is its refit (gate.refit)."""
        at = history.end
        self.versions += 1
        version = self.versions
        promotion = decide(
            version=str(version),
            gate_passed=passed,
            gate_reasons=(verdict,),
            approval=automatic_approval(SIMULATOR) if passed else None,
        )
        if promotion.promote:
            continued = plan.strategy in {"warm", "refit", "foldin"} and self.champion
            self.champion = SimChampion(
                version=version,
                model=model,
                strategy=plan.strategy,
                # a fold-in's window is already its lineage's whole history
                train_start=(
                    self.champion.train_start if continued and self.champion else window.start
                ),
                train_end=window.end,
                data_version=window.version,  # as the registry tags it
                backtest_metric=cand_metric,
                increments=plan.increments,
                data_versions=data_versions,
                data_end=data_end,
                validated=validated.model if validated is not None else None,
                validated_end=validated.window.end if validated is not None else None,
            )
            # a new champion starts a new debounce history
            self.state = PolicyState(self.champion, at, (), self.state.last_triggered_at)
        self.trainings.append(
            TrainingRecord(
                policy=self.policy.name,
                at=at,
                strategy=plan.strategy,
                reason=(
                    f"{decision.reason} -> {plan.reason}"
                    if decision.mode == "continual"
                    else plan.reason
                ),
                data_start=window.start,
                data_end=window.end,
                rows=rows,
                fit_wall_s=fit_time.wall,
                fit_cpu_s=fit_time.cpu,
                gate_wall_s=gate_time.wall,
                gate_cpu_s=gate_time.cpu,
                gate_passed=passed,
                promoted=promotion.promote,
                verdict=promotion.reason,
                version=version,
            )
        )

    def serve_baseline(self, history: History) -> None:
        """No model passed the gate yet: the trivial baseline serves (version 0) until one does,
        as a backtest would tell the user. Its fit is not a training of the policy's."""
        spec = self.spec
        try:
            train, _ = plan_windows(history.partitions, spec, as_of=history.end)
        except EmptyWindowError as exc:
            raise SimulationError(
                f"policy {self.policy.name}: no first model and no window for the baseline "
                f"({exc}); lengthen windows.train or start later"
            ) from None
        with _step(self.policy.name, "baseline", history.end):
            frame = history.frame(train.start, train.end)
            model = self.family.baseline(spec, frame)
        self.champion = SimChampion(
            0,
            model,
            "baseline",
            train.start,
            train.end,
            train.version,
            None,
            data_end=last_row(frame[TS]),
        )
        self.state = PolicyState(self.champion, self.state.last_trained_at)


ProgressCallback = Callable[[str, int, int], None]


def replay_policy(
    spec: ModelSpec,
    policy: Policy,
    data: ReplayData,
    progress: ProgressCallback | None = None,
    scored_from: pd.Timestamp | None = None,
) -> PolicyRun:
    """Replay the history for one policy: score, then decide, partition by partition (from
    ``scored_from`` on, if later than the windows allow). The family steps read the feature
    cache as a flow does, each partition from disk once."""
    with in_memory():
        return _replay_policy(spec, policy, data, progress, scored_from)


def _replay_policy(
    spec: ModelSpec,
    policy: Policy,
    data: ReplayData,
    progress: ProgressCallback | None,
    scored_from: pd.Timestamp | None,
) -> PolicyRun:
    started = time.perf_counter()
    t0 = first_step(data, spec, scored_from)
    family = family_of(spec)
    replayer = _Replayer(spec, policy)
    first_mode: DecisionMode = (
        "baseline" if isinstance(policy, Periodic) and policy.mode == "baseline" else "scheduled"
    )
    replayer.train(data.history(t0), Decision(True, "first model", first_mode))
    if replayer.champion is None:
        replayer.serve_baseline(data.history(t0))
    steps: list[StepRecord] = []
    scored: list[Scored] = []
    total = len(data.partitions) - t0
    for t in range(t0, len(data.partitions)):
        champion = replayer.champion
        assert champion is not None
        part = data.partitions[t]
        with _step(policy.name, "score", part.start):
            result = family.score(spec, champion.model, data.features(t), data.before(t))
        scored.append(result)
        # the partition is scored; only now may the policy see it
        history = data.history(t + 1)
        with _Timer() as decide_time:
            decision = replayer.decide(history)
        decision_text = replayer.carry_out(history, decision)
        steps.append(
            StepRecord(
                policy.name,
                part.key,
                part.start,
                result.rows,
                result.value,
                champion.version,
                decision_text,
                decide_time.wall,
                decide_time.cpu,
            )
        )
        if progress is not None:
            progress(policy.name, t - t0 + 1, total)
    step_metrics = np.array([s.metric for s in steps])
    return PolicyRun(
        policy=policy.name,
        metric=metric_name(spec),
        overall=family.pooled(spec, scored),
        mean_step=float(np.nanmean(step_metrics)) if step_metrics.size else math.nan,
        steps=tuple(steps),
        trainings=tuple(replayer.trainings),
        wall_s=time.perf_counter() - started,
    )


# -- results on disk, so an interrupted simulation resumes -----------------------------------


def replay_key(
    spec: ModelSpec, policy: Policy, data: ReplayData, scored_from: pd.Timestamp | None = None
) -> str:
    """What a policy's replay depends on: the spec, the policy and the partitions replayed."""
    digest = hashlib.sha256()
    digest.update(spec.model_dump_json().encode())
    digest.update(repr(policy).encode())
    for part in data.partitions:
        digest.update(f"{part.key}:{part.fingerprint}".encode())
    if scored_from is not None:
        digest.update(f"scored from {scored_from.isoformat()}".encode())
    return digest.hexdigest()[:24]


@dataclass(frozen=True)
class Checkpoints:
    """Finished policy runs under ``directory``, one file per policy, keyed by
    :func:`replay_key`: a run of another spec, policy or history is never reused."""

    directory: Path

    def _path(self, policy: str) -> Path:
        return self.directory / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', policy)}.pkl"

    def load(self, policy: str, key: str) -> PolicyRun | None:
        path = self._path(policy)
        if not path.exists():
            return None
        try:
            stored_key, run = pickle.loads(path.read_bytes())
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as exc:
            logger.warning("ignoring the unreadable stored run %s (%s)", path, exc)
            return None
        return run if stored_key == key and isinstance(run, PolicyRun) else None

    def save(self, key: str, run: PolicyRun) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._path(run.policy)
        partial = path.with_suffix(".tmp")
        partial.write_bytes(pickle.dumps((key, run)))
        partial.replace(path)


def simulate(
    spec: ModelSpec,
    policies: Sequence[Policy],
    data: ReplayData | None = None,
    progress: ProgressCallback | None = None,
    notes: Sequence[str] = (),
    jobs: int = 1,
    checkpoints: Path | None = None,
    resume: bool = False,
    scored_from: pd.Timestamp | None = None,
) -> Simulation:
    """Replay the history for every policy (scored from ``scored_from`` on, if later than the
    windows allow: how a grid scores all its points on the same partitions). With ``jobs`` > 1
    the policies run in that many
    worker processes; a process's CPU clock counts its own work only, so the accounting of one
    policy never includes another's either way.

    With ``checkpoints`` every finished policy run is written there at once; with ``resume``
    the runs found there (for the same spec, policy and history) are reused, not replayed. When
    a policy fails, the others still finish and are kept before the error is raised.
    """
    if not policies:
        raise SimulationError("no policy to simulate: pass at least one")
    if jobs < 1:
        raise SimulationError(f"jobs must be at least 1, got {jobs}")
    data = data if data is not None else load_replay(spec)
    t0 = first_step(data, spec, scored_from)
    total = len(data.partitions) - t0
    store = Checkpoints(checkpoints) if checkpoints is not None else None
    keys = {p.name: replay_key(spec, p, data, scored_from) for p in policies}
    done: dict[str, PolicyRun] = {}
    if store is not None and resume:
        for p in policies:
            run = store.load(p.name, keys[p.name])
            if run is not None:
                done[p.name] = run
                logger.info("policy %s: reusing its stored replay", p.name)
                if progress is not None:
                    progress(p.name, total, total)
    todo = [p for p in policies if p.name not in done]
    failures: list[SimulationError] = []

    def finished(run: PolicyRun) -> None:
        done[run.policy] = run
        if store is not None:
            store.save(keys[run.policy], run)

    if jobs == 1 or len(todo) <= 1:
        for p in todo:
            try:
                finished(replay_policy(spec, p, data, progress, scored_from))
            except SimulationError as exc:
                failures.append(exc)
    else:
        # spawn, not fork: a forked child of a process that already ran LightGBM's OpenMP
        # threads can hang on a lock it inherited
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(jobs, len(todo)), mp_context=context) as pool:
            futures = {
                pool.submit(replay_policy, spec, p, data, None, scored_from): p.name for p in todo
            }
            for future in as_completed(futures):
                try:
                    finished(future.result())
                except SimulationError as exc:
                    failures.append(exc)
                if progress is not None:
                    progress(futures[future], total, total)
    if failures:
        kept = f"; {len(done)} finished policies kept in {store.directory}" if store else ""
        raise SimulationError("; ".join(str(f) for f in failures) + kept) from failures[0]
    return Simulation(
        spec_name=spec.name,
        metric=metric_name(spec),
        greater_is_better=spec.greater_is_better,
        first_step=data.partitions[t0].key,
        last_step=data.partitions[-1].key,
        partitions=total,
        features_computed=data.computed,
        features_cached=data.cached,
        runs=tuple(done[p.name] for p in policies),
        notes=tuple(notes),
    )
