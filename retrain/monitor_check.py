"""The monitor's check of a champion: every signal on the fresh data, and the trigger decision.

The signals themselves are in ``retrain.monitor``, the trigger policy in ``retrain.triggers``;
this module reads the data (ingest, feature cache) and the champion's lineage, asks the family
which columns the drift and score signals read, and decides. The monitor flow and the
simulator's continual policy share it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from retrain.config import ModelSpec
from retrain.errors import DataError, SchemaError
from retrain.families import family_of
from retrain.families.lineage import Tag
from retrain.families.spine import Champion
from retrain.features import PARTITION, FeatureCache
from retrain.freshness import data_end as tagged_data_end
from retrain.ingest import TS, Partition, ingest, utc_now
from retrain.ledger import Ledger
from retrain.monitor import (
    DriftReference,
    Signal,
    compute_signals,
    data_problems,
    quarantine_problem,
)
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


def measure_signals(
    spec: ModelSpec,
    model: Any,
    reference: pd.DataFrame | DriftReference,
    fresh: pd.DataFrame,
    fresh_partitions: Sequence[Partition],
    champion_train_end: pd.Timestamp,
    now: pd.Timestamp,
    partition_rows: dict[str, int],
    backtest_metric: float | None,
    data_end: pd.Timestamp | None = None,
    fresh_scores: np.ndarray | None = None,
) -> list[Signal]:
    """Every signal of a champion (``model``) on the fresh rows against its training rows.

    The columns the family's drift and score signals read come from the family (none: the age
    and volume signals only); the champion scores both sides when the fresh rows are healthy;
    its quality is measured on the fresh partitions whose labels are ripe
    (``monitor.label_delay``). The monitor's check and the simulator's continual policy both
    measure through here. ``reference`` may be the window's rows or its
    :class:`~retrain.monitor.DriftReference` summary (with the champion's scores on its sample);
    ``fresh_scores``, when given, are the champion's scores of ``fresh`` already computed (the
    replay keeps them from step to step). ``data_end``: the champion's last training row.
    """
    features = family_of(spec).monitored_features(spec)
    healthy = not data_problems(fresh, features, {})
    ref_scores = None
    labelled = None
    reference_rows = reference.rows if isinstance(reference, DriftReference) else len(reference)
    if not (healthy and features and len(fresh) and reference_rows):
        fresh_scores = None
    else:
        if not isinstance(reference, DriftReference):
            ref_scores = model.predict(reference[features])
        if fresh_scores is None:
            fresh_scores = model.predict(fresh[features])
        ripe = now - pd.Timedelta(spec.monitor.label_delay)
        ripe_keys = {p.key for p in fresh_partitions if p.end <= ripe}
        mask = fresh[PARTITION].isin(ripe_keys) & fresh[spec.label].notna()
        labelled = (
            fresh.loc[mask, spec.label].to_numpy(dtype="float64"),
            fresh_scores[mask.to_numpy()],
        )
    return compute_signals(
        config=spec.monitor,
        numeric=[c for c in features if c not in spec.features.categorical],
        categorical=[c for c in spec.features.categorical if c in features],
        reference=reference,
        fresh=fresh,
        champion_train_end=champion_train_end,
        now=now,
        partition_rows=partition_rows,
        reference_scores=ref_scores,
        fresh_scores=fresh_scores,
        labelled=labelled,
        metric=spec.metric,
        backtest_metric=backtest_metric,
        greater_is_better=spec.greater_is_better,
        data_end=data_end,
        seed=spec.seed,
    )


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
        raise DataError(f"champion v{champion.version} has no {Tag.WINDOW_END} tag: retrain it")
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
    measured = measure_signals(
        spec,
        champion.model,
        ref_frame,
        fresh_frame,
        fresh,
        champion.train_end,
        now,
        rows,
        champion.lineage.backtest(spec.metric),
        tagged_data_end(champion.tags),
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
