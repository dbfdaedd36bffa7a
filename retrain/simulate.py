"""Retraining-policy simulator: "how often should we retrain?", answered from the user's history.

The history is replayed partition by partition. At step ``t`` every policy's current champion
first scores partition ``t`` (prequential: the partition is unseen), then partition ``t`` joins
the history and the policy decides, with the data before the end of partition ``t`` only, whether
to retrain. A retrain runs the real decision code: the training and holdout windows of
:func:`retrain.features.plan_windows`, the stateful planner
:func:`retrain.stateful.plan_training` (scratch, warm start or refit), the trainer of
:func:`retrain.families.lightgbm.make_trainer`, the backtest gate
:func:`retrain.backtest.backtest` and :func:`retrain.promotion.decide`; the continual policy
measures the signals with :func:`retrain.monitor.compute_signals` and asks
:func:`retrain.triggers.decide_trigger`. Promotions are approved automatically (there is no
operator in a replay) and nothing is registered: a simulation runs in-process.

The spec's family decides what a retrain is. The recommendation family (implicit ALS) runs its
own steps of :func:`retrain.families.family_of`: ``plan`` (recompute, or fold-in into the
champion by the stateful planner), ``fit_candidate`` and ``evaluate`` (the ranking backtest
through the same gate, against the champion and the popularity baseline), on the windows of the
visible partitions, read from the feature cache. A step scores the champion's top k for the
users active in the partition, on the items they had not rated before it; its continual policy
has the monitor's age and volume signals (its columns are ids: no drift or quality). When no
first model passes the gate, the family's trivial baseline serves (version 0) until one does.

No look-ahead by construction: a policy and a trainer only ever hold a :class:`History`, which
holds the partitions before the cutoff and nothing else, and raises :class:`LookAheadError` when
asked for more. Features come from the same feature cache as every retrain, so a second
simulation recomputes no feature.

Compute accounting: every fit and every gate is timed (wall clock with ``time.perf_counter``,
CPU with ``time.process_time``); the per-training figures add up to each policy's totals.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

from retrain.backtest import backtest, score
from retrain.config import ModelSpec
from retrain.errors import BacktestError, EmptyWindowError, LookAheadError, SimulationError
from retrain.families import family_of
from retrain.families.als import interactions
from retrain.families.baseline import BaselineModel
from retrain.families.lightgbm import make_trainer
from retrain.families.lineage import Tag
from retrain.families.spine import Champion, Prepared, judged_holdout, split_windows
from retrain.features import (
    PARTITION,
    FeatureCache,
    MaterializeResult,
    Window,
    make_window,
    plan_windows,
)
from retrain.ingest import TS, IngestResult, Partition, ingest
from retrain.monitor import compute_signals, drift_reference
from retrain.promotion import automatic_approval, decide
from retrain.ranking import evaluate_ranking, relevant_items
from retrain.stateful import ChampionState, TrainingPlan, plan_training, skip_reason
from retrain.trainers.popularity import PopularityRecommender
from retrain.triggers import decide_trigger

logger = logging.getLogger(__name__)

SIMULATOR = "simulator"
DAY = pd.Timedelta(days=1)


# -- the data a policy may see ---------------------------------------------------------------


@dataclass(frozen=True)
class History:
    """The partitions before a cutoff (and their cached features): all a policy may see.

    The replay loop builds one per step from the partitions already scored; the later ones are
    never handed over, so no policy can read them. Asking for a partition or a time range past
    the cutoff raises :class:`LookAheadError`. ``_rows`` holds the features of the visible
    partitions only, in order; ``_offsets[i]`` is the first row of partition ``i``.
    """

    partitions: tuple[Partition, ...]
    _rows: pd.DataFrame = field(repr=False)
    _offsets: tuple[int, ...] = field(repr=False)

    def __post_init__(self) -> None:
        if not self.partitions:
            raise SimulationError("a History needs at least one partition")
        if len(self._offsets) != len(self.partitions) + 1 or self._offsets[-1] != len(self._rows):
            raise SimulationError("a History needs the row offsets of each of its partitions")

    def __len__(self) -> int:
        return len(self.partitions)

    @property
    def start(self) -> pd.Timestamp:
        return self.partitions[0].start

    @property
    def end(self) -> pd.Timestamp:
        """The cutoff: the end of the newest visible partition."""
        return self.partitions[-1].end

    def partition(self, index: int) -> Partition:
        """The ``index``-th partition of the replay (0 = the oldest)."""
        if index >= len(self.partitions):
            raise LookAheadError(
                f"partition {index} is not visible at this step: the history holds partitions "
                f"0 to {len(self.partitions) - 1} (up to {self.end}); a policy decides with the "
                "data before the cutoff only"
            )
        return self.partitions[index]

    def frame(self, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        """Features and labels of the visible partitions inside ``[start, end)``."""
        if end > self.end:
            raise LookAheadError(
                f"rows up to {end} asked for, but the history ends at {self.end}: a policy "
                "decides with the data before the cutoff only"
            )
        inside = [i for i, p in enumerate(self.partitions) if p.start >= start and p.end <= end]
        if not inside:
            raise EmptyWindowError(f"no visible partition inside [{start}, {end})")
        first, last = inside[0], inside[-1]
        if last - first + 1 != len(inside):
            raise SimulationError("partitions of a History must be in time order")
        return self._rows.iloc[self._offsets[first] : self._offsets[last + 1]]


# -- models, policies and their decisions ----------------------------------------------------


class Predictor(Protocol):
    def predict(self, X: pd.DataFrame) -> np.ndarray: ...


@dataclass(frozen=True)
class SimChampion:
    """A policy's model in production during the replay."""

    version: int
    model: Any = field(repr=False)
    strategy: str
    train_start: pd.Timestamp
    train_end: pd.Timestamp
    data_version: str
    backtest_metric: float | None
    increments: int = 0
    # the last training row's timestamp: data age = as-of minus it (None: unknown)
    data_end: pd.Timestamp | None = None


@dataclass(frozen=True)
class PolicyState:
    """What a policy knows besides the history: its champion and its own past decisions."""

    champion: SimChampion | None
    last_trained_at: pd.Timestamp | None
    # names of the signals fired in the earlier checks of the current champion, oldest first
    fired_history: tuple[frozenset[str], ...] = ()
    last_triggered_at: pd.Timestamp | None = None


@dataclass(frozen=True)
class Decision:
    """A policy's answer at one step. ``mode`` is scheduled (scratch), stateful or continual
    (both planned by :func:`retrain.stateful.plan_training`), or baseline."""

    train: bool
    reason: str
    mode: str = "scheduled"
    fired: tuple[str, ...] = ()


class Policy(Protocol):
    @property
    def name(self) -> str: ...

    def decide(self, history: History, state: PolicyState) -> Decision: ...


@dataclass(frozen=True)
class Never:
    """Train once on the initial window, never again."""

    name: str = "never"

    def decide(self, history: History, state: PolicyState) -> Decision:
        return Decision(False, "never retrains after the first model")


@dataclass(frozen=True)
class Periodic:
    """Retrain every ``every`` of data time: from scratch on the sliding window (``scheduled``),
    or from the champion through the stateful planner (``stateful``); ``baseline`` refits the
    trivial model."""

    name: str
    every: pd.Timedelta
    mode: str = "scheduled"

    def decide(self, history: History, state: PolicyState) -> Decision:
        last = state.last_trained_at
        if last is None or history.end - last >= self.every:
            return Decision(True, f"{self.every} since the last retrain", self.mode)
        return Decision(False, f"next retrain due at {last + self.every}", self.mode)


@dataclass(frozen=True)
class Continual:
    """The continual mode: the monitor's signals and the real trigger policy decide.

    A check is cheap: the champion's reference window is summarised once per champion
    (:func:`retrain.monitor.drift_reference`: sampled values, category counts, its scores) and
    the champion scores each fresh partition once; both are kept in ``_cache``.
    """

    spec: ModelSpec = field(repr=False)
    name: str = "continual"
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def decide(self, history: History, state: PolicyState) -> Decision:
        champion = state.champion
        if champion is None:
            return Decision(True, "no champion", "continual")
        spec, config = self.spec, self.spec.monitor
        # the recommendation family's columns are ids: its signals are age and volume (as in
        # the monitor's check, ``retrain.monitor_check.monitor_check``)
        scored = spec.family == "lightgbm"
        features = list(spec.features.columns) if scored else []
        numeric = [c for c in features if c not in spec.features.categorical]
        categorical = [c for c in spec.features.categorical if c in features]
        if self._cache.get("version") != champion.version:
            self._cache.clear()
            self._cache["version"] = champion.version
            self._cache["reference"] = drift_reference(
                history.frame(champion.train_start, champion.train_end),
                numeric,
                categorical,
                max_rows=config.max_sample_rows,
                score=(lambda rows: champion.model.predict(rows[features])) if scored else None,
                seed=spec.seed,
            )
            self._cache["fresh_scores"] = np.empty(0)
        reference = self._cache["reference"]
        fresh_start = champion.train_end
        if fresh_start >= history.end:
            fresh = history.frame(champion.train_start, champion.train_end).iloc[0:0]
        else:
            fresh = history.frame(fresh_start, history.end)
        fresh_scores = None
        if scored and len(fresh):
            done: np.ndarray = self._cache["fresh_scores"]
            new = champion.model.predict(fresh[features].iloc[done.size :])
            fresh_scores = self._cache["fresh_scores"] = np.concatenate([done, new])
        ripe = history.end - pd.Timedelta(config.label_delay)
        ripe_keys = {p.key for p in history.partitions if p.start >= fresh_start and p.end <= ripe}
        labelled = None
        if fresh_scores is not None:
            mask = fresh[PARTITION].isin(ripe_keys).to_numpy()
            labelled = (fresh[spec.label].to_numpy(dtype="float64")[mask], fresh_scores[mask])
        signals = compute_signals(
            config=config,
            numeric=numeric,
            categorical=categorical,
            reference=reference,
            fresh=fresh,
            champion_train_end=champion.train_end,
            now=history.end,
            partition_rows={},
            fresh_scores=fresh_scores,
            labelled=labelled,
            metric=spec.metric,
            backtest_metric=champion.backtest_metric,
            greater_is_better=spec.greater_is_better,
            data_end=champion.data_end,
            seed=spec.seed,
        )
        previous = (
            [set(f) for f in state.fired_history[-(config.debounce - 1) :]]
            if config.debounce > 1
            else []
        )
        decision = decide_trigger(signals, previous, state.last_triggered_at, history.end, config)
        return Decision(decision.retrain, "; ".join(decision.reasons), "continual", decision.fired)


POLICY_NAMES = ("never", "monthly", "weekly", "daily", "stateful", "continual", "baseline")


def make_policy(name: str, spec: ModelSpec) -> Policy:
    """A policy by name; ``every:<duration>`` (e.g. ``every:3D``) retrains at any cadence."""
    fixed: dict[str, Callable[[], Policy]] = {
        "never": Never,
        "monthly": lambda: Periodic("monthly", pd.Timedelta(days=30)),
        "weekly": lambda: Periodic("weekly", pd.Timedelta(days=7)),
        "daily": lambda: Periodic("daily", DAY),
        "stateful": lambda: Periodic("stateful", pd.Timedelta(days=7), mode="stateful"),
        "continual": lambda: Continual(spec),
        "baseline": lambda: Periodic("baseline", DAY, mode="baseline"),
    }
    if name in fixed:
        return fixed[name]()
    if name.startswith("every:"):
        try:
            every = pd.Timedelta(name.removeprefix("every:"))
        except (ValueError, TypeError):
            every = pd.Timedelta(0)
        if every > pd.Timedelta(0):
            return Periodic(name, every)
    raise SimulationError(
        f"unknown policy {name!r}: choose from {', '.join(POLICY_NAMES)} or every:<duration> "
        "(e.g. every:3D)"
    )


def parse_policies(text: str, spec: ModelSpec) -> tuple[Policy, ...]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise SimulationError(f"--policies lists no policy; choose from {', '.join(POLICY_NAMES)}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SimulationError(f"policy {duplicates} listed twice in --policies: list it once")
    return tuple(make_policy(n, spec) for n in names)


# -- what the replay records -----------------------------------------------------------------


@dataclass(frozen=True)
class TrainingRecord:
    """One training (or a skipped one) and what it cost."""

    policy: str
    at: pd.Timestamp  # the data cutoff when the policy decided
    strategy: str  # scratch | warm | refit | baseline | skipped
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

    @property
    def fits(self) -> tuple[TrainingRecord, ...]:
        return tuple(t for t in self.trainings if t.strategy != "skipped")

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
    def total_cpu_s(self) -> float:
        """What the policy costs: training and gating, plus its own decisions (monitoring)."""
        return self.train_cpu_s + self.decide_cpu_s

    def summary(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            self.metric: self.overall,
            f"mean_step_{self.metric}": self.mean_step,
            "retrains": self.retrains,
            "promotions": self.promotions,
            "train_wall_s": self.train_wall_s,
            "train_cpu_s": self.train_cpu_s,
            "decide_cpu_s": self.decide_cpu_s,
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
                    "policy": s.policy,
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
                    "policy": t.policy,
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


# -- choosing a policy --------------------------------------------------------------------------


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
    return [Candidate(r.policy, r.overall, r.total_cpu_s) for r in simulation.runs]


# -- the replay ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayData:
    """Every partition and its cached features, held by the replay loop only."""

    partitions: tuple[Partition, ...]
    rows: pd.DataFrame = field(repr=False)  # every partition's features, in time order
    offsets: tuple[int, ...] = field(repr=False)  # first row of each partition, then the end
    computed: int
    cached: int

    def history(self, cutoff: int) -> History:
        """The partitions before index ``cutoff``: what the policies may see."""
        if not 0 < cutoff <= len(self.partitions):
            raise SimulationError(f"cutoff {cutoff} outside 1..{len(self.partitions)}")
        end = self.offsets[cutoff]
        return History(self.partitions[:cutoff], self.rows.iloc[:end], self.offsets[: cutoff + 1])

    def features(self, index: int) -> pd.DataFrame:
        """The features of one partition (the replay loop scores it before it is visible)."""
        return self.rows.iloc[self.offsets[index] : self.offsets[index + 1]]


def load_replay(spec: ModelSpec, start: str | None = None, end: str | None = None) -> ReplayData:
    """Ingest the source and fill (or reuse) the feature cache for every partition."""
    result = ingest(spec, as_of=pd.Timestamp(end) if end else None)
    partitions = tuple(
        p for p in result.partitions if start is None or p.start >= pd.Timestamp(start)
    )
    if not partitions:
        raise SimulationError(
            f"no usable partition in the source between {start or 'the start'} and "
            f"{end or 'the end'}: check the spec's source and --start/--end"
        )
    cache = FeatureCache(spec.state.features, spec)
    materialized = cache.materialize(partitions)
    frames = [cache.read_verified(part) for part in partitions]
    offsets = tuple(int(v) for v in np.cumsum([0, *(len(f) for f in frames)]))
    rows = pd.concat(frames, ignore_index=True)
    return ReplayData(partitions, rows, offsets, len(materialized.computed), len(materialized.hits))


def first_step(data: ReplayData, spec: ModelSpec) -> int:
    """Index of the first scored partition: the initial history must fill the train and holdout
    windows."""
    need = data.partitions[0].start + spec.windows.train_delta + spec.windows.holdout_delta
    for i, part in enumerate(data.partitions):
        if part.start >= need:
            return i
    span = f"{data.partitions[0].start:%Y-%m-%d} to {data.partitions[-1].end:%Y-%m-%d}"
    raise SimulationError(
        f"the history ({span}) is too short: the first model needs windows.train + "
        f"windows.holdout = {spec.windows.train} + {spec.windows.holdout} of data and at least "
        "one later partition to score; shorten the windows or add data"
    )


def metric_name(spec: ModelSpec) -> str:
    """The replay's metric: the spec's, at the cut-off k for a ranking family (``ndcg@10``)."""
    return spec.metric if spec.family == "lightgbm" else f"{spec.metric}@{spec.als.k}"


def _ranking_step(spec: ModelSpec, data: ReplayData, t: int, model: Any) -> tuple[int, float]:
    """Score a recommender on partition ``t``: top-k for the users active in it, on the items
    they had not interacted with before it (the partitions before ``t`` only). Returns the
    number of users scored and the metric over them (NaN when nobody found a new item)."""
    assert spec.interactions is not None
    user = spec.interactions.user
    upcoming = data.features(t)
    seen = data.history(t)
    past = seen.frame(seen.start, seen.end)
    # only the partition's users matter (their seen items, warm or cold): a smaller table
    mine = past[past[user].isin(upcoming[user].unique())]
    train = interactions(spec, mine if len(mine) else past)
    held = interactions(spec, upcoming)
    if relevant_items(train, held, spec.als.min_rating).empty:
        return 0, math.nan
    scores = evaluate_ranking(
        model, train, held, k=spec.als.k, min_rating=spec.als.min_rating
    ).segment("all")
    return scores.users, float(getattr(scores, spec.metric))


def baseline_recommender(spec: ModelSpec, history: History, train: Window) -> Any:
    """The ranking family's trivial model: the most popular items of the recent past (the
    baseline every ranking backtest scores), fitted on the training window."""
    frame = interactions(spec, history.frame(train.start, train.end))
    return PopularityRecommender(spec.als.popularity_window, spec.als.min_rating).fit(frame)


class _Timer:
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


def _xy(spec: ModelSpec, frame: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    return frame[list(spec.features.columns)], frame[spec.label].to_numpy(dtype="float64")


class _Replayer:
    """Carries out one policy's decisions (train, gate, promote) on what a History shows."""

    def __init__(self, spec: ModelSpec, policy: Policy) -> None:
        self.spec = spec
        self.policy = policy
        self.champion: SimChampion | None = None
        self.state = PolicyState(None, None)
        self.trainings: list[TrainingRecord] = []
        self.versions = 0

    def _champion_state(self) -> ChampionState | None:
        c = self.champion
        if c is None or c.strategy == "baseline":
            return None
        if self.spec.family != "lightgbm":
            return self._family_champion().state()  # type: ignore[union-attr]
        return ChampionState(
            version=str(c.version),
            increments=c.increments,
            train_end=c.train_end,
            feature_names=tuple(c.model.feature_names_),
            categorical=tuple(c.model.categories_),
        )

    def _skip(self, at: pd.Timestamp, reason: str) -> None:
        self.trainings.append(
            TrainingRecord(
                self.policy.name,
                at,
                "skipped",
                reason,
                None,
                None,
                0,
                0.0,
                0.0,
                0.0,
                0.0,
                False,
                False,
                reason,
                None,
            )
        )

    def decide(self, history: History) -> Decision:
        """The policy's decision at this step: it sees ``history`` and its own state only."""
        return self.policy.decide(history, self.state)

    def carry_out(self, history: History, decision: Decision) -> str:
        """Train, gate and promote as ``decision`` says; returns what happened in a word."""
        if decision.mode == "continual":
            fired = frozenset(decision.fired)
            self.state = PolicyState(
                self.state.champion,
                self.state.last_trained_at,
                (*self.state.fired_history, fired),
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
        if last.strategy == "skipped":
            return "skipped"
        return f"{last.strategy}, {'promoted' if last.promoted else 'rejected'}"

    def train(self, history: History, decision: Decision) -> None:
        spec = self.spec
        at = history.end
        self.state = PolicyState(
            self.state.champion, at, self.state.fired_history, self.state.last_triggered_at
        )
        try:
            train, holdout = plan_windows(history.partitions, spec, as_of=at)
        except EmptyWindowError as exc:
            self._skip(at, str(exc))
            return
        if spec.family != "lightgbm":
            self._train_family(history, decision, train, holdout)
            return
        champion_state = self._champion_state()
        if decision.mode == "baseline":
            plan = TrainingPlan("baseline", decision.reason, None, 0)
        else:
            plan = plan_training(
                decision.mode,
                spec.stateful,
                champion_state,
                spec.features.columns,
                spec.features.categorical,
            )
            skip = skip_reason(
                decision.mode,
                champion_state,
                self.champion.data_version if self.champion else None,
                train.version,
                holdout.start,
            )
            if skip is not None:
                self._skip(at, skip)
                return
        window: Window = train
        if plan.strategy in {"warm", "refit"}:
            assert self.champion is not None
            try:
                window = make_window(
                    "increment",
                    self.champion.train_end,
                    holdout.start,
                    history.partitions,
                    spec.feature_spec_hash(),
                )
            except EmptyWindowError as exc:
                self._skip(at, str(exc))
                return
        frame = history.frame(window.start, window.end)
        X, y = _xy(spec, frame)
        with _Timer() as fit_time:
            if plan.strategy == "baseline":
                model: Any = BaselineModel(spec.task, spec.metric).fit(X, y)
            else:
                init = self.champion.model if plan.strategy != "scratch" and self.champion else None
                model = make_trainer(spec, plan, init).fit(X, y)
        judged = holdout
        if plan.strategy != "baseline":
            try:
                judged, _ = judged_holdout(holdout, self._family_champion(), spec.gate.refit)
            except BacktestError as exc:
                self._skip(at, str(exc))
                return
        holdout_frame = history.frame(holdout.start, holdout.end)
        holdout_frame = holdout_frame[pd.to_datetime(holdout_frame[TS]) >= judged.start]
        Xh, yh = _xy(spec, holdout_frame)
        with _Timer() as gate_time:
            passed, verdict, cand_metric = self._gate(plan, model, y, Xh, yh, judged, holdout_frame)
        if passed and spec.gate.refit and plan.strategy != "baseline":
            # learn up to now: the validated recipe fitted again through the holdout
            start = (
                window.start
                if plan.strategy in {"warm", "refit"}
                else at - (spec.windows.train_delta)
            )
            try:
                window = make_window(
                    window.name, start, at, history.partitions, spec.feature_spec_hash()
                )
            except EmptyWindowError as exc:
                self._skip(at, str(exc))
                return
            frame = history.frame(window.start, window.end)
            X, y = _xy(spec, frame)
            with _Timer() as refit_time:
                init = self.champion.model if plan.strategy != "scratch" and self.champion else None
                model = make_trainer(spec, plan, init).fit(X, y)
            fit_time = fit_time.add(refit_time)
        self._record(
            history,
            decision,
            plan,
            model,
            train,
            window,
            len(frame),
            fit_time,
            gate_time,
            passed,
            verdict,
            cand_metric,
        )

    def _record(
        self,
        history: History,
        decision: Decision,
        plan: TrainingPlan,
        model: Any,
        train: Window,
        window: Window,
        rows: int,
        fit_time: _Timer,
        gate_time: _Timer,
        passed: bool,
        verdict: str,
        cand_metric: float | None,
    ) -> None:
        """Promote as the promotion policy decides (approved automatically) and record."""
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
            train_start = (
                self.champion.train_start
                if plan.strategy in {"warm", "refit", "foldin"} and self.champion
                else window.start
            )
            self.champion = SimChampion(
                version=version,
                model=model,
                strategy=plan.strategy,
                train_start=train_start,
                train_end=window.end,
                data_version=window.version,  # as the registry tags it
                backtest_metric=cand_metric,
                increments=plan.increments,
                data_end=_last_row(history, window),
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
                    else decision.reason
                    if plan.strategy == "baseline"
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
        model: Any
        if spec.family == "lightgbm":
            _, y = _xy(spec, history.frame(train.start, train.end))
            model = BaselineModel(spec.task, spec.metric).fit(pd.DataFrame(), y)
        else:
            model = baseline_recommender(spec, history, train)
        self.champion = SimChampion(
            0,
            model,
            "baseline",
            train.start,
            train.end,
            train.version,
            None,
            data_end=_last_row(history, train),
        )
        self.state = PolicyState(self.champion, self.state.last_trained_at)

    def _family_champion(self) -> Champion | None:
        """The policy's champion as the family steps take it (the registry's view of it)."""
        c = self.champion
        if c is None or c.strategy == "baseline":
            return None
        return Champion(
            version=str(c.version),
            model=c.model,
            train_end=c.train_end,
            data_versions=(c.data_version,),
            tags={
                str(Tag.WINDOW_START): str(c.train_start),
                str(Tag.DATA_VERSION): c.data_version,
            },
        )

    def _train_family(
        self, history: History, decision: Decision, train: Window, holdout: Window
    ) -> None:
        """One retrain through the family's own steps (``family_of(spec)``: plan, fit,
        evaluate = the gate), on the windows of the visible partitions only; the family reads
        them from the feature cache, as a retrain does."""
        spec, at = self.spec, history.end
        family = family_of(spec)
        champion = self._family_champion()
        prepared = Prepared(
            IngestResult(history.partitions, (), 0, 0),
            MaterializeResult((), (), ()),
            train,
            holdout,
            spec.feature_spec_hash(),
        )
        if decision.mode == "baseline":
            plan = TrainingPlan("baseline", decision.reason, None, 0)
        else:
            plan = family.plan(decision.mode, spec, champion)
            skip = skip_reason(
                decision.mode,
                champion.state() if champion else None,
                self.champion.data_version if self.champion else None,
                train.version,
                holdout.start,
            )
            if skip is not None:
                self._skip(at, skip)
                return
        model: Any
        with _Timer() as fit_time:
            if plan.strategy == "baseline":
                window, rows = train, len(history.frame(train.start, train.end))
                model = baseline_recommender(spec, history, train)
            else:
                trained = family.fit_candidate(spec, prepared, plan, champion)
                plan, window, rows, model = (
                    trained.plan,
                    trained.window,
                    trained.rows,
                    trained.model,
                )
        with _Timer() as gate_time:
            if plan.strategy == "baseline":
                passed, verdict, value = True, "the baseline is refitted without a gate", None
            else:
                try:
                    result = family.evaluate(spec, trained, holdout, champion).result
                except BacktestError as exc:  # a refitted champion past the whole holdout
                    self._skip(at, str(exc))
                    return
                passed, verdict, value = result.passed, "; ".join(result.reasons), result.candidate
        if passed and spec.gate.refit and plan.strategy != "baseline":
            with _Timer() as refit_time:
                trained = family.refit(spec, prepared, trained, champion)
                window, rows, model = trained.window, trained.rows, trained.model
            fit_time = fit_time.add(refit_time)
        self._record(
            history,
            decision,
            plan,
            model,
            train,
            window,
            rows,
            fit_time,
            gate_time,
            passed,
            verdict,
            value,
        )

    def _gate(
        self,
        plan: TrainingPlan,
        model: Any,
        y_train: np.ndarray,
        Xh: pd.DataFrame,
        yh: np.ndarray,
        holdout: Window,
        holdout_frame: pd.DataFrame,
    ) -> tuple[bool, str, float]:
        spec, gate = self.spec, self.spec.gate
        candidate = model.predict(Xh)
        if plan.strategy == "baseline":
            value = score(spec.metric, yh, candidate)
            return True, "the baseline is refitted without a gate", value
        champion = self.champion
        if champion is not None and champion.strategy == "baseline":
            champion = None
        champion_pred = None if champion is None else champion.model.predict(Xh)
        bounds, window_ids = split_windows(holdout, gate.backtest_windows, holdout_frame[TS])
        result = backtest(
            window_ids=window_ids,
            window_bounds=bounds,
            max_windows_lost=gate.max_windows_lost,
            slices={col: holdout_frame[col].to_numpy() for col in gate.slices},
            max_slice_degradation=gate.max_slice_degradation if gate.slices else None,
            min_slice_rows=gate.min_slice_rows,
            metric=spec.metric,
            task=spec.task,
            y_holdout=yh,
            candidate_pred=candidate,
            y_train=y_train,
            holdout_start=holdout.start,
            holdout_end=holdout.end,
            tolerance=gate.tolerance,
            champion_pred=champion_pred,
            champion_version=None if champion is None else str(champion.version),
            champion_train_end=None if champion is None else champion.train_end,
            bootstrap_samples=gate.bootstrap_samples,
            seed=spec.seed,
        )
        return result.passed, "; ".join(result.reasons), result.candidate


def _last_row(history: History, window: Window) -> pd.Timestamp | None:
    """The timestamp of the newest row of ``window`` (the end of a model's training data)."""
    try:
        stamps = history.frame(window.start, window.end)[TS]
    except EmptyWindowError:
        return None
    return pd.Timestamp(stamps.max()) if len(stamps) else None


ProgressCallback = Callable[[str, int, int], None]


def replay_policy(
    spec: ModelSpec,
    policy: Policy,
    data: ReplayData,
    progress: ProgressCallback | None = None,
) -> PolicyRun:
    """Replay the history for one policy: score, then decide, partition by partition."""
    started = time.perf_counter()
    t0 = first_step(data, spec)
    replayer = _Replayer(spec, policy)
    first_mode = "baseline" if isinstance(policy, Periodic) and policy.mode == "baseline" else ""
    replayer.train(data.history(t0), Decision(True, "first model", first_mode or "scheduled"))
    if replayer.champion is None:
        replayer.serve_baseline(data.history(t0))
    steps: list[StepRecord] = []
    ys: list[np.ndarray] = []
    preds: list[np.ndarray] = []
    total = len(data.partitions) - t0
    for t in range(t0, len(data.partitions)):
        champion = replayer.champion
        assert champion is not None
        part = data.partitions[t]
        if spec.family == "lightgbm":
            X, y = _xy(spec, data.features(t))
            pred = champion.model.predict(X)
            ys.append(y)
            preds.append(pred)
            rows, value = len(y), score(spec.metric, y, pred)
        else:
            rows, value = _ranking_step(spec, data, t, champion.model)
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
                rows,
                value,
                champion.version,
                decision_text,
                decide_time.wall,
                decide_time.cpu,
            )
        )
        if progress is not None:
            progress(policy.name, t - t0 + 1, total)
    if spec.family == "lightgbm":
        overall = score(spec.metric, np.concatenate(ys), np.concatenate(preds))
    else:  # the mean over every scored user
        scored = [s for s in steps if s.rows]
        users = sum(s.rows for s in scored)
        overall = math.fsum(s.metric * s.rows for s in scored) / users if users else math.nan
    step_metrics = np.array([s.metric for s in steps])
    return PolicyRun(
        policy=policy.name,
        metric=metric_name(spec),
        overall=overall,
        mean_step=float(np.nanmean(step_metrics)) if step_metrics.size else math.nan,
        steps=tuple(steps),
        trainings=tuple(replayer.trainings),
        wall_s=time.perf_counter() - started,
    )


def simulate(
    spec: ModelSpec,
    policies: Sequence[Policy],
    data: ReplayData | None = None,
    progress: ProgressCallback | None = None,
    notes: Sequence[str] = (),
    jobs: int = 1,
) -> Simulation:
    """Replay the history for every policy. With ``jobs`` > 1 the policies run in that many
    worker processes; a process's CPU clock counts its own work only, so the accounting of one
    policy never includes another's either way."""
    if not policies:
        raise SimulationError("no policy to simulate: pass at least one")
    if jobs < 1:
        raise SimulationError(f"jobs must be at least 1, got {jobs}")
    data = data if data is not None else load_replay(spec)
    t0 = first_step(data, spec)
    if jobs == 1 or len(policies) == 1:
        runs = tuple(replay_policy(spec, p, data, progress) for p in policies)
    else:
        total = len(data.partitions) - t0
        # spawn, not fork: a forked child of a process that already ran LightGBM's OpenMP
        # threads can hang on a lock it inherited
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(jobs, len(policies)), mp_context=context) as pool:
            futures = {pool.submit(replay_policy, spec, p, data): p.name for p in policies}
            done: dict[str, PolicyRun] = {}
            for future in as_completed(futures):
                done[futures[future]] = future.result()
                if progress is not None:
                    progress(futures[future], total, total)
        runs = tuple(done[p.name] for p in policies)
    return Simulation(
        spec_name=spec.name,
        metric=metric_name(spec),
        greater_is_better=spec.greater_is_better,
        first_step=data.partitions[t0].key,
        last_step=data.partitions[-1].key,
        partitions=len(data.partitions) - t0,
        features_computed=data.computed,
        features_cached=data.cached,
        runs=runs,
        notes=tuple(notes),
    )
