"""The most popular items of the recent past: the ranking family's trivial baseline."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from retrain.errors import NotFittedError
from retrain.trainers.interactions import (
    check_interactions,
    check_k,
    check_min_rating,
    check_positives,
    check_window,
    coerce_ids,
    empty_recommendations,
    lookup,
    popularity_ranking,
    positive_mask,
    query_ids,
    recommendation_frame,
    sorted_unique,
    sparse_matrix,
)

SOURCE = "popularity"
# Users answered per batch: bounds memory to BATCH x (k + most items a user has seen).
BATCH = 2048


class PopularityRecommender:
    """Recommends the items with the most distinct users in the last ``window`` of training.

    sklearn style: ``__init__`` stores, ``fit(interactions)`` learns ``item_index_`` (external
    ids of the positive items), ``ranking_`` (item rows, most popular first), ``scores_``
    (distinct users in the window, aligned with ``ranking_``), ``user_index_`` and ``seen_``
    (users x items, every training row: what ``filter_seen`` removes) and ``train_end_``.
    Items the window never saw follow in order of all-time popularity.
    """

    item_index_: np.ndarray
    user_index_: np.ndarray
    ranking_: np.ndarray
    scores_: np.ndarray
    seen_: sp.csr_matrix
    train_end_: pd.Timestamp

    def __init__(self, window: str | pd.Timedelta = "30D", min_rating: float | None = None):
        self.window = window
        self.min_rating = min_rating

    def fit(self, interactions: pd.DataFrame) -> PopularityRecommender:
        frame = check_interactions(interactions)
        window = check_window(self.window)
        check_min_rating(self.min_rating)
        weights = frame["weight"].to_numpy(dtype="float64")
        positive = positive_mask(weights, self.min_rating)
        check_positives(positive, self.min_rating)
        self.item_index_ = sorted_unique(frame["item"][positive], "item")
        self.user_index_ = sorted_unique(frame["user"], "user")
        users = lookup(self.user_index_, frame["user"])
        items = lookup(self.item_index_, frame["item"])
        known = items >= 0
        self.seen_ = sparse_matrix(
            users[known],
            items[known],
            np.ones(int(known.sum())),
            (self.user_index_.size, self.item_index_.size),
        )
        self.train_end_ = pd.Timestamp(frame["ts"].max())
        ts = frame["ts"].to_numpy()
        self.ranking_, self.scores_ = popularity_ranking(
            users[positive], items[positive], ts[positive], self.item_index_.size,
            self.train_end_, window,
        )  # fmt: skip
        return self

    def recommend(
        self, user_ids: Iterable[Any], k: int = 10, filter_seen: bool = True
    ) -> pd.DataFrame:
        """Top-k popular items per user (``source`` = "popularity"); seen items filtered."""
        if not hasattr(self, "ranking_"):
            raise NotFittedError(
                "this PopularityRecommender is not fitted yet: call fit(interactions) first"
            )
        k = check_k(k)
        users = query_ids(user_ids)
        if users.size == 0:
            return empty_recommendations()
        rows = lookup(self.user_index_, coerce_ids(self.user_index_, users))
        parts = [
            self._recommend_rows(users[i : i + BATCH], rows[i : i + BATCH], k, filter_seen)
            for i in range(0, users.size, BATCH)
        ]
        return pd.concat(parts, ignore_index=True)

    def _recommend_rows(
        self, users: np.ndarray, rows: np.ndarray, k: int, filter_seen: bool
    ) -> pd.DataFrame:
        known = rows >= 0
        width = k
        if filter_seen and known.any():
            # at most (items seen) of the k + seen most popular items can be filtered
            width = k + int(self.seen_.getnnz(axis=1)[rows[known]].max())
        width = min(width, self.ranking_.size)
        head = self.ranking_[:width]
        items = np.broadcast_to(head, (users.size, width))
        scores = np.broadcast_to(self.scores_[:width], (users.size, width)).copy()
        if filter_seen and known.any():
            position = np.full(self.item_index_.size, -1, dtype="int64")
            position[head] = np.arange(width)
            seen = self.seen_[rows[known]].tocoo()
            pos = position[seen.col]
            hit = pos >= 0
            scores[np.flatnonzero(known)[seen.row[hit]], pos[hit]] = -np.inf
            # unseen items first, in popularity order
            order = np.argsort(~np.isfinite(scores), axis=1, kind="stable")[:, :k]
            items = np.take_along_axis(items, order, axis=1)
            scores = np.take_along_axis(scores, order, axis=1)
        else:
            items, scores = items[:, :k], scores[:, :k]
        return recommendation_frame(users, self.item_index_[items], scores, SOURCE)
