"""The steps of one retrain, as plain functions: the flows call them one task each.

prepare (ingest + feature cache + windows) -> fit -> evaluate (backtest). Nothing here knows
about Prefect or MLflow: the champion is handed in as a fitted trainer, and what comes out is
data and frozen decisions.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retrain.backtest import BacktestResult, backtest, baseline_predictions, score
from retrain.config import ModelSpec
from retrain.errors import (
    DataError,
    EmptyWindowError,
    NoTreesAddedError,
    SchemaError,
    TrainingError,
)
from retrain.features import (
    PARTITION,
    FeatureCache,
    MaterializeResult,
    Window,
    data_version,
    make_window,
    plan_windows,
)
from retrain.ingest import TS, IngestResult, ingest, utc_now
from retrain.ledger import Ledger
from retrain.monitor import Signal, compute_signals, data_problems, quarantine_problem
from retrain.reports import backtest_plot, importance_plot, learning_curve_plot
from retrain.stateful import ChampionState, TrainingPlan, scratch
from retrain.trainers import LightGBMTrainer
from retrain.triggers import TriggerDecision, decide_trigger

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """The data side of a retrain: what was ingested, cached, and the two windows."""

    ingest: IngestResult
    cache: MaterializeResult
    train: Window
    holdout: Window
    spec_hash: str


@dataclass(frozen=True)
class Champion:
    """The model in production, as loaded from the registry."""

    version: str
    model: Any
    train_end: pd.Timestamp | None
    data_versions: tuple[str, ...]
    tags: Mapping[str, str] = field(default_factory=dict)

    def state(self) -> ChampionState:
        return ChampionState(
            version=self.version,
            increments=int(getattr(self.model, "increments_", 0)),
            train_end=self.train_end,
            feature_names=tuple(getattr(self.model, "feature_names_", ())),
            categorical=tuple(getattr(self.model, "categories_", ())),
        )


@dataclass(frozen=True)
class Trained:
    model: Any  # LightGBMTrainer or ALSTrainer (retrain.families)
    window: Window
    rows: int
    label_stats: dict[str, float]
    plan: TrainingPlan
    # every data version the model's weights have seen: the lineage's, then this window's
    data_versions: tuple[str, ...]
    y_train: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class Evaluated:
    result: BacktestResult
    timestamps: pd.Series = field(repr=False)
    y: np.ndarray = field(repr=False)
    candidate: np.ndarray = field(repr=False)
    baseline: np.ndarray = field(repr=False)
    champion: np.ndarray | None = field(repr=False, default=None)


def parse_as_of(value: str | pd.Timestamp | None) -> pd.Timestamp | None:
    if value is None or value == "":
        return None
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise DataError(
            f"--as-of {value!r} is not a date or timestamp; write it like 2011-06-01"
        ) from None
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts


def prepare(
    spec: ModelSpec, as_of: pd.Timestamp | None = None, ledger: Ledger | None = None
) -> Prepared:
    """Ingest the source, record the manifest, fill the feature cache, plan the windows."""
    result = ingest(spec, as_of=as_of)
    if ledger is not None:
        rows: list[tuple[str, str, int, str, str | None]] = [
            (p.key, p.fingerprint, p.rows, "ok", p.note) for p in result.partitions
        ]
        rows += [(q.key, "-", q.rows, "quarantined", q.reason) for q in result.quarantined]
        ledger.record_partitions(spec.name, rows)
    train, holdout = plan_windows(result.partitions, spec, as_of=as_of)
    cache = FeatureCache(spec.state.features, spec)
    materialized = cache.materialize(train.partitions + holdout.partitions)
    return Prepared(result, materialized, train, holdout, cache.spec_hash)


def _xy(spec: ModelSpec, frame: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    return frame[list(spec.features.columns)], frame[spec.label].to_numpy(dtype="float64")


def label_stats(task: str, y: np.ndarray) -> dict[str, float]:
    if task == "binary":
        return {"positive_rate": float(np.mean(y)), "positives": float(np.sum(y))}
    return {
        "mean": float(np.mean(y)),
        "std": float(np.std(y)),
        "min": float(np.min(y)),
        "max": float(np.max(y)),
    }


def make_trainer(
    spec: ModelSpec, plan: TrainingPlan | None = None, init_model: Any = None
) -> LightGBMTrainer:
    strategy = plan.strategy if plan is not None else "scratch"
    return LightGBMTrainer(
        task=spec.task,
        params=dict(spec.lightgbm.params),
        num_boost_round=(
            spec.lightgbm.num_boost_round
            if strategy == "scratch"
            else spec.stateful.increment_rounds
        ),
        categorical=spec.features.categorical,
        random_state=spec.seed,
        strategy=strategy,
        init_model=init_model if strategy != "scratch" else None,
        refit_decay_rate=spec.stateful.refit_decay_rate,
    )


def increment_window(spec: ModelSpec, prepared: Prepared, since: pd.Timestamp) -> Window:
    """The partitions the champion was not trained on, up to the holdout.

    The champion's window held only the partitions that END at or before ``since`` (its
    training end): a partition straddling ``since`` (a holdout that started inside it) was left
    out whole, so it belongs to the increment, whole; otherwise no retrain of the lineage would
    ever read it.
    """
    if since >= prepared.holdout.start:
        raise EmptyWindowError(
            f"no new data since the champion's training end ({since}): the holdout starts at "
            f"{prepared.holdout.start}. Nothing to warm-start on; wait for new partitions."
        )
    end = prepared.holdout.start
    inside = tuple(p for p in prepared.ingest.partitions if since < p.end <= end)
    if not inside:
        raise EmptyWindowError(
            f"no complete partition arrived between the champion's training end ({since}) and "
            f"the holdout's start ({end}). Nothing to warm-start on; wait for new partitions "
            "or move --as-of."
        )
    window = Window(
        "increment",
        min(since, inside[0].start),
        end,
        inside,
        data_version(prepared.spec_hash, inside),
    )
    FeatureCache(spec.state.features, spec).materialize(window.partitions)
    return window


def fit(
    spec: ModelSpec,
    prepared: Prepared,
    plan: TrainingPlan | None = None,
    champion: Champion | None = None,
) -> Trained:
    """Train the candidate the plan asks for (features read from the cache)."""
    plan = plan or scratch("from scratch")
    lineage: tuple[str, ...]
    if plan.strategy == "scratch":
        window, lineage = prepared.train, ()
    else:
        if champion is None or champion.train_end is None:
            raise TrainingError(f"a {plan.strategy} increment needs the champion's training end")
        window = increment_window(spec, prepared, champion.train_end)
        lineage = champion.data_versions
    trainer = make_trainer(spec, plan, champion.model if champion else None)
    if spec.compute.engine == "dask":
        from retrain.compute import fit_on_dask

        model, y = fit_on_dask(spec, window, trainer)
    else:
        X, y = _xy(spec, FeatureCache(spec.state.features, spec).load(window.partitions))
        model = trainer.fit(X, y)
    return Trained(
        model, window, len(y), label_stats(spec.task, y), plan, (*lineage, window.version), y
    )


def fit_candidate(
    spec: ModelSpec, prepared: Prepared, plan: TrainingPlan, champion: Champion | None
) -> Trained:
    """Fit as planned; with ``stateful.compare_with_scratch`` keep scratch if warm start lost
    (or could not grow a tree from the increment)."""
    if plan.strategy == "scratch" or not spec.stateful.compare_with_scratch:
        return fit(spec, prepared, plan, champion)
    try:
        trained = fit(spec, prepared, plan, champion)
    except NoTreesAddedError as error:
        reason = "warm start added no trees on the increment: full retrain instead"
        logger.info("%s (%s)", reason, error)
        return fit(spec, prepared, scratch(reason), None)
    rival = fit(spec, prepared, scratch("compared with the warm increment"), None)
    holdout = FeatureCache(spec.state.features, spec).load(prepared.holdout.partitions)
    X, y = _xy(spec, holdout)
    warm_score = score(spec.metric, y, trained.model.predict(X))
    scratch_score = score(spec.metric, y, rival.model.predict(X))
    allowed = spec.gate.tolerance * abs(scratch_score)
    gap = (scratch_score - warm_score) if spec.greater_is_better else (warm_score - scratch_score)
    if gap > allowed:
        reason = (
            f"{plan.strategy} increment lost to scratch on the holdout ({spec.metric} "
            f"{warm_score:.4f} vs {scratch_score:.4f}): full retrain instead"
        )
        logger.info(reason)
        return replace(rival, plan=scratch(reason))
    return replace(
        trained,
        plan=replace(
            plan,
            reason=f"{plan.reason}; beat scratch on the holdout ({warm_score:.4f} vs "
            f"{scratch_score:.4f})",
        ),
    )


def split_windows(
    holdout: Window, k: int, timestamps: pd.Series
) -> tuple[list[tuple[pd.Timestamp, pd.Timestamp]], np.ndarray]:
    """K consecutive windows of equal length over the holdout, and each row's window index."""
    span = (holdout.end - holdout.start) / k
    bounds = [(holdout.start + i * span, holdout.start + (i + 1) * span) for i in range(k)]
    offsets = (pd.to_datetime(timestamps) - holdout.start) / span
    ids = np.clip(np.floor(offsets.to_numpy(dtype="float64")).astype(int), 0, k - 1)
    return bounds, ids


def evaluate(
    spec: ModelSpec, trained: Trained, holdout: Window, champion: Champion | None
) -> Evaluated:
    """Backtest candidate, champion and baseline on the same holdout."""
    frame = FeatureCache(spec.state.features, spec).load(holdout.partitions)
    X, y = _xy(spec, frame)
    candidate = trained.model.predict(X)
    champion_pred = champion.model.predict(X) if champion is not None else None
    bounds, window_ids = split_windows(holdout, spec.gate.backtest_windows, frame[TS])
    gate = spec.gate
    result = backtest(
        window_ids=window_ids,
        window_bounds=bounds,
        max_windows_lost=gate.max_windows_lost,
        slices={col: frame[col].to_numpy() for col in gate.slices},
        max_slice_degradation=gate.max_slice_degradation if gate.slices else None,
        min_slice_rows=gate.min_slice_rows,
        metric=spec.metric,
        task=spec.task,
        y_holdout=y,
        candidate_pred=candidate,
        y_train=trained.y_train,
        holdout_start=holdout.start,
        holdout_end=holdout.end,
        tolerance=spec.gate.tolerance,
        champion_pred=champion_pred,
        champion_version=champion.version if champion else None,
        champion_train_end=champion.train_end if champion else None,
        bootstrap_samples=spec.gate.bootstrap_samples,
        seed=spec.seed,
    )
    baseline = baseline_predictions(spec.task, trained.y_train, len(y), spec.metric)
    return Evaluated(result, frame[TS], y, candidate, baseline, champion_pred)


def sample_rows(spec: ModelSpec, window: Window, n: int = 50) -> pd.DataFrame:
    """A small, seeded sample of a window's model-ready rows (features and label)."""
    frame = FeatureCache(spec.state.features, spec).load(window.partitions)
    return frame.sample(min(n, len(frame)), random_state=spec.seed).sort_values(TS)


def write_evidence(
    directory: Path, spec: ModelSpec, prepared: Prepared, trained: Trained, evaluated: Evaluated
) -> dict[str, Path]:
    """Plots, tables and row samples of one retrain, written to ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for name, window in (("train_sample", prepared.train), ("holdout_sample", prepared.holdout)):
        sample_rows(spec, window).to_csv(directory / f"{name}.csv", index=False)
        out[name] = directory / f"{name}.csv"
    out["backtest_plot"] = backtest_plot(
        directory / "backtest.png",
        evaluated.result,
        evaluated.timestamps,
        evaluated.y,
        evaluated.candidate,
        evaluated.baseline,
        evaluated.champion,
    )
    importance = trained.model.feature_importance()
    importance.to_csv(directory / "feature_importance.csv", index=False)
    out["feature_importance"] = directory / "feature_importance.csv"
    out["importance_plot"] = importance_plot(directory / "feature_importance.png", importance)
    curve = learning_curve_plot(directory / "learning_curve.png", trained.model.evals_result_)
    if curve is not None:
        out["learning_curve"] = curve
    pd.DataFrame(evaluated.result.table()).to_csv(directory / "backtest.csv", index=False)
    out["backtest_table"] = directory / "backtest.csv"
    pd.DataFrame(evaluated.result.window_table()).to_csv(
        directory / "backtest_windows.csv", index=False
    )
    out["backtest_windows"] = directory / "backtest_windows.csv"
    if evaluated.result.slices:
        pd.DataFrame([asdict(sl) for sl in evaluated.result.slices]).to_csv(
            directory / "backtest_slices.csv", index=False
        )
        out["backtest_slices"] = directory / "backtest_slices.csv"
    (directory / "backtest.md").write_text(evaluated.result.markdown())
    out["backtest_report"] = directory / "backtest.md"
    return out


def lineage_tags(
    spec: ModelSpec,
    mode: str,
    reason: str,
    trained: Trained,
    prepared: Prepared,
    evaluated: Evaluated,
    champion_version: str | None,
    actor: str,
) -> dict[str, str]:
    """Tags of a new model version: enough to say, months later, which data, who, why."""
    r = evaluated.result
    tags = {
        "retrain.mode": mode,
        "retrain.reason": reason,
        "retrain.actor": actor,
        "retrain.family": spec.family,
        "retrain.data_version": trained.window.version,
        "retrain.feature_spec_hash": prepared.spec_hash[:16],
        "retrain.window_start": str(trained.window.start),
        "retrain.window_end": str(trained.window.end),
        "retrain.rows": str(trained.rows),
        "retrain.partitions": str(len(trained.window.partitions)),
        "retrain.holdout_start": str(prepared.holdout.start),
        "retrain.holdout_end": str(prepared.holdout.end),
        "retrain.holdout_data_version": prepared.holdout.version,
        "retrain.strategy": trained.plan.strategy,
        "retrain.strategy_reason": trained.plan.reason,
        "retrain.increments": str(trained.plan.increments),
        "retrain.parent_version": trained.plan.parent_version or "none",
        "retrain.champion_at_training": champion_version or "none",
        "retrain.data_versions": ",".join(trained.data_versions),
        "retrain.gate": "passed" if r.passed else "failed",
        f"retrain.backtest.{r.metric}.candidate": f"{r.candidate:.6g}",
        f"retrain.backtest.{r.metric}.baseline": f"{r.baseline:.6g}",
    }
    for key, value in trained.label_stats.items():
        tags[f"retrain.label.{key}"] = f"{value:.6g}"
    if r.champion is not None:
        tags[f"retrain.backtest.{r.metric}.champion"] = f"{r.champion:.6g}"
    return tags


def rebuild(spec: ModelSpec, tags: dict[str, str], registered: Any, parent: Any) -> Trained:
    """Train a registered version again from the feature cache, with its own parameters.

    The training window comes from the version's tags and must have the same data version
    (same partition fingerprints, same feature spec); the trainer's parameters and seed come
    from the registered model itself. Equal ``model_string()`` = byte-identical model.
    """
    if spec.family != "lightgbm":
        raise TrainingError(
            f"`retrain rebuild` checks LightGBM boosters only; {spec.name} has family = "
            f"{spec.family!r}. Its lineage is in `retrain lineage`, its data versions in the tags"
        )
    expected = tags.get("retrain.data_version")
    start, end = tags.get("retrain.window_start"), tags.get("retrain.window_end")
    if not (expected and start and end):
        raise DataError("the version has no retrain.data_version/window tags: cannot rebuild it")
    cutoff = pd.Timestamp(tags.get("retrain.holdout_end", end))
    result = ingest(spec, as_of=cutoff)
    window = make_window(
        "train", pd.Timestamp(start), pd.Timestamp(end), result.partitions, spec.feature_spec_hash()
    )
    if window.version != expected:
        raise DataError(
            f"the data changed since this version was trained: its window now has data version "
            f"{window.version}, the version was trained on {expected}. Restore the source "
            "partitions (or the feature spec) to rebuild it."
        )
    cache = FeatureCache(spec.state.features, spec)
    cache.materialize(window.partitions)
    frame = cache.load(window.partitions)
    X, y = _xy(spec, frame)
    strategy = tags.get("retrain.strategy", "scratch")
    if strategy != "scratch" and parent is None:
        raise TrainingError(f"a {strategy} version needs its parent version to rebuild")
    model = LightGBMTrainer(
        task=registered.task,
        params=registered.params,
        num_boost_round=registered.num_boost_round,
        categorical=registered.categorical,
        random_state=registered.random_state,
        strategy=strategy,
        init_model=parent if strategy != "scratch" else None,
        refit_decay_rate=registered.refit_decay_rate,
        reference_rows=registered.reference_rows,
    ).fit(X, y)
    plan = TrainingPlan(
        strategy,
        "rebuild",
        tags.get("retrain.parent_version"),
        int(tags.get("retrain.increments", 0)),
    )
    return Trained(model, window, len(frame), label_stats(spec.task, y), plan, (window.version,), y)


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
    train_start = pd.Timestamp(champion.tags.get("retrain.window_start", champion.train_end))
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
    # the recommendation family's columns are ids: its signals are age and volume
    features = list(spec.features.columns) if spec.family == "lightgbm" else []
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
    metric_tag = champion.tags.get(f"retrain.backtest.{spec.metric}.candidate")
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
        backtest_metric=float(metric_tag) if metric_tag else None,
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
