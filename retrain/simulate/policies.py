"""Retraining policies: when to retrain, decided at each step from a History and own state.

``never``, periodic cadences (scratch on the sliding window, ``stateful`` through the family's
planner, ``baseline`` refits the trivial model) and ``continual``: the monitor's own signals
(:func:`retrain.monitor_check.measure_signals`) and the real trigger policy
(:func:`retrain.triggers.decide_trigger`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd

from retrain.config import ModelSpec
from retrain.errors import SimulationError
from retrain.families import family_of
from retrain.families.lineage import Tag
from retrain.families.spine import Champion
from retrain.monitor import drift_reference
from retrain.monitor_check import measure_signals
from retrain.simulate.history import History
from retrain.triggers import decide_trigger

DAY = pd.Timedelta(days=1)
# what a retrain of a policy is: a scheduled (scratch) retrain, a stateful or continual one
# (planned by the family from the champion), or a refit of the trivial baseline
DecisionMode = Literal["scheduled", "stateful", "continual", "baseline"]


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
    # every data version the model's weights have seen (the registry's lineage tag)
    data_versions: tuple[str, ...] = ()
    # the last training row's timestamp: data age = as-of minus it (None: unknown)
    data_end: pd.Timestamp | None = None
    # gate.refit: the fit the gate validated (trained up to validated_end, the start of this
    # version's holdout), kept for the next gates' equal-staleness comparison, as the
    # registry keeps it with the version
    validated: Any = field(default=None, repr=False)
    validated_end: pd.Timestamp | None = None

    def as_champion(self) -> Champion | None:
        """The champion as the family steps take it (the registry's view of it); None for the
        trivial baseline that serves while no model passed the gate (version 0: production has
        no champion then). A promoted baseline (gate.promote_baseline) is a champion like any
        other: the next candidate is judged against it, and trained from scratch."""
        if self.strategy == "baseline" and self.version == 0:
            return None
        return Champion(
            version=str(self.version),
            model=self.model,
            train_end=self.train_end,
            data_versions=self.data_versions or (self.data_version,),
            tags={
                str(Tag.WINDOW_START): str(self.train_start),
                str(Tag.WINDOW_END): str(self.train_end),
                str(Tag.DATA_VERSION): self.data_version,
                **({str(Tag.DATA_END): str(self.data_end)} if self.data_end is not None else {}),
                **(
                    {str(Tag.VALIDATED_WINDOW_END): str(self.validated_end)}
                    if self.validated_end is not None
                    else {}
                ),
            },
            validated=self.validated,
            validated_end=self.validated_end,
        )


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
    mode: DecisionMode = "scheduled"
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
    # a duration, or a calendar offset (``monthly``: one calendar month, so that monthly
    # partitions, 28 to 31 days long, are each retrained on, as a monthly cron would)
    every: pd.Timedelta | pd.DateOffset
    mode: DecisionMode = "scheduled"

    def decide(self, history: History, state: PolicyState) -> Decision:
        last = state.last_trained_at
        every = (
            self.every
            if isinstance(self.every, pd.Timedelta)
            else "a calendar month"
            if self.every == pd.DateOffset(months=1)
            else str(self.every)
        )
        if last is None or history.end >= last + self.every:
            return Decision(True, f"{every} since the last retrain", self.mode)
        return Decision(False, f"next retrain due at {last + self.every}", self.mode)


@dataclass(frozen=True)
class Continual:
    """The continual mode: the monitor's signals and the real trigger policy decide.

    A check is cheap: the champion's reference window is summarised once per champion
    (:func:`retrain.monitor.drift_reference`: sampled values, category counts, its scores) and
    the champion scores each fresh partition once; both are kept in ``_cache`` and handed to
    the monitor's :func:`~retrain.monitor_check.measure_signals`.
    """

    spec: ModelSpec = field(repr=False)
    name: str = "continual"
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def decide(self, history: History, state: PolicyState) -> Decision:
        champion = state.champion
        if champion is None:
            return Decision(True, "no champion", "continual")
        spec, config = self.spec, self.spec.monitor
        features = family_of(spec).monitored_features(spec)
        if self._cache.get("version") != champion.version:
            self._cache.clear()
            self._cache["version"] = champion.version
            model = champion.model
            self._cache["reference"] = drift_reference(
                history.frame(champion.train_start, champion.train_end),
                [c for c in features if c not in spec.features.categorical],
                [c for c in spec.features.categorical if c in features],
                max_rows=config.max_sample_rows,
                score=(lambda rows: model.predict(rows[features])) if features else None,
                seed=spec.seed,
            )
            self._cache["fresh_scores"] = np.empty(0)
        fresh_start = champion.train_end
        if fresh_start >= history.end:
            fresh = history.frame(champion.train_start, champion.train_end).iloc[0:0]
        else:
            fresh = history.frame(fresh_start, history.end)
        fresh_scores = None
        if features and len(fresh):
            done: np.ndarray = self._cache["fresh_scores"]
            new = champion.model.predict(fresh[features].iloc[done.size :])
            fresh_scores = self._cache["fresh_scores"] = np.concatenate([done, new])
        signals = measure_signals(
            spec,
            champion.model,
            self._cache["reference"],
            fresh,
            [p for p in history.partitions if p.start >= fresh_start],
            champion.train_end,
            history.end,
            {},
            champion.backtest_metric,
            data_end=champion.data_end,
            fresh_scores=fresh_scores,
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
        "monthly": lambda: Periodic("monthly", pd.DateOffset(months=1)),
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
