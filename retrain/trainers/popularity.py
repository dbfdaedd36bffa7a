"""The most popular items of the recent past: the ranking family's trivial baseline."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from retrain import servable
from retrain.errors import NotFittedError
from retrain.trainers.interactions import (
    check_interactions,
    check_k,
    check_min_rating,
    check_positives,
    check_window,
    id_rows,
    lookup,
    popularity_ranking,
    positive_mask,
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

    def fit(self, interactions: pd.DataFrame, ranked: Any = None) -> PopularityRecommender:
        """``ranked``: a model fitted on this very table whose item map and popularity order
        are this fit's (:func:`shares_ranking`: an ALS recompute that dropped no row, with the
        same ``min_rating`` and window), reused instead of counted again; None: counted."""
        frame = check_interactions(interactions)
        window = check_window(self.window)
        check_min_rating(self.min_rating)
        weights = frame["weight"].to_numpy(dtype="float64")
        positive = positive_mask(weights, self.min_rating)
        check_positives(positive, self.min_rating)
        if ranked is not None and not self.shares_ranking(ranked, len(frame)):
            ranked = None
        if ranked is None:
            items, self.item_index_ = id_rows(frame["item"], "item", positive)
        else:  # the same sorted ids of the positive rows: the same row of every value
            self.item_index_ = ranked.item_index_
            items = lookup(self.item_index_, frame["item"])
        users, self.user_index_ = id_rows(frame["user"], "user")
        known = items >= 0
        self.seen_ = sparse_matrix(
            users[known],
            items[known],
            np.ones(int(known.sum())),
            (self.user_index_.size, self.item_index_.size),
        )
        self.train_end_ = pd.Timestamp(frame["ts"].max())
        if ranked is not None:
            # its order of the same positives: distinct users per item in the window, then
            # over all of them, then item row (the counts do not depend on the users' rows)
            self.ranking_, self.scores_ = ranked.popular_items_, ranked.popular_scores_
            return self
        ts = frame["ts"].to_numpy()
        self.ranking_, self.scores_ = popularity_ranking(
            users[positive], items[positive], ts[positive], self.item_index_.size,
            self.train_end_, window,
        )  # fmt: skip
        return self

    def shares_ranking(self, model: Any, rows: int) -> bool:
        """Whether ``model``, fitted on the table of ``rows`` rows this baseline is fitted on,
        holds this fit's item map and popularity order: an ALS recompute without an init
        model (its ids are the table's alone) that kept every row (none dropped as a duplicate:
        the same positives in the same order), with this baseline's ``min_rating`` and window
        (its positives and its window of distinct users are this fit's)."""
        try:
            return bool(
                getattr(model, "strategy", None) == "recompute"
                and getattr(model, "init_model", False) is None
                and getattr(model, "increments_", None) == 0
                and getattr(model, "n_train_rows_", None) == rows
                and model.min_rating == self.min_rating
                and check_window(model.popularity_window) == check_window(self.window)
                and model.popular_items_.size == model.item_index_.size
            )
        except AttributeError:
            return False

    # a trivial baseline: no increment continues from it (retrain.families.baseline)
    is_baseline = True

    @property
    def popularity_window(self) -> str | pd.Timedelta:
        """The window the popularity is counted over (the name an ALS model uses)."""
        return self.window

    def non_default_params(self) -> dict[str, Any]:
        return {"baseline": "popularity", "window": str(self.window), "min_rating": self.min_rating}

    def _check_fitted(self) -> None:
        if not hasattr(self, "ranking_"):
            raise NotFittedError(
                "this PopularityRecommender is not fitted yet: call fit(interactions) first"
            )

    def recommend(
        self, user_ids: Iterable[Any], k: int = 10, filter_seen: bool = True
    ) -> pd.DataFrame:
        """Top-k popular items per user (``source`` = "popularity"); seen items filtered.
        The served model answers with the same function (``servable.recommend_popular``)."""
        self._check_fitted()
        k = check_k(k)
        return servable.recommend_popular(
            self.item_index_, self.user_index_, self.ranking_, self.scores_, self.seen_,
            user_ids, k, filter_seen, SOURCE,
        )  # fmt: skip

    def save(self, directory: Path | str) -> Path:
        """Id maps (parquet), ranking and scores (.npy), seen items (.npz), parameters (JSON):
        what ``servable.PopularityModel`` serves."""
        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"item": self.item_index_}).to_parquet(directory / "item_index.parquet")
        pd.DataFrame({"user": self.user_index_}).to_parquet(directory / "user_index.parquet")
        np.save(directory / "ranking.npy", self.ranking_, allow_pickle=False)
        np.save(directory / "scores.npy", self.scores_, allow_pickle=False)
        sp.save_npz(directory / "seen.npz", self.seen_)
        meta = {
            "kind": "popularity",
            "window": str(pd.Timedelta(check_window(self.window))),
            "min_rating": self.min_rating,
            "train_end": self.train_end_.isoformat(),
        }
        (directory / servable.BASELINE_FILE).write_text(json.dumps(meta, indent=2))
        return directory

    @classmethod
    def load(cls, directory: Path | str) -> PopularityRecommender:
        served = servable.PopularityModel.load(directory)
        meta = json.loads((Path(directory) / servable.BASELINE_FILE).read_text())
        model = cls(pd.Timedelta(meta["window"]), meta["min_rating"])
        model.item_index_, model.user_index_ = served.item_index, served.user_index
        model.ranking_, model.scores_ = served.ranking, served.scores
        model.seen_ = sp.csr_matrix(served.seen)
        model.train_end_ = pd.Timestamp(meta["train_end"])
        return model
