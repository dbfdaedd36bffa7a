"""The monitor's check of a champion: every signal on the fresh data, and the trigger decision.

The signals themselves are in ``retrain.monitor``, the trigger policy in ``retrain.triggers``;
this module reads the data (ingest, feature cache) and the champion's lineage, asks the family
which columns the drift and score signals read, and decides. The monitor flow and the
simulator's continual policy share it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pandas as pd

from retrain.config import ModelSpec
from retrain.errors import DataError, SchemaError
from retrain.families import family_of
from retrain.families.spine import Champion
from retrain.features import PARTITION, FeatureCache
from retrain.ingest import TS, ingest, utc_now
from retrain.ledger import Ledger
from retrain.monitor import Signal, compute_signals, data_problems, quarantine_problem
from retrain.triggers import TriggerDecision, decide_trigger

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MonitorResult:
    """One monitor check: every signal and the trigger decision."""

    model: str
    as_of: pd.Timestamp
    champion_version: str
    signals: tuple[Signal, ...]
    decision: TriggerDecision
    fresh_rows: int
    reference_rows: int

    def table(self) -> list[dict[str, Any]]:
        return [
            {
                "signal": s.name,
                "feature": s.feature or "",
                "value": round(s.value, 4),
                "threshold": "" if s.threshold is None else round(s.threshold, 4),
                "p": "" if s.p_value is None else f"{s.p_value:.2g}",
                "fired": s.fired,
                "detail": s.detail,
            }
            for s in self.signals
        ]


def _missing_periods(
    spec: ModelSpec, start: pd.Timestamp, end: pd.Timestamp, have: set[str]
) -> dict[str, int]:
    """Complete partitions between start and end that hold no row at all."""
    if end <= start:
        return {}
    periods = pd.period_range(
        start=start, end=end - pd.Timedelta(1, "ns"), freq=spec.partitions.freq
    )
    return {
        str(p): 0
        for p in periods
        if p.start_time >= start and (p + 1).start_time <= end and str(p) not in have
    }


def monitor_check(
    spec: ModelSpec,
    ledger: Ledger,
    champion: Champion,
    now: pd.Timestamp | None = None,
) -> MonitorResult:
    """Measure every signal of the champion against the fresh data and decide (pure decision,
    ledger read for the debounce and cooldown history; the caller stores the result)."""
    now = now if now is not None else utc_now()
    if champion.train_end is None:
        raise DataError(f"champion v{champion.version} has no retrain.window_end tag: retrain it")
    train_start = champion.lineage.window_start or champion.train_end
    try:
        result = ingest(spec, as_of=now)
    except SchemaError as exc:
        problem = Signal("data_problem", 1.0, None, True, detail=str(exc))
        decision = decide_trigger([problem], [], None, now, spec.monitor)
        return MonitorResult(spec.name, now, champion.version, (problem,), decision, 0, 0)
    parts = result.partitions
    reference = [p for p in parts if p.start >= train_start and p.end <= champion.train_end]
    fresh = [p for p in parts if p.start >= champion.train_end]
    cache = FeatureCache(spec.state.features, spec)
    cache.materialize(reference + fresh)
    columns = [TS, spec.label, *spec.features.columns]
    ref_frame = cache.load(reference) if reference else pd.DataFrame(columns=columns)
    fresh_frame = cache.load(fresh) if fresh else pd.DataFrame(columns=columns)
    end = max((p.end for p in parts), default=champion.train_end)
    rows = _missing_periods(spec, champion.train_end, end, {p.key for p in parts})
    quarantined = {q.key: q.reason for q in result.quarantined}
    rows = {k: v for k, v in rows.items() if k not in quarantined}
    freq = spec.partitions.freq
    fresh_quarantined = {
        key: reason
        for key, reason in quarantined.items()
        if pd.Period(key, freq=freq).start_time >= champion.train_end
    }
    # the columns the family's drift and score signals read (none: age and volume only)
    features = family_of(spec).monitored_features(spec)
    healthy = not data_problems(fresh_frame, features, {})
    ref_scores = fresh_scores = None
    labelled = None
    if healthy and features and len(fresh_frame) and len(ref_frame):
        ref_scores = champion.model.predict(ref_frame[features])
        fresh_scores = champion.model.predict(fresh_frame[features])
        ripe = now - pd.Timedelta(spec.monitor.label_delay)
        ripe_keys = {p.key for p in fresh if p.end <= ripe}
        mask = fresh_frame[PARTITION].isin(ripe_keys) & fresh_frame[spec.label].notna()
        labelled = (
            fresh_frame.loc[mask, spec.label].to_numpy(dtype="float64"),
            fresh_scores[mask.to_numpy()],
        )
    backtest_metric = champion.lineage.backtest(spec.metric)
    measured = compute_signals(
        config=spec.monitor,
        numeric=[c for c in features if c not in spec.features.categorical],
        categorical=[c for c in spec.features.categorical if c in features],
        reference=ref_frame,
        fresh=fresh_frame,
        champion_train_end=champion.train_end,
        now=now,
        partition_rows=rows,
        reference_scores=ref_scores,
        fresh_scores=fresh_scores,
        labelled=labelled,
        metric=spec.metric,
        backtest_metric=backtest_metric,
        greater_is_better=spec.greater_is_better,
    )
    measured += quarantine_problem(fresh_quarantined)
    # the debounce looks at the previous checks of the same champion only
    history: list[set[str]] = []
    if spec.monitor.debounce > 1:
        history = [
            {name for name in (c["fired"] or "").split(",") if name}
            for c in ledger.recent_checks(spec.name, limit=spec.monitor.debounce - 1)
            if c["champion_version"] == champion.version
        ]
    last = ledger.last_triggered(spec.name)
    decision = decide_trigger(
        measured, history, pd.Timestamp(last) if last is not None else None, now, spec.monitor
    )
    return MonitorResult(
        spec.name,
        now,
        champion.version,
        tuple(measured),
        decision,
        len(fresh_frame),
        len(ref_frame),
    )
