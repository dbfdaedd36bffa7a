"""Ranking backtest: top-k recommendations scored on a later, unseen period.

A time split: the holdout's rows are strictly after the training end. The users scored are the
users *active* in the holdout: those with at least one relevant item, i.e. a holdout positive
(weight > 0 and >= ``min_rating`` when set) that they had not seen in training (items seen in
training are filtered from every recommendation list, so they can never count). Users seen in
training are WARM, the others COLD (new users, whom a factor model can only serve a fallback);
each segment is reported on its own, beside all users together. The popularity baseline (the
most popular items of the last ``popularity_window`` of training, seen items filtered) is scored
on the same users.

Metrics, per user, averaged over the users of a segment, with R the user's relevant items and
hit(i) = 1 when the item at rank i is in R:

- precision@k = hits in the top k / k (the usual definition: a user with fewer than k relevant
  items cannot reach 1). implicit's ``ranking_metrics_at_k`` reports instead
  sum(hits) / sum(min(k, |R|)) over all users (``implicit_precision`` in ``user_metrics``);
- MAP@k = mean over users of sum_i hit(i) * precision@i / min(k, |R|) (as implicit);
- NDCG@k = DCG / IDCG with binary gains and 1/log2(i + 1) discounts, IDCG over min(k, |R|)
  items (as implicit).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd

from retrain.errors import BacktestError, TrainingError
from retrain.servable import arrow_strings
from retrain.trainers.interactions import check_interactions, positive_mask
from retrain.trainers.popularity import PopularityRecommender

SEGMENTS = ("all", "warm", "cold")


class Recommender(Protocol):
    def recommend(
        self, user_ids: Sequence[Any], k: int = 10, filter_seen: bool = True
    ) -> pd.DataFrame: ...


@dataclass(frozen=True)
class SegmentScores:
    """The metrics of one user segment (NaN when the segment has no user)."""

    users: int
    precision: float
    map: float
    ndcg: float
    # users served by a popularity fallback instead of the model itself
    fallback_users: int


@dataclass(frozen=True)
class RankingScores:
    """One model's metrics on the holdout: all active users, then warm and cold ones."""

    model: str
    k: int
    all: SegmentScores
    warm: SegmentScores
    cold: SegmentScores

    def segment(self, name: str) -> SegmentScores:
        if name not in SEGMENTS:
            raise BacktestError(f"segment {name!r} is unknown; use one of {SEGMENTS}")
        return getattr(self, name)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class RankingBacktest:
    """Candidate, champion (if any) and the popularity baseline on the same holdout users."""

    k: int
    train_end: str
    holdout_start: str
    holdout_end: str
    popularity_window: str
    candidate: RankingScores
    baseline: RankingScores
    champion: RankingScores | None = None

    @property
    def models(self) -> tuple[RankingScores, ...]:
        scored = [self.candidate]
        if self.champion is not None:
            scored.append(self.champion)
        return (*scored, self.baseline)

    def table(self) -> list[dict[str, Any]]:
        """One row per model and segment."""
        return [
            {
                "model": scores.model,
                "segment": name,
                **asdict(scores.segment(name)),
            }
            for scores in self.models
            for name in SEGMENTS
        ]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        k = self.k
        lines = [
            f"Holdout `{self.holdout_start}` to `{self.holdout_end}` (training ends "
            f"`{self.train_end}`); seen items filtered; baseline: the most popular items of the "
            f"last {self.popularity_window} of training.",
            "",
            f"| model | segment | users | precision@{k} | MAP@{k} | NDCG@{k} | fallback users |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in self.table():
            lines.append(
                f"| {row['model']} | {row['segment']} | {row['users']} | "
                f"{row['precision']:.4f} | {row['map']:.4f} | {row['ndcg']:.4f} | "
                f"{row['fallback_users']} |"
            )
        return "\n".join(lines)


def _check_split(
    train: pd.DataFrame, holdout: pd.DataFrame, train_checked: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame, Any, Any]:
    """Both tables checked, the training end and the holdout's start."""
    try:
        train = train if train_checked else check_interactions(train)
        holdout = check_interactions(holdout)
    except TrainingError as exc:
        raise BacktestError(f"cannot backtest: {exc}") from exc
    train_end, holdout_start = train["ts"].max(), holdout["ts"].min()
    if holdout_start <= train_end:
        raise BacktestError(
            f"the holdout starts at {holdout_start}, not after the training end {train_end}: "
            "a ranking backtest needs a time split; take the holdout rows strictly after the "
            "training window"
        )
    return train, holdout, train_end, holdout_start


def relevant_items(
    train: pd.DataFrame, holdout: pd.DataFrame, min_rating: float | None = None
) -> pd.DataFrame:
    """(user, item) pairs to find: holdout positives the user had not seen in training."""
    weights = holdout["weight"].to_numpy(dtype="float64")
    positives = holdout.loc[positive_mask(weights, min_rating), ["user", "item"]]
    # each pair as one integer key of (user code, item code) among the holdout's positives:
    # hash lookups of the ids instead of tuples (a MultiIndex of Arrow strings)
    user_codes, users = pd.factorize(positives["user"])
    item_codes, items = pd.factorize(positives["item"])
    n_items = max(len(items), 1)
    keys = user_codes.astype("int64") * n_items + item_codes
    # the first row of each pair, in their order (drop_duplicates)
    _, first = np.unique(keys, return_index=True)
    first.sort()
    # only the holdout users' training rows can hide a pair, and only with a holdout item
    train_user = positions(pd.Index(users), train["user"])
    mine = train_user >= 0
    train_item = positions(pd.Index(items), train["item"][mine])
    known = train_item >= 0
    seen = train_user[mine][known].astype("int64") * n_items + train_item[known]
    # the pairs not among them (what a left merge's "left_only" rows are)
    fresh = first[~np.isin(keys[first], seen)]
    return positives.iloc[fresh].reset_index(drop=True)


@dataclass(frozen=True)
class RelevantUsers:
    """What :func:`user_metrics` reads of a ``relevant`` table, computed once for every model
    scored on it: its users (in order of first appearance), their relevant counts, each
    relevant row's user code and item id."""

    users: pd.Index
    counts: np.ndarray
    row_user: np.ndarray
    items: np.ndarray

    @classmethod
    def of(cls, relevant: pd.DataFrame) -> RelevantUsers:
        n_relevant = relevant.groupby("user", sort=False).size()
        users = n_relevant.index
        return cls(
            users,
            n_relevant.to_numpy(dtype="int64"),
            users.get_indexer(relevant["user"].to_numpy()),
            relevant["item"].to_numpy(dtype=object),
        )


def user_metrics(
    recommendations: pd.DataFrame,
    relevant: pd.DataFrame,
    k: int,
    shared: RelevantUsers | None = None,
) -> pd.DataFrame:
    """Per-user precision@k, AP@k and NDCG@k for every user of ``relevant``.

    ``recommendations`` has ``user, rank, item`` (rank 1 is the best); ranks above k are ignored.
    Returns ``user, relevant, hits, precision, ap, ndcg, implicit_precision_den`` (the last is
    min(k, |R|): sum(hits) / sum(den) is implicit's precision). Users without any
    recommendation score 0. ``shared``: ``RelevantUsers.of(relevant)``, when several models
    are scored on the same pairs.
    """
    missing = [c for c in ("user", "rank", "item") if c not in recommendations.columns]
    if missing:
        raise BacktestError(f"recommendations lack column(s) {missing}: need user, rank, item")
    shared = RelevantUsers.of(relevant) if shared is None else shared
    users = shared.users
    n_users = len(users)
    # vectorised over every (user, recommendation): integer codes instead of pandas merges
    rank_all = recommendations["rank"].to_numpy()
    top = rank_all <= k
    rec_user = users.get_indexer(recommendations["user"].to_numpy()[top])
    mine = rec_user >= 0
    rec_user, rank = rec_user[mine], rank_all[top][mine].astype("float64")
    rec_item_ids = recommendations["item"].to_numpy()[top][mine]
    rel_user = shared.row_user
    item_codes, _ = pd.factorize(np.concatenate([shared.items, rec_item_ids.astype(object)]))
    n_items = int(item_codes.max()) + 1 if item_codes.size else 1
    rel_key = rel_user.astype("int64") * n_items + item_codes[: len(rel_user)]
    rec_key = rec_user.astype("int64") * n_items + item_codes[len(rel_user) :]
    # a (user, item) recommended twice counts once, at its first row
    _, first = np.unique(rec_key, return_index=True)
    first.sort()
    rec_user, rank, rec_key = rec_user[first], rank[first], rec_key[first]
    # each user's list in rank order (ties keep the given order)
    order = np.lexsort((rank, rec_user))
    rec_user, rank = rec_user[order], rank[order]
    hit = np.isin(rec_key[order], rel_key).astype("float64")
    cum = np.cumsum(hit)
    starts = np.searchsorted(rec_user, rec_user, side="left")
    cum_hits = cum - np.concatenate([[0.0], cum])[starts]
    hits = np.bincount(rec_user, weights=hit, minlength=n_users)
    ap = np.bincount(rec_user, weights=hit * cum_hits / rank, minlength=n_users)
    dcg = np.bincount(rec_user, weights=hit / np.log2(rank + 1.0), minlength=n_users)
    n_rel = shared.counts
    den = np.minimum(n_rel, k)
    ideal = np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))[den - 1]
    return pd.DataFrame(
        {
            "user": users.to_numpy(),
            "relevant": n_rel,
            "hits": hits.astype("int64"),
            "precision": hits / k,
            "ap": ap / den,
            "ndcg": dcg / ideal,
            "implicit_precision_den": den,
        }
    )


def member(values: pd.Series, of: Any) -> np.ndarray:
    """``values.isin(of)`` as a boolean array, by one hash lookup per value: pandas' ``isin`` of
    an Arrow-backed string column builds an Arrow scalar for every element of ``of``, about
    30 us each (the training users of a large window would cost seconds)."""
    return positions(pd.Index(of).unique(), values) >= 0


def positions(keys: pd.Index, values: Any) -> np.ndarray:
    """``keys.get_indexer(values)`` (``keys`` distinct): each value's position among ``keys``,
    -1 when absent. Arrow strings on both sides are matched by Arrow's ``index_in``: pandas
    builds a Python string of every value to hash it (about ten times the CPU). Missing
    values go through pandas."""
    column, wanted = arrow_strings(values), arrow_strings(keys)
    # a missing id is matched as pandas does (which depends on both dtypes)
    if column is None or wanted is None or column.null_count or wanted.null_count:
        return np.asarray(keys.get_indexer(values), dtype="int64")
    import pyarrow.compute as pc  # the columns are Arrow's already

    found = pc.index_in(column, value_set=wanted.cast(column.type))
    return np.asarray(found.fill_null(-1).to_numpy(), dtype="int64")


class _WarmUsers:
    """The warm mask of scored users, ``member(users, train_users)``, found by one lookup of
    the training rows' users among the scored ones (a few holdout users against a window of
    rows: no distinct set of the window's users is built) and computed once for the models
    scored on the same users (each model's per-user table lists the relevant users in the
    same order)."""

    def __init__(self, train_users: pd.Series) -> None:
        self.train_users = train_users
        self.users: np.ndarray | None = None
        self.mask: np.ndarray | None = None

    def __call__(self, users: pd.Series) -> np.ndarray:
        values = np.asarray(users.to_numpy())
        if self.mask is not None and self.users is not None and _same(self.users, values):
            return self.mask
        keys = pd.Index(users)
        if not keys.is_unique:  # (never for per-user tables) the plain membership test
            mask = member(users, pd.Index(self.train_users.unique()))
        else:
            mask = np.zeros(len(values), dtype=bool)
            found = positions(keys, self.train_users)
            mask[found[found >= 0]] = True
        self.users, self.mask = values, mask
        return mask


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool((a == b).all())


def _segment(
    metrics: Mapping[str, np.ndarray], mask: np.ndarray, fallback: np.ndarray
) -> SegmentScores:
    """``metrics``: the per-user ``precision``, ``ap`` and ``ndcg`` columns as float64 arrays
    (taken from the per-user table once for the three segments)."""
    users = int(mask.sum())
    if users == 0:
        nan = float("nan")
        return SegmentScores(users=0, precision=nan, map=nan, ndcg=nan, fallback_users=0)
    # pandas' mean of the masked rows (NaN skipped), without building the masked frame
    return SegmentScores(
        users=users,
        precision=_mean(metrics["precision"], mask),
        map=_mean(metrics["ap"], mask),
        ndcg=_mean(metrics["ndcg"], mask),
        fallback_users=int(fallback[mask].sum()),
    )


def _mean(column: np.ndarray, mask: np.ndarray) -> float:
    values = column[mask]
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else float("nan")


def _score(
    name: str,
    model: Recommender,
    relevant: pd.DataFrame,
    warm_users: pd.Index | None,
    k: int,
    fallback_source: str,
    recs: pd.DataFrame | None = None,
    metrics: pd.DataFrame | None = None,
    warm_of: Callable[[pd.Series], np.ndarray] | None = None,
    users: pd.Series | None = None,
) -> RankingScores:
    """``recs``: the model's lists already computed for (at least) every user of ``relevant``
    (with ``filter_seen``, the top ``k`` or more); they are computed here otherwise.
    ``metrics``: ``user_metrics(recs, relevant, k)`` of those lists, already computed.
    ``warm_of``: the warm mask of the scored users (``member(scored, warm_users)``), when the
    caller computes it once for every model; ``users``: ``relevant["user"].drop_duplicates()``,
    already computed."""
    if users is None:
        users = relevant["user"].drop_duplicates()
    if recs is None or not member(users, recs["user"]).all():
        recs, metrics = model.recommend(users.tolist(), k=k, filter_seen=True), None
    if metrics is None:
        metrics = user_metrics(recs, relevant, k)
    warm = member(metrics["user"], warm_users) if warm_of is None else warm_of(metrics["user"])
    # the users a fallback served (by their rows' source, compared as Python objects: what
    # the column's ``==`` gives), none without such a row
    served_by = (
        recs["source"].to_numpy(dtype=object) == fallback_source
        if "source" in recs.columns
        else np.zeros(len(recs), dtype=bool)
    )
    fallback = (
        member(metrics["user"], recs["user"].to_numpy()[served_by])
        if served_by.any()
        else np.zeros(len(metrics), dtype=bool)
    )
    everyone = np.ones(len(metrics), dtype=bool)
    columns = {c: metrics[c].to_numpy(dtype="float64") for c in ("precision", "ap", "ndcg")}
    return RankingScores(
        model=name,
        k=k,
        all=_segment(columns, everyone, fallback),
        warm=_segment(columns, warm, fallback),
        cold=_segment(columns, ~warm, fallback),
    )


def evaluate_ranking(
    model: Recommender,
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    *,
    k: int = 10,
    min_rating: float | None = None,
    name: str = "model",
) -> RankingScores:
    """One model's precision/MAP/NDCG@k on the users active in the holdout, by segment."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise BacktestError(f"k must be a positive integer, got {k!r}")
    train, holdout, _, _ = _check_split(train, holdout)
    relevant = relevant_items(train, holdout, min_rating)
    if relevant.empty:
        raise BacktestError(
            "no user has a relevant holdout item (a positive not seen in training): widen the "
            "holdout window or lower min_rating"
        )
    _check_model_end(model, holdout)
    return _score(name, model, relevant, pd.Index(train["user"].unique()), k, "popularity")


def _check_model_end(
    model: Recommender, holdout: pd.DataFrame, start: pd.Timestamp | None = None
) -> None:
    """``start``: the holdout's first timestamp, already found."""
    end = getattr(model, "train_end_", None)
    start = holdout["ts"].min() if start is None else start
    if end is not None and pd.Timestamp(end) >= start:
        raise BacktestError(
            f"the model trained on data up to {end}, inside the holdout that starts at {start}: "
            "the comparison would not be fair; score it on a holdout after its training end"
        )


def ranking_backtest(
    candidate: Recommender,
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    *,
    k: int = 10,
    popularity_window: str | pd.Timedelta = "30D",
    min_rating: float | None = None,
    champion: Recommender | None = None,
    baseline: Recommender | None = None,
    recommendations: Mapping[str, pd.DataFrame] | None = None,
    relevant: pd.DataFrame | None = None,
    user_scores: Mapping[str, pd.DataFrame] | None = None,
    train_checked: bool = False,
) -> RankingBacktest:
    """Candidate, champion and the popularity baseline, scored on the same holdout users.

    ``train`` is the candidate's training history (it defines which items each user has seen
    and which users are warm); every model must have finished training before the holdout.
    ``baseline``: the popularity model already fitted on ``train`` with ``popularity_window``
    and ``min_rating`` (fitted here otherwise). ``recommendations``: each model's top-k lists
    (seen items filtered) already computed for the holdout's users, by model name
    ("candidate", "champion", "popularity"); a model without them, or whose lists miss one of
    the users scored, is asked here. ``relevant``: ``relevant_items(train, holdout,
    min_rating)`` already computed (computed here otherwise). ``user_scores``: by model name,
    ``user_metrics`` of its ``recommendations`` on ``relevant``, already computed (used only
    with those lists). ``train_checked``: ``train`` is a table that ``check_interactions``
    accepted, unchanged since (the caller's popularity fit checked this very table): it is not
    checked again (the holdout always is).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise BacktestError(f"k must be a positive integer, got {k!r}")
    train, holdout, train_end, holdout_start = _check_split(train, holdout, train_checked)
    relevant_given = relevant is not None
    if relevant is None:
        relevant = relevant_items(train, holdout, min_rating)
    if relevant.empty:
        raise BacktestError(
            "no user has a relevant holdout item (a positive not seen in training): widen the "
            "holdout window or lower min_rating"
        )
    for model in (candidate, champion):
        if model is not None:
            _check_model_end(model, holdout, holdout_start)
    if baseline is None:
        try:
            baseline = PopularityRecommender(window=popularity_window, min_rating=min_rating)
            baseline.fit(train)
        except TrainingError as exc:
            raise BacktestError(f"cannot fit the popularity baseline: {exc}") from exc
    # the scored users and their warm mask, once for the three models
    warm = _WarmUsers(train["user"])
    users = relevant["user"].drop_duplicates()
    recs = dict(recommendations or {})
    scored = dict(user_scores or {}) if relevant_given else {}
    return RankingBacktest(
        k=k,
        train_end=str(train_end),
        holdout_start=str(holdout_start),
        holdout_end=str(holdout["ts"].max()),
        popularity_window=str(pd.Timedelta(popularity_window)),
        candidate=_score(
            "candidate",
            candidate,
            relevant,
            None,
            k,
            "popularity",
            recs.get("candidate"),
            scored.get("candidate"),
            warm,
            users,
        ),
        champion=None
        if champion is None
        else _score(
            "champion",
            champion,
            relevant,
            None,
            k,
            "popularity",
            recs.get("champion"),
            scored.get("champion"),
            warm,
            users,
        ),
        baseline=_score(
            "popularity",
            baseline,
            relevant,
            None,
            k,
            "_none_",
            recs.get("popularity"),
            scored.get("popularity"),
            warm,
            users,
        ),
    )
