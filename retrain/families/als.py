"""The steps of one retrain of the recommendation family (implicit ALS), as plain functions.

Same spine as every family (``retrain.families.spine``): the shared ``prepare`` ingests the
interactions and fills the feature cache (the weight is cached as the "label", the user and item
ids as two categorical columns, see ``ModelSpec``); then

- ``plan``: manual and scheduled runs recompute from scratch on the training window; stateful
  and continual runs fold new and changed users and new items into the champion, a full
  recompute every ``stateful.scratch_every`` fold-ins;
- ``fit_candidate``: a recompute trains on the training window; a fold-in reads only the
  partitions after the champion's training end and appends them to the user x item matrix
  stored with the champion, so every changed user is still solved from all their interactions,
  not only the new rows. When a partition the champion was trained on changed since (a late
  or corrected delivery: the history window's data version differs from the champion's), the
  fold-in reads the FULL history of its lineage instead (from the recompute's window start up
  to the holdout), which finds every user the change touches. With
  ``stateful.compare_with_scratch`` a recompute is fitted too and wins when the fold-in loses
  to it on the holdout;
- ``evaluate``: candidate, champion and the popularity baseline recommend top-k for the users
  active in the holdout (after both models' training end), seen items filtered. Every
  (user, backtest window) pair is one row of the gate: the same gate code as the tabular family
  (baseline, tolerance, paired bootstrap over users, windows lost) on the per-user metric. The
  ranking table by segment (all, warm, cold users) goes with the evidence.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retrain import servable
from retrain.backtest import GateSettings, backtest
from retrain.config import ModelSpec
from retrain.errors import BacktestError, SchemaChangeError, TrainingError
from retrain.families.baseline import baseline_verdict, is_baseline, popularity
from retrain.families.protocol import Family
from retrain.families.spine import (
    Champion,
    Evaluated,
    Prepared,
    Scored,
    Trained,
    champion_comparison,
    evidence_tables,
    increment_window,
    serving_prepared,
    source_rows,
    split_windows,
)
from retrain.features import FeatureCache, Window, make_window
from retrain.freshness import last_row
from retrain.ingest import TS
from retrain.promotion import baseline_asked
from retrain.ranking import (
    RankingBacktest,
    RelevantUsers,
    evaluate_ranking,
    ranking_backtest,
    relevant_items,
    user_metrics,
)
from retrain.stateful import STATEFUL_MODES, TrainingPlan, scratch
from retrain.trainers.als import SHARED, ALSTrainer
from retrain.trainers.interactions import check_window
from retrain.trainers.popularity import PopularityRecommender

logger = logging.getLogger(__name__)

# column of ``ranking.user_metrics`` that holds each spec metric
METRIC_COLUMN = {"ndcg": "ndcg", "map": "ap", "precision": "precision"}


@dataclass(frozen=True)
class RankingEvaluated(Evaluated):
    """The gate's per-row scores (a row: one user in one backtest window) and the segments."""

    ranking: RankingBacktest | None = field(repr=False, default=None)


def _columns(spec: ModelSpec) -> tuple[str, str]:
    if spec.interactions is None:
        raise TrainingError(f"spec {spec.name} is not an ALS spec: it has no [interactions]")
    return spec.interactions.user, spec.interactions.item


def interactions(spec: ModelSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """Cached rows as the trainers' ``user, item, weight, ts`` table (ids as strings).

    The ids' string array is used as it is (the frame's inference of the same strings from an
    object array gave the same column at about 15x the CPU)."""
    user, item = _columns(spec)
    return pd.DataFrame(
        {
            "user": frame[user].astype(str).array,
            "item": frame[item].astype(str).array,
            "weight": frame[spec.label].to_numpy(dtype="float64"),
            "ts": pd.to_datetime(frame[TS]).to_numpy(),
        }
    )


def load_interactions(spec: ModelSpec, window: Window, materialize: bool = True) -> pd.DataFrame:
    """The interactions of ``window`` from the feature cache (``materialize``: computing the
    partitions not cached first; without, a missing or damaged file is still recomputed when
    it is read, ``FeatureCache.read_table``)."""
    cache = FeatureCache(spec.state.features, spec)
    if materialize:
        cache.materialize(window.partitions)
    return interactions(spec, cache.load(window.partitions))


def make_trainer(
    spec: ModelSpec,
    strategy: str = "scratch",
    init_model: ALSTrainer | None = None,
    foldin_data: str = "history",
    client: Any = None,
) -> ALSTrainer:
    als = spec.als
    return ALSTrainer(
        factors=als.factors,
        regularization=als.regularization,
        alpha=als.alpha,
        iterations=als.iterations,
        random_state=spec.seed,
        confidence=als.confidence,
        min_rating=als.min_rating,
        strategy="recompute" if strategy == "scratch" else "foldin",
        init_model=init_model if strategy != "scratch" else None,
        num_threads=1,
        popularity_window=als.popularity_window,
        duplicates=als.duplicates,
        bm25_k1=als.bm25_k1,
        bm25_b=als.bm25_b,
        refresh_items=als.refresh_items,
        foldin_data=foldin_data,
        foldin_solver=als.foldin_solver,
        client=client,
    )


def plan(mode: str, spec: ModelSpec, champion: Champion | None) -> TrainingPlan:
    """Recompute or fold in (pure decision, like ``stateful.plan_training``)."""
    if mode not in STATEFUL_MODES:
        return scratch(f"{mode} mode recomputes from scratch")
    if champion is None:
        return scratch("no champion to fold in to: first model of the lineage")
    if is_baseline(champion.model):
        return scratch(
            f"champion v{champion.version} is the popularity baseline: nothing to fold in to, "
            "full recompute instead"
        )
    model = champion.model
    wanted = make_trainer(spec)
    changed = [
        f"{name} {getattr(model, name)!r} -> {getattr(wanted, name)!r}"
        for name in SHARED
        if getattr(model, name) != getattr(wanted, name)
    ]
    if changed:
        detail = "; ".join(changed)
        if spec.stateful.on_schema_change == "scratch":
            return scratch(f"ALS settings changed since champion v{champion.version} ({detail})")
        raise SchemaChangeError(
            f"cannot fold in to champion v{champion.version}: {detail}. Recompute "
            "(`retrain run manual`), or set stateful.on_schema_change = 'scratch'"
        )
    increments = int(model.increments_) + 1
    every = spec.stateful.scratch_every
    if increments > every:
        return scratch(
            f"full recompute: {model.increments_} fold-ins since the last recompute "
            f"(stateful.scratch_every = {every})"
        )
    return TrainingPlan(
        "foldin",
        f"fold-in to champion v{champion.version} (increment {increments} of {every})",
        champion.version,
        increments,
    )


def _history_window(spec: ModelSpec, prepared: Prepared, champion: Champion) -> Window:
    """The champion's lineage history (from its recompute's window start) up to the holdout."""
    start = champion.lineage.window_start
    if start is None:
        raise TrainingError(
            f"champion v{champion.version} has no retrain.window_start tag: a fold-in needs "
            "the start of its history; recompute (`retrain run manual`)"
        )
    return make_window(
        "train",
        start,
        prepared.holdout.start,
        prepared.ingest.partitions,
        prepared.spec_hash,
    )


def _stats(model: ALSTrainer, frame: pd.DataFrame) -> dict[str, float]:
    return {
        "interactions": float(len(frame)),
        "users": float(model.user_index_.size),
        "items": float(model.item_index_.size),
        "positives": float(model.user_items_.nnz),
        "users_updated": float(model.updated_users_.size),
        "items_new": float(model.new_items_.size),
    }


def _increment(
    spec: ModelSpec, prepared: Prepared, champion: Champion, start: pd.Timestamp
) -> Window | None:
    """The partitions after the champion's training end, when the champion's own history (from
    ``start``, its lineage's window start) is unchanged; None when the fold-in must read the
    full history (and why is logged)."""
    if champion.train_end is None or not hasattr(champion.model, "recent_ts_"):
        logger.info(
            "champion v%s was saved without the state an increment fold-in needs: folding in "
            "from the full history",
            champion.version,
        )
        return None
    before = make_window(
        "history", start, champion.train_end, prepared.ingest.partitions, prepared.spec_hash
    )
    wanted = check_window(spec.als.popularity_window)
    kept = check_window(champion.model.popularity_window)
    if wanted > kept:
        logger.info(
            "als.popularity_window %s is longer than champion v%s's %s (the span of recent rows "
            "it kept): folding in from the full history",
            spec.als.popularity_window,
            champion.version,
            champion.model.popularity_window,
        )
        return None
    trained_on = champion.lineage.data_version
    if before.version != trained_on:
        logger.info(
            "the partitions champion v%s was trained on changed since (data version %s, now %s): "
            "folding in from the full history",
            champion.version,
            trained_on,
            before.version,
        )
        return None
    return increment_window(spec, prepared, champion.train_end)


def fit(
    spec: ModelSpec, prepared: Prepared, plan: TrainingPlan, champion: Champion | None
) -> Trained:
    """Train the planned candidate: a recompute on the training window, or a fold-in.

    A fold-in's window is its lineage's whole history (what the model has seen, recorded in its
    tags); it reads only the increment when it can (see the module's docstring)."""
    if plan.strategy == "scratch":
        frame = load_interactions(spec, prepared.train)
        model = make_trainer(spec).fit(frame)
        return Trained(
            model,
            prepared.train,
            len(frame),
            _stats(model, frame),
            plan,
            (prepared.train.version,),
            np.empty(0),
            last_row(frame["ts"]),
            rows_read=frame,
        )
    if champion is None:
        raise TrainingError("a fold-in needs the champion")
    history = _history_window(spec, prepared, champion)
    increment = _increment(spec, prepared, champion, history.start)
    read, foldin_data = (history, "history") if increment is None else (increment, "increment")
    frame = load_interactions(spec, read)
    with _foldin_client(spec) as client:
        trainer = make_trainer(spec, plan.strategy, champion.model, foldin_data, client)
        model = trainer.fit(frame)
    model.client = None
    lineage = champion.data_versions
    data_versions = lineage if lineage and lineage[-1] == read.version else (*lineage, read.version)
    # a fold-in's newest row: the increment's (or the full history's) last row
    return Trained(
        model,
        history,
        len(frame),
        _stats(model, frame),
        plan,
        data_versions,
        np.empty(0),
        last_row(frame["ts"]),
        rows_read=frame if read is history else None,
    )


def _foldin_client(spec: ModelSpec) -> contextlib.AbstractContextManager[Any]:
    """With ``compute.engine = "dask"``: a Dask client the fold-in solves its users on (a
    recompute stays in this process: implicit's ALS is single-node on CPU)."""
    if spec.compute.engine != "dask":
        return contextlib.nullcontext()
    from retrain.trainers.lightgbm_dask import dask_client

    return dask_client(spec.compute.scheduler, workers=spec.compute.workers)


def fit_candidate(
    spec: ModelSpec, prepared: Prepared, plan: TrainingPlan, champion: Champion | None
) -> Trained:
    """Fit as planned; with ``stateful.compare_with_scratch`` a recompute wins over a fold-in
    that loses to it on the holdout."""
    trained = fit(spec, prepared, plan, champion)
    if plan.strategy == "scratch" or not spec.stateful.compare_with_scratch:
        return trained
    rival = fit(spec, prepared, scratch("compared with the fold-in"), None)
    fold = evaluate(spec, trained, prepared.holdout, None).result.candidate
    full = evaluate(spec, rival, prepared.holdout, None).result.candidate
    if full - fold > spec.gate.tolerance * abs(full):
        reason = (
            f"fold-in lost to a full recompute on the holdout ({spec.metric}@{spec.als.k} "
            f"{fold:.4f} vs {full:.4f}): full recompute instead"
        )
        logger.info(reason)
        return replace(rival, plan=scratch(reason))
    note = f"{plan.reason}; beat a full recompute on the holdout ({fold:.4f} vs {full:.4f})"
    return replace(trained, plan=replace(plan, reason=note))


def refit(
    spec: ModelSpec, prepared: Prepared, validated: Trained, champion: Champion | None
) -> Trained:
    """The validated recipe (recompute, or fold-in into the champion) fitted again on the
    interactions up to the as-of: the model registered and served when ``gate.refit`` is on.
    Its popularity fallback is refitted with it."""
    parent = champion if validated.plan.strategy != "scratch" else None
    return fit(spec, serving_prepared(spec, prepared), validated.plan, parent)


def _window_scores(
    metric: str,
    recs: pd.DataFrame,
    relevant: list[pd.DataFrame],
    k: int,
    scored: pd.DataFrame | None = None,
) -> np.ndarray:
    """Per-user scores of each window's users, window by window (``scored``: the
    ``user_metrics`` of the only window, already computed)."""
    column = METRIC_COLUMN[metric]
    if scored is not None and len(relevant) == 1:
        return scored[column].to_numpy(dtype="float64")
    parts = [user_metrics(recs, rel, k)[column].to_numpy(dtype="float64") for rel in relevant]
    return np.concatenate(parts) if parts else np.empty(0)


def evaluate(
    spec: ModelSpec, trained: Trained, holdout: Window, champion: Champion | None
) -> RankingEvaluated:
    """Ranking backtest of candidate, champion and popularity on the same holdout users.

    Each model recommends once, for every user active in the holdout; the popularity baseline
    is fitted once: the segment table and the per-window scores the gate judges share them."""
    als = spec.als
    comparison = champion_comparison(holdout, champion, spec.gate.refit, spec.gate.equal_staleness)
    holdout, note, versus = comparison.holdout, comparison.note, comparison.model
    # the fit's own table of its window when it read it whole (the same rows), else read;
    # the gate's windows were materialised by prepare (a missing file is recomputed on read)
    train = trained.rows_read
    # the candidate's fit of this very table (a recompute that read its window whole): its
    # item map and popularity order are the baseline's when it dropped no row
    ranked = trained.model if train is not None and trained.plan.strategy == "scratch" else None
    if train is None:
        train = load_interactions(spec, trained.window, materialize=False)
    held = load_interactions(spec, holdout, materialize=False)
    after = (pd.to_datetime(held["ts"]) >= holdout.start).to_numpy()
    if not after.all():  # a holdout judged from the champion's training end on
        held = held[after]
    bounds, window_ids = split_windows(holdout, spec.gate.backtest_windows, held["ts"])
    relevant = [
        relevant_items(train, held[window_ids == i], als.min_rating) for i in range(len(bounds))
    ]
    kept = [(i, rel) for i, rel in enumerate(relevant) if not rel.empty]
    users = sorted(set().union(*(rel["user"].unique().tolist() for _, rel in kept)))
    try:
        baseline = popularity(train, als.popularity_window, als.min_rating, ranked)
    except TrainingError as exc:
        raise BacktestError(f"cannot fit the popularity baseline: {exc}") from exc
    models: dict[str, ALSTrainer | PopularityRecommender] = {
        "candidate": trained.model,
        "popularity": baseline,
    }
    if versus is not None:
        models["champion"] = versus
    recs = (
        {name: model.recommend(users, k=als.k, filter_seen=True) for name, model in models.items()}
        if users
        else {}
    )
    # one window: its per-user scores are those of the segment table, computed once
    one = relevant[0] if len(relevant) == 1 and not relevant[0].empty else None
    scored: dict[str, pd.DataFrame] = {}
    if one is not None:
        shared = RelevantUsers.of(one)  # the relevant side of every model's scores, once
        scored = {n: user_metrics(r, one, als.k, shared) for n, r in recs.items()}
    ranking = ranking_backtest(
        trained.model,
        train,
        held,
        k=als.k,
        popularity_window=als.popularity_window,
        min_rating=als.min_rating,
        champion=versus,
        baseline=baseline,
        recommendations=recs,
        # one window: its relevant pairs are the whole holdout's
        relevant=relevant[0] if len(relevant) == 1 else None,
        user_scores=scored,
        # the popularity fit above checked this very table (check_interactions)
        train_checked=True,
    )
    rels = [rel for _, rel in kept]
    row_window = np.concatenate([np.full(len(rel["user"].unique()), i) for i, rel in kept])

    def window_scores(name: str) -> np.ndarray:
        return _window_scores(spec.metric, recs[name], rels, als.k, scored.get(name))

    candidate = window_scores("candidate")
    base = window_scores("popularity")
    champ = None if versus is None else window_scores("champion")
    gate = spec.gate
    settings = GateSettings.from_spec(spec)
    judged: dict[str, Any] = dict(
        y_holdout=np.zeros(candidate.size),
        y_train=np.empty(0),
        holdout_start=holdout.start,
        holdout_end=holdout.end,
        champion_pred=champ,
        champion_version=champion.version if champion else None,
        champion_train_end=comparison.train_end,
        window_ids=row_window,
        window_bounds=bounds,
    )
    result = backtest(settings, candidate_pred=candidate, baseline_pred=base, **judged)
    verdict = None
    refresh = champion is not None and is_baseline(champion.model)
    if gate.promote_baseline and baseline_asked(result, refresh):
        verdict = baseline_verdict(settings, candidate, base, refresh, **judged)
    if note:
        result = replace(result, reasons=(*result.reasons, note))
    starts = pd.Series([bounds[i][0] for i in row_window], dtype="datetime64[ns]")
    return RankingEvaluated(
        result,
        starts,
        np.zeros(candidate.size),
        candidate,
        base,
        champ,
        verdict,
        refresh,
        comparison,
        ranking=ranking,
    )


def write_evidence(
    directory: Path, spec: ModelSpec, prepared: Prepared, trained: Trained, evaluated: Evaluated
) -> dict[str, Path]:
    """Plot, tables and row samples of one ALS retrain, written to ``directory``."""
    result = evaluated.result
    out = evidence_tables(directory, spec, prepared, result)
    if spec.reports.wants_plots(result.passed):
        from retrain.reports import window_plot  # matplotlib loads only when a plot is drawn

        out["backtest_plot"] = window_plot(
            directory / "backtest.png",
            result,
            metric_label=f"{spec.metric}@{spec.als.k}",
            baseline_label="popularity",
        )
    report = result.markdown()
    ranking = getattr(evaluated, "ranking", None)
    if ranking is not None:
        pd.DataFrame(ranking.table()).to_csv(directory / "ranking_segments.csv", index=False)
        out["ranking_segments"] = directory / "ranking_segments.csv"
        report += "\n\n### Ranking metrics by user segment\n\n" + ranking.markdown()
    (directory / "backtest.md").write_text(report)
    out["backtest_report"] = directory / "backtest.md"
    model: ALSTrainer = trained.model
    pd.DataFrame(
        {"user": model.updated_users_, "new": np.isin(model.updated_users_, model.new_users_)}
    ).to_csv(directory / "updated_users.csv", index=False)
    out["updated_users"] = directory / "updated_users.csv"
    return out


def signature_sample(spec: ModelSpec, prepared: Prepared) -> pd.DataFrame:
    """A few queries for the served model's signature and input example: the user ids of raw
    holdout rows, in the source's user column with the source's type."""
    user, _ = _columns(spec)
    return source_rows(spec, prepared.holdout, n=5)[[user]]


def serving_inputs(spec: ModelSpec) -> servable.QueryInputs:
    """A served recommender reads user ids from the source's user column (or ``user``)."""
    user, _ = _columns(spec)
    return servable.QueryInputs(user=user)


def score_step(spec: ModelSpec, model: Any, rows: pd.DataFrame, before: pd.DataFrame) -> Scored:
    """Score a recommender on unseen rows: top-k for the users active in them, on the items
    they had not interacted with ``before``. ``rows`` counts the users scored; the metric is
    NaN when nobody found a new item."""
    user, _ = _columns(spec)
    # only these users matter (their seen items, warm or cold): a smaller table
    mine = before[before[user].isin(rows[user].unique())]
    train = interactions(spec, mine if len(mine) else before)
    held = interactions(spec, rows)
    if relevant_items(train, held, spec.als.min_rating).empty:
        return Scored(0, math.nan)
    scores = evaluate_ranking(
        model, train, held, k=spec.als.k, min_rating=spec.als.min_rating
    ).segment("all")
    return Scored(scores.users, float(getattr(scores, spec.metric)))


def rebuild(spec: ModelSpec, tags: Mapping[str, str], registered: Any, parent: Any) -> Trained:
    """Not offered: an ALS fit is not bit-reproducible across thread schedules."""
    raise TrainingError(
        f"`retrain rebuild` checks LightGBM boosters only; {spec.name} has family = "
        f"{spec.family!r}. Its lineage is in `retrain lineage`, its data versions in the tags"
    )


class ALSFamily:
    """The recommendation family's steps (see the module's docstring)."""

    name = "als"

    def metric_name(self, spec: ModelSpec) -> str:
        return f"{spec.metric}@{spec.als.k}"

    def plan(self, mode: str, spec: ModelSpec, champion: Champion | None) -> TrainingPlan:
        return plan(mode, spec, champion)

    def fit(
        self, spec: ModelSpec, prepared: Prepared, plan: TrainingPlan, champion: Champion | None
    ) -> Trained:
        return fit(spec, prepared, plan, champion)

    def fit_candidate(
        self, spec: ModelSpec, prepared: Prepared, plan: TrainingPlan, champion: Champion | None
    ) -> Trained:
        return fit_candidate(spec, prepared, plan, champion)

    def refit(
        self, spec: ModelSpec, prepared: Prepared, validated: Trained, champion: Champion | None
    ) -> Trained:
        return refit(spec, prepared, validated, champion)

    def rebuild(
        self, spec: ModelSpec, tags: Mapping[str, str], registered: Any, parent: Any
    ) -> Trained:
        return rebuild(spec, tags, registered, parent)

    def evaluate(
        self, spec: ModelSpec, trained: Trained, holdout: Window, champion: Champion | None
    ) -> Evaluated:
        return evaluate(spec, trained, holdout, champion)

    def write_evidence(
        self,
        directory: Path,
        spec: ModelSpec,
        prepared: Prepared,
        trained: Trained,
        evaluated: Evaluated,
    ) -> dict[str, Path]:
        return write_evidence(directory, spec, prepared, trained, evaluated)

    def baseline(self, spec: ModelSpec, frame: pd.DataFrame) -> PopularityRecommender:
        return popularity(
            interactions(spec, frame), spec.als.popularity_window, spec.als.min_rating
        )

    def signature_sample(
        self, spec: ModelSpec, prepared: Prepared, trained: Trained
    ) -> pd.DataFrame:
        return signature_sample(spec, prepared)

    def serving_inputs(self, spec: ModelSpec) -> servable.QueryInputs:
        return serving_inputs(spec)

    def curves(self, trained: Trained) -> Mapping[str, list[float]]:
        return {}

    def predict_params(self, spec: ModelSpec) -> dict[str, Any]:
        return {"k": spec.als.k}

    def score(
        self, spec: ModelSpec, model: Any, rows: pd.DataFrame, before: pd.DataFrame
    ) -> Scored:
        return score_step(spec, model, rows, before)

    def pooled(self, spec: ModelSpec, scored: Sequence[Scored]) -> float:
        counted = [s for s in scored if s.rows]
        users = sum(s.rows for s in counted)
        return math.fsum(s.value * s.rows for s in counted) / users if users else math.nan

    def monitored_features(self, spec: ModelSpec) -> list[str]:
        # the columns are ids: the monitor's signals are age and volume
        return []


FAMILY: Family = ALSFamily()
