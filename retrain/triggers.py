"""Trigger policy of the continual mode: signals in, a frozen decision with its reasons out.

Rules from ``[monitor]``: retrain when ANY signal of ``monitor.any`` fires, or when ALL of
``monitor.all`` fire; a signal counts only after firing in ``monitor.debounce`` consecutive
checks; no retrain within ``monitor.cooldown`` of the last one; never on data problems.

>>> from retrain.config import MonitorSpec
>>> from retrain.monitor import Signal
>>> cfg = MonitorSpec(any=("drift",), cooldown="1D", debounce=2)
>>> now = pd.Timestamp("2012-01-10")
>>> drift = [Signal("drift", 0.4, 0.2, True, feature="temp")]
>>> decide_trigger(drift, [{"drift"}], None, now, cfg).retrain
True
>>> decide_trigger(drift, [], None, now, cfg).reasons
('drift fired 1 of the 2 checks in a row monitor.debounce asks for',)
>>> decide_trigger(drift, [{"drift"}], pd.Timestamp("2012-01-09 12:00"), now, cfg).retrain
False
>>> bad = [*drift, Signal("data_problem", 1.0, None, True, detail="feature 'hum' is missing")]
>>> decide_trigger(bad, [{"drift"}], None, now, cfg).blocked_by
("feature 'hum' is missing",)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from retrain.config import MonitorSpec
from retrain.monitor import Signal


@dataclass(frozen=True)
class TriggerDecision:
    retrain: bool
    reasons: tuple[str, ...]
    fired: tuple[str, ...]
    blocked_by: tuple[str, ...] = ()


def fired_names(signals: Sequence[Signal], config: MonitorSpec) -> set[str]:
    """The signal names that crossed their thresholds in one check."""
    names = {s.name for s in signals if s.fired and s.name not in {"drift", "data_problem"}}
    drifted = [s for s in signals if s.name == "drift" and s.fired]
    if len(drifted) >= config.min_drifted_features:
        names.add("drift")
    return names


def decide_trigger(
    signals: Sequence[Signal],
    previous: Sequence[set[str]],
    last_retrain_at: pd.Timestamp | None,
    now: pd.Timestamp,
    config: MonitorSpec,
) -> TriggerDecision:
    """Decide whether this check starts a retrain. ``previous``: fired names of earlier checks,
    oldest first."""
    fired_now = fired_names(signals, config)
    problems = tuple(s.detail for s in signals if s.name == "data_problem")
    if problems:
        return TriggerDecision(
            False, ("data problems: never retrain on garbage",), tuple(sorted(fired_now)), problems
        )
    history = [*previous, fired_now]
    persistent = {
        name
        for name in fired_now
        if len(history) >= config.debounce
        and all(name in check for check in history[-config.debounce :])
    }
    reasons: list[str] = []
    for name in sorted(fired_now - persistent):
        streak = 0
        for check in reversed(history):
            if name not in check:
                break
            streak += 1
        reasons.append(
            f"{name} fired {streak} of the {config.debounce} checks in a row monitor.debounce "
            "asks for"
        )
    details = {s.name: s.detail for s in signals if s.fired}
    drifted = sorted(s.feature or "" for s in signals if s.name == "drift" and s.fired)
    if drifted:
        details["drift"] = "drift in " + ", ".join(drifted)
    hits = sorted(persistent & set(config.any))
    if config.all and set(config.all) <= persistent:
        hits = sorted(set(hits) | set(config.all))
    if not hits:
        return TriggerDecision(
            False, tuple(reasons) or ("no rule fired",), tuple(sorted(fired_now))
        )
    cooldown = pd.Timedelta(config.cooldown)
    if last_retrain_at is not None and now - last_retrain_at < cooldown:
        return TriggerDecision(
            False,
            (f"cooling down: last retrain {last_retrain_at}, monitor.cooldown {config.cooldown}",),
            tuple(sorted(fired_now)),
        )
    return TriggerDecision(
        True, tuple(f"{h}: {details.get(h, '')}" for h in hits), tuple(sorted(fired_now))
    )
