"""Implicit-feedback matrix factorisation (implicit's ALS): full recompute and fold-in.

Id maps
    ``user_index_`` and ``item_index_`` hold the external ids in row order: the factors of user
    ``user_index_[r]`` are ``user_factors_[r]``. They are learned state, saved with the model. A
    fold-in (and a recompute given an ``init_model``) keeps the init model's maps and appends the
    ids it lacks, sorted, at the end: no id's row ever changes meaning within a lineage.

Confidence
    The rows that count as positives (weight > 0 and >= ``min_rating`` when set) form the
    user x item matrix ``user_items_`` (raw weights; duplicates summed or, with
    ``duplicates="last"``, the latest row of a pair wins). ALS learns from the confidence
    matrix ``alpha * f(user_items_)`` where f is ``confidence``:

    - ``linear``: the weight itself;
    - ``threshold``: 1 for every positive (use ``min_rating`` to set the threshold);
    - ``tfidf``: sqrt(weight) * idf(item);
    - ``bm25``: weight * (K1 + 1) / (K1 * length_norm(user) + weight) * idf(item), with
      length_norm = (1 - B) + B * (user's total weight / mean total weight).

    This is implicit's ``bm25_weight`` / ``tfidf_weight`` applied to the user x item matrix
    (users are the documents, items the terms), with idf = log(N users) - log1p(users of the
    item) floored at ``IDF_FLOOR`` (implicit lets it reach zero or below for an item nearly every
    user has, which ALS would read as no confidence or a dislike). The statistics (idf per item,
    N, mean total weight) are learned at the recompute and frozen for its fold-ins, as LightGBM's
    bin boundaries are: a user's confidence row then depends only on their own history. An item
    new at a fold-in gets its idf from its users in the given history and the frozen N.

Recompute
    ``strategy="recompute"``: ALS from scratch (seeded; ``num_threads`` and BLAS pinned to one
    thread, so the same data, parameters and seed give bit-identical factors) on every
    interaction given (the caller passes the full history up to the cutoff).

Fold-in
    ``strategy="foldin"``: starts from ``init_model``'s factors. The caller passes the FULL
    history up to the new cutoff. A user is *changed* when their positive row (items and
    aggregated weights) differs from the one stored with the init model; new users are changed
    by definition. With an append-only stream these are the users with a positive interaction
    after the init model's ``train_end_`` (a repeat that leaves their row as it was changes
    nothing); the comparison also catches rows that arrive late (stamped before ``train_end_``)
    and corrected ratings. Then, each user solved on their FULL history:

    1. new users who took an item to refold: ``partial_fit_users`` (they have no factors yet;
       changed existing users keep the init model's factors for the next step);
    2. items to refold: every new item and, with ``refresh_items`` (default 0.2), every item
       whose number of users grew by at least that fraction since the init model:
       ``partial_fit_items`` from all their users. A young item that takes off would otherwise
       keep the factors of its first few users (in the benchmark that cost ~10% NDCG@10 after
       three daily fold-ins; refreshing the grown items brought it to ~2% at no visible cost);
    3. every changed user: ``partial_fit_users`` against the final item factors.

    After a fold-in each changed user's factors are exactly ``recalculate_user`` of their full
    history against the final item factors; every other user's factors, and the factors of
    every item not refolded, are bit-for-bit the init model's.

    ``foldin_solver="cg"`` (default ``"exact"``; a spec's ``als.foldin_solver`` defaults to
    ``"cg"``) solves the users of steps 1 and 3 with the
    update a recompute's iteration applies instead (implicit's conjugate gradient, ``cg_steps``
    = 3, from the user's current factors; a new user from zeros): an approximation of the exact
    solution that costs a fraction of it (no ``factors x factors`` system per user). In the
    benchmark it was 2-5x cheaper per changed user, NDCG@10 within 0.2 percentage points of
    the exact fold-in's. Items (step 2) are always solved exactly. A history that lost
    interactions the init model had (a sliding window, deletions, or only the new rows passed
    by mistake) cannot be folded in: ``FoldInError`` says to
    recompute. ``increments_`` counts the fold-ins since the last recompute.

Fold-in from the increment alone
    ``foldin_data="increment"`` (default ``"history"``): the caller passes only the rows after
    the init model's ``train_end_`` (an earlier row is refused: a late row needs the full
    history, which finds every user it changes). They are appended to the init model's stored
    ``user_items_`` and ``seen_`` (new users and items get new rows and columns); only the rows
    of the users the increment touches are rebuilt, the others are copied as they are. The
    changed users are those whose rebuilt row differs; each is still solved on their FULL
    history, read from the stored matrix, exactly as above: the factors are bit-for-bit those
    of a fold-in given the full history (integer-valued weights; with summed float weights up to
    the rounding of the sums). The model keeps what this needs besides the matrices: the
    positives of the last ``popularity_window`` (``recent_users_``, ``recent_items_``,
    ``recent_ts_``) for the popularity fallback, and the non-positive rows whose user or item has
    no row yet (``orphans_``), which become seen once they get one. With ``duplicates="last"``
    an increment row replaces the stored weight of its pair; one that turns a stored positive
    into a non-positive is refused (recompute), as the full-history fold-in refuses it.

Recommendations
    ``recommend(user_ids, k)`` returns ``user, rank, item, score, source``: known users get ALS
    scores (``source="als"``, seen items filtered); unknown users, and known users with no
    positive left, get the most popular items of the last ``popularity_window`` of training
    (``source="popularity"``).
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from threadpoolctl import ThreadpoolController

from retrain import servable
from retrain.errors import FoldInError, NotFittedError, TrainingError
from retrain.trainers.interactions import (
    DUPLICATES,
    check_interactions,
    check_k,
    check_min_rating,
    check_positives,
    check_window,
    dedupe_last,
    encode_ids,
    lookup,
    pad_rows_cols,
    popularity_ranking,
    positive_mask,
    sparse_matrix,
    splice_rows,
)

logger = logging.getLogger(__name__)

CONFIDENCE = ("linear", "bm25", "tfidf", "threshold")
STRATEGIES = ("recompute", "foldin")
FOLDIN_DATA = ("history", "increment")
FOLDIN_SOLVERS = ("exact", "cg")
IDF_FLOOR = 1e-3
FORMAT = 2
# formats load() reads: 1 lacks the recent positives and orphan rows (no increment fold-in)
READABLE_FORMATS = (1, 2)
META_FILE = "als.json"
ARRAYS = ("user_factors", "item_factors", "idf", "popular_items", "popular_scores")
# id lists saved as parquet (keeps int or str ids as they are): attribute, column
IDS = (
    ("user_index", "user"),
    ("item_index", "item"),
    ("updated_users", "user"),
    ("new_users", "user"),
    ("new_items", "item"),
    ("updated_items", "item"),
)
# Parameters a fold-in must share with its init model (factors solved against its item factors).
SHARED = (
    "factors",
    "regularization",
    "alpha",
    "confidence",
    "min_rating",
    "duplicates",
    "bm25_k1",
    "bm25_b",
)


@dataclass(frozen=True)
class _Rows:
    """The columns of a checked interactions table every fit mode reads."""

    weights: np.ndarray
    positive: np.ndarray
    ts: np.ndarray
    train_end: pd.Timestamp

    @classmethod
    def of(cls, frame: pd.DataFrame, min_rating: float | None) -> _Rows:
        weights = frame["weight"].to_numpy(dtype="float64")
        return cls(
            weights,
            positive_mask(weights, min_rating),
            frame["ts"].to_numpy().astype("datetime64[ns]"),
            pd.Timestamp(frame["ts"].max()),
        )


class ALSTrainer:
    """Implicit ALS, sklearn style: ``__init__`` stores the parameters, ``fit`` validates them.

    ``fit(interactions)`` takes a DataFrame ``user, item, weight, ts`` (see
    ``retrain.trainers.interactions``) and learns ``user_index_``, ``item_index_``,
    ``user_factors_``, ``item_factors_``, ``user_items_`` (positives, raw weights), ``seen_``
    (every training row), ``idf_``, ``idf_documents_``, ``mean_user_weight_``,
    ``popular_items_``, ``popular_scores_``, ``train_end_``, ``increments_`` and what the fit
    changed (``updated_users_``, ``new_users_``, ``new_items_``, ``timings_``).
    """

    user_index_: np.ndarray
    item_index_: np.ndarray
    user_factors_: np.ndarray
    item_factors_: np.ndarray
    user_items_: sp.csr_matrix
    seen_: sp.csr_matrix
    orphans_: pd.DataFrame
    recent_users_: np.ndarray
    recent_items_: np.ndarray
    recent_ts_: np.ndarray
    idf_: np.ndarray
    idf_documents_: int
    mean_user_weight_: float
    popular_items_: np.ndarray
    popular_scores_: np.ndarray
    train_end_: pd.Timestamp
    init_train_end_: pd.Timestamp | None
    increments_: int
    n_train_rows_: int
    updated_users_: np.ndarray
    updated_items_: np.ndarray
    new_users_: np.ndarray
    new_items_: np.ndarray
    timings_: dict[str, float]

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 0.05,
        alpha: float = 1.0,
        iterations: int = 15,
        random_state: int | None = 42,
        confidence: str = "linear",
        min_rating: float | None = None,
        strategy: str = "recompute",
        init_model: ALSTrainer | None = None,
        num_threads: int = 1,
        popularity_window: str | pd.Timedelta = "30D",
        duplicates: str = "sum",
        bm25_k1: float = 100.0,
        bm25_b: float = 0.8,
        refresh_items: float | None = 0.2,
        foldin_data: str = "history",
        foldin_solver: str = "exact",
        client: Any = None,
    ) -> None:
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.random_state = random_state
        self.confidence = confidence
        self.min_rating = min_rating
        self.strategy = strategy
        self.init_model = init_model
        self.num_threads = num_threads
        self.popularity_window = popularity_window
        self.duplicates = duplicates
        self.bm25_k1 = bm25_k1
        self.bm25_b = bm25_b
        self.refresh_items = refresh_items
        self.foldin_data = foldin_data
        self.foldin_solver = foldin_solver
        self.client = client

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["client"] = None  # a Dask client does not travel (to workers, into pickles)
        return state

    # -- parameters ---------------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """Every parameter but ``init_model`` and ``client`` (JSON-ready)."""
        return {
            "factors": self.factors,
            "regularization": self.regularization,
            "alpha": self.alpha,
            "iterations": self.iterations,
            "random_state": self.random_state,
            "confidence": self.confidence,
            "min_rating": self.min_rating,
            "strategy": self.strategy,
            "num_threads": self.num_threads,
            "popularity_window": _duration(self.popularity_window),
            "duplicates": self.duplicates,
            "bm25_k1": self.bm25_k1,
            "bm25_b": self.bm25_b,
            "refresh_items": self.refresh_items,
            "foldin_data": self.foldin_data,
            "foldin_solver": self.foldin_solver,
        }

    def non_default_params(self) -> dict[str, Any]:
        """The parameters that differ from this class's defaults (what an MLflow run logs)."""
        defaults = ALSTrainer().get_params()
        out = {k: v for k, v in self.get_params().items() if defaults[k] != v}
        out["strategy"] = self.strategy
        return out

    def _check_params(self) -> None:
        def positive_int(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise TrainingError(f"{name} must be a positive integer, got {value!r}")

        positive_int("factors")
        positive_int("iterations")
        if not np.isfinite(self.regularization) or self.regularization < 0:
            raise TrainingError(f"regularization must be >= 0, got {self.regularization!r}")
        if not np.isfinite(self.alpha) or self.alpha <= 0:
            raise TrainingError(f"alpha must be > 0, got {self.alpha!r}")
        if self.confidence not in CONFIDENCE:
            raise TrainingError(
                f"confidence scheme {self.confidence!r} is unknown; use one of {CONFIDENCE}"
            )
        if self.strategy not in STRATEGIES:
            raise TrainingError(f"strategy {self.strategy!r} is unknown; use one of {STRATEGIES}")
        if self.duplicates not in DUPLICATES:
            raise TrainingError(
                f"duplicates {self.duplicates!r} is unknown; use 'sum' (counts, plays) or "
                "'last' (ratings: the latest rating of a pair wins)"
            )
        if isinstance(self.num_threads, bool) or self.num_threads < 0:
            raise TrainingError(f"num_threads must be >= 0, got {self.num_threads!r}")
        if not self.bm25_k1 > 0 or not 0 <= self.bm25_b <= 1:
            raise TrainingError(
                f"bm25 needs k1 > 0 and 0 <= b <= 1, got k1={self.bm25_k1!r}, b={self.bm25_b!r}"
            )
        if self.refresh_items is not None and (
            isinstance(self.refresh_items, bool)
            or not np.isfinite(self.refresh_items)
            or self.refresh_items < 0
        ):
            raise TrainingError(
                f"refresh_items must be None (only new items) or a growth >= 0, e.g. 0.5 to "
                f"refold items whose users grew by 50%; got {self.refresh_items!r}"
            )
        if self.foldin_data not in FOLDIN_DATA:
            raise TrainingError(
                f"foldin_data {self.foldin_data!r} is unknown; use 'history' (the full history up "
                "to the new cutoff) or 'increment' (only the rows after the init model's training "
                "end; each changed user's full history comes from the init model's matrix)"
            )
        if self.foldin_solver not in FOLDIN_SOLVERS:
            raise TrainingError(
                f"foldin_solver {self.foldin_solver!r} is unknown; use 'exact' (implicit's "
                "partial_fit_users: each changed user's least-squares solution) or 'cg' (the "
                "conjugate-gradient update a recompute's iteration applies, from the user's "
                "current factors: several times cheaper)"
            )
        check_min_rating(self.min_rating)
        check_window(self.popularity_window)
        if self.strategy == "foldin":
            init = self.init_model
            if init is None or not hasattr(init, "user_factors_"):
                raise TrainingError(
                    "strategy 'foldin' needs a fitted init_model (the champion ALSTrainer); "
                    "without one, use strategy='recompute'"
                )
            differences = [
                f"{name} {getattr(self, name)!r} (init model: {getattr(init, name)!r})"
                for name in SHARED
                if getattr(self, name) != getattr(init, name)
            ]
            if differences:
                raise FoldInError(
                    "cannot fold in with other settings than the init model's: "
                    + "; ".join(differences)
                    + ". Recompute (strategy='recompute') to change them"
                )
        elif self.init_model is not None and not hasattr(self.init_model, "user_index_"):
            raise TrainingError("init_model is not fitted: fit it first or pass None")

    def _check_fitted(self) -> None:
        if not hasattr(self, "user_factors_"):
            raise NotFittedError("this ALSTrainer is not fitted yet: call fit(interactions) first")

    # -- matrices -----------------------------------------------------------------------------
    def _idf(self, users_per_item: np.ndarray, documents: int) -> np.ndarray:
        idf = np.log(float(max(documents, 1))) - np.log1p(users_per_item)
        return np.maximum(idf, IDF_FLOOR)

    def _confidence(
        self, user_items: sp.csr_matrix, totals: np.ndarray | None = None
    ) -> sp.csr_matrix:
        """The confidence matrix (before implicit's ``alpha`` scaling), float32.

        A row's confidence depends only on that row (and the frozen idf), so rows or columns of
        ``user_items`` give the same values as slicing the whole confidence matrix; for bm25 on
        a slice of columns pass ``totals``, each row's total weight over every column.
        """
        data = user_items.data
        if self.confidence == "threshold":
            values = np.ones_like(data)
        elif self.confidence == "linear":
            values = data.copy()
        elif self.confidence == "tfidf":
            values = np.sqrt(data) * self.idf_[user_items.indices]
        else:  # bm25
            if totals is None:
                totals = np.asarray(user_items.sum(axis=1)).ravel()
            norm = (1.0 - self.bm25_b) + self.bm25_b * totals / self.mean_user_weight_
            per_entry = np.repeat(norm, np.diff(user_items.indptr))
            values = (
                data
                * (self.bm25_k1 + 1.0)
                / (self.bm25_k1 * per_entry + data)
                * self.idf_[user_items.indices]
            )
        return sp.csr_matrix(
            (values.astype("float32"), user_items.indices, user_items.indptr),
            shape=user_items.shape,
        )

    def _implicit(self) -> AlternatingLeastSquares:
        return AlternatingLeastSquares(
            factors=int(self.factors),
            regularization=float(self.regularization),
            alpha=float(self.alpha),
            iterations=int(self.iterations),
            num_threads=int(self.num_threads),
            random_state=self.random_state,
            calculate_training_loss=False,
        )

    def to_implicit(self) -> AlternatingLeastSquares:
        """An implicit model holding copies of the factors (for implicit's own tools)."""
        self._check_fitted()
        with _one_blas_thread():
            model = self._implicit()
        model.user_factors = self.user_factors_.copy()
        model.item_factors = self.item_factors_.copy()
        return model

    def confidence_matrix(self) -> sp.csr_matrix:
        """The training confidence matrix (users x items, before ``alpha``)."""
        self._check_fitted()
        return self._confidence(self.user_items_)

    def loss(self) -> float:
        """implicit's training loss of the factors on the stored training matrix."""
        from implicit.cpu import _als

        self._check_fitted()
        conf = (self.alpha * self._confidence(self.user_items_)).astype("float32")
        with _one_blas_thread():
            return float(
                _als.calculate_loss(
                    sp.csr_matrix(conf),
                    self.user_factors_,
                    self.item_factors_,
                    float(self.regularization),
                    num_threads=int(self.num_threads),
                )
            )

    # -- estimator API ------------------------------------------------------------------------
    def fit(self, interactions: pd.DataFrame) -> ALSTrainer:
        """Learn from ``interactions`` as ``strategy`` says: a full recompute, or a fold-in into
        ``init_model`` of the full history (``foldin_data="history"``) or of the rows after its
        training end only (``"increment"``)."""
        self._check_params()
        started = time.perf_counter()
        frame = check_interactions(interactions)
        if self.duplicates == "last":
            frame = dedupe_last(frame)
        if self.strategy != "foldin":
            return self._fit_recompute(frame, started)
        assert self.init_model is not None
        if self.foldin_data == "increment":
            return self._fit_increment(frame, self.init_model, started)
        return self._fit_history(frame, self.init_model, started)

    def _fit_recompute(self, frame: pd.DataFrame, started: float) -> ALSTrainer:
        rows = _Rows.of(frame, self.min_rating)
        check_positives(rows.positive, self.min_rating)
        # a recompute from an init model keeps its id maps (its rows first)
        init = self.init_model
        users, items = self._encode(frame, rows.positive, init)
        users_now = self._full_matrix(frame, users, items, rows)
        prepared = time.perf_counter()
        self._recompute()
        self.increments_ = 0
        changed, refreshed = np.arange(self.user_index_.size), np.arange(self.item_index_.size)
        return self._finish(
            rows, users, items, users_now, init, changed, refreshed, (started, prepared)
        )

    def _fit_history(self, frame: pd.DataFrame, init: ALSTrainer, started: float) -> ALSTrainer:
        rows = _Rows.of(frame, self.min_rating)
        check_positives(rows.positive, self.min_rating)
        if rows.train_end < init.train_end_:
            raise FoldInError(
                f"the interactions end at {rows.train_end}, before the init model's training "
                f"end {init.train_end_}: pass the full history up to the new cutoff"
            )
        users, items = self._encode(frame, rows.positive, init)
        users_now = self._full_matrix(frame, users, items, rows)
        prepared = time.perf_counter()
        n_old_users, n_old_items = init.user_index_.size, init.item_index_.size
        changed, users_before = self._changes(init, n_old_users)
        refreshed = self._fold_in(init, changed, users_before, users_now, n_old_users, n_old_items)
        self.increments_ = init.increments_ + 1
        return self._finish(
            rows, users, items, users_now, init, changed, refreshed, (started, prepared)
        )

    def _fit_increment(self, frame: pd.DataFrame, init: ALSTrainer, started: float) -> ALSTrainer:
        rows = _Rows.of(frame, self.min_rating)
        self._check_increment(init, rows.ts)
        users, items = self._encode(frame, rows.positive, init)
        changed, users_before, users_now = self._append(
            init, frame, users, items, rows.weights, rows.positive
        )
        prepared = time.perf_counter()
        n_old_users, n_old_items = init.user_index_.size, init.item_index_.size
        refreshed = self._fold_in(init, changed, users_before, users_now, n_old_users, n_old_items)
        self.increments_ = init.increments_ + 1
        return self._finish(
            rows, users, items, users_now, init, changed, refreshed, (started, prepared),
            increment=True,
        )  # fmt: skip

    def _encode(
        self, frame: pd.DataFrame, positive: np.ndarray, init: ALSTrainer | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Id maps: the init model's rows first, then the ids it lacks."""
        users, self.user_index_ = encode_ids(
            None if init is None else init.user_index_, frame["user"], positive, "user"
        )
        items, self.item_index_ = encode_ids(
            None if init is None else init.item_index_, frame["item"], positive, "item"
        )
        return users, items

    def _full_matrix(
        self, frame: pd.DataFrame, users: np.ndarray, items: np.ndarray, rows: _Rows
    ) -> np.ndarray:
        """The user x item matrices of every row handed in; returns the users per item."""
        shape = (self.user_index_.size, self.item_index_.size)
        positive, weights = rows.positive, rows.weights
        user_items = sparse_matrix(users[positive], items[positive], weights[positive], shape)
        known = (users >= 0) & (items >= 0)
        if known.sum() == positive.sum():  # every row is a positive: seen = their pattern
            seen = _structure(user_items)
        else:
            seen = sparse_matrix(users[known], items[known], np.ones(int(known.sum())), shape)
            seen.data[:] = 1.0
        self.user_items_ = user_items
        self.seen_ = seen
        self.orphans_ = _pairs(frame.iloc[:0] if known.all() else frame[~known])
        self.n_train_rows_ = len(frame)
        return np.asarray(user_items.getnnz(axis=0))

    def _finish(
        self,
        rows: _Rows,
        users: np.ndarray,
        items: np.ndarray,
        users_now: np.ndarray,
        init: ALSTrainer | None,
        changed: np.ndarray,
        refreshed: np.ndarray,
        clock: tuple[float, float],
        increment: bool = False,
    ) -> ALSTrainer:
        """Popularity, bookkeeping and timings, the same for every mode."""
        started, prepared = clock
        solved = time.perf_counter()
        # popularity: positives of the last popularity_window (kept with the model, so that an
        # increment fold-in counts the window's earlier rows without reading the history again)
        positive, train_end = rows.positive, rows.train_end
        window = check_window(self.popularity_window)
        recent_users, recent_items, recent_ts = users[positive], items[positive], rows.ts[positive]
        if increment:
            assert init is not None
            recent_users = np.concatenate([init.recent_users_, recent_users])
            recent_items = np.concatenate([init.recent_items_, recent_items])
            recent_ts = np.concatenate([init.recent_ts_, recent_ts])
        user_index, item_index = self.user_index_, self.item_index_
        order, scores = popularity_ranking(
            recent_users, recent_items, recent_ts, item_index.size, train_end, window,
            overall=users_now,
        )  # fmt: skip
        in_window = recent_ts > np.datetime64((train_end - window).to_datetime64(), "ns")
        self.recent_users_ = recent_users[in_window].astype("int64")
        self.recent_items_ = recent_items[in_window].astype("int64")
        self.recent_ts_ = recent_ts[in_window]
        self.popular_items_ = order
        self.popular_scores_ = scores
        self.train_end_ = train_end
        self.init_train_end_ = None if init is None else init.train_end_
        n_old_users = 0 if init is None else init.user_index_.size
        n_old_items = 0 if init is None else init.item_index_.size
        self.updated_users_ = user_index[changed]
        self.updated_items_ = item_index[refreshed]
        self.new_users_ = user_index[n_old_users:]
        self.new_items_ = item_index[n_old_items:]
        self.timings_ = {
            "prepare_s": prepared - started,
            "solve_s": solved - prepared,
            "total_s": time.perf_counter() - started,
        }
        return self

    def _check_increment(self, init: ALSTrainer, ts: np.ndarray) -> None:
        """An increment fold-in needs rows after the init model's end and its stored state."""
        if not hasattr(init, "recent_ts_"):
            raise FoldInError(
                "the init model was saved in format 1, without the rows an increment fold-in "
                "needs (recent positives, orphan rows): fold in with foldin_data='history' (the "
                "full history) or recompute"
            )
        end = np.datetime64(init.train_end_.to_datetime64(), "ns")
        late = ts <= end
        if late.any():
            raise FoldInError(
                f"{int(late.sum())} of the {ts.size} rows are stamped at or before the init "
                f"model's training end {init.train_end_}: foldin_data='increment' takes only "
                "the rows after it. For late rows pass the full history (foldin_data='history'), "
                "which finds every user they change, or recompute"
            )
        mine, theirs = check_window(self.popularity_window), check_window(init.popularity_window)
        if mine > theirs:
            raise FoldInError(
                f"popularity_window {self.popularity_window!r} is longer than the init model's "
                f"{init.popularity_window!r}, the span of rows it kept: fold in with "
                "foldin_data='history' or recompute"
            )

    def _append(
        self,
        init: ALSTrainer,
        frame: pd.DataFrame,
        users: np.ndarray,
        items: np.ndarray,
        weights: np.ndarray,
        positive: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Add the increment's rows to the init model's matrices (``foldin_data="increment"``).

        Only the rows of the users the increment touches are rebuilt (their stored full history
        plus the new rows); every other row is copied. Returns the changed user rows and the
        number of users per item before and after.
        """
        shape = (self.user_index_.size, self.item_index_.size)
        known = (users >= 0) & (items >= 0)
        # rows stored as orphans (not positive, user or item without a row) may have a row now
        orphans = init.orphans_
        if len(orphans):
            orphan_users = lookup(self.user_index_, orphans["user"].to_numpy())
            orphan_items = lookup(self.item_index_, orphans["item"].to_numpy())
        else:  # the usual case (every row a positive): skip pandas' fixed costs
            orphan_users = orphan_items = np.empty(0, dtype="int64")
        adopted = (orphan_users >= 0) & (orphan_items >= 0)
        rows = np.unique(np.concatenate([users[known], orphan_users[adopted]]))
        sub_shape = (rows.size, shape[1])
        local = np.searchsorted(rows, users)
        old = pad_rows_cols(init.user_items_, shape)
        old_seen = pad_rows_cols(init.seen_, shape)
        before = old[rows]
        seen_before = old_seen[rows]
        added = sparse_matrix(local[positive], items[positive], weights[positive], sub_shape)
        touched = sparse_matrix(
            np.concatenate([local[known], np.searchsorted(rows, orphan_users[adopted])]),
            np.concatenate([items[known], orphan_items[adopted]]),
            np.ones(int(known.sum() + adopted.sum())),
            sub_shape,
        )
        if self.duplicates == "sum":
            after = (before + added).tocsr()
            self.n_train_rows_ = init.n_train_rows_ + len(frame)
        else:  # the increment's (latest) row of a pair replaces the stored one
            rewritten = before.multiply(_structure(touched)).tocsr()
            dropped = (rewritten - rewritten.multiply(_structure(added))).tocsr()
            dropped.eliminate_zeros()
            if dropped.nnz:
                lost = np.flatnonzero(dropped.getnnz(axis=1))
                first = int(lost[0])
                raise FoldInError(
                    f"{lost.size} user(s) have a stored positive that the increment's latest row "
                    f"no longer counts as one (e.g. user {self.user_index_[rows[first]]!r}): a "
                    "fold-in cannot forget interactions; recompute instead"
                )
            after = (before - rewritten).tocsr()
            after.eliminate_zeros()
            after = (after + added).tocsr()
            # distinct pairs of the history: those the init model had not seen are new rows
            pairs = frame[["user", "item"]]
            in_seen = np.zeros(len(frame), dtype=bool)
            in_seen[known] = np.asarray(seen_before[local[known], items[known]]).ravel() > 0
            in_orphans = (
                pairs.merge(orphans.drop_duplicates(), how="left", indicator=True)["_merge"]
                == "both"
            ).to_numpy()
            self.n_train_rows_ = init.n_train_rows_ + int((~(in_seen | in_orphans)).sum())
        after.sort_indices()
        seen_after = _structure((seen_before + _structure(touched)).tocsr())
        seen_after.sort_indices()
        self.user_items_ = splice_rows(old, rows, after)
        self.seen_ = splice_rows(old_seen, rows, seen_after)
        if adopted.any() or not known.all():
            orphans = _pairs(
                pd.concat(
                    [orphans[~adopted], frame.loc[~known, ["user", "item"]]], ignore_index=True
                )
            )
        self.orphans_ = orphans
        diff = (after - before).tocsr()
        diff.eliminate_zeros()
        changed = rows[diff.getnnz(axis=1) > 0]
        users_before = np.bincount(init.user_items_.indices, minlength=shape[1])
        users_now = (
            users_before
            + np.bincount(after.indices, minlength=shape[1])
            - np.bincount(before.indices, minlength=shape[1])
        )
        return changed, users_before, users_now

    def _changes(self, init: ALSTrainer, n_old_users: int) -> tuple[np.ndarray, np.ndarray]:
        """Changed user rows and users per item before, from the full history handed in."""
        user_items = self.user_items_
        old = pad_rows_cols(init.user_items_, user_items.shape)
        kept = _structure(old).multiply(_structure(user_items)).tocsr()
        lost = old.getnnz(axis=1) - kept.getnnz(axis=1)
        lost_rows = np.flatnonzero(lost)
        if lost_rows.size:
            first = int(lost_rows[0])
            raise FoldInError(
                f"{lost_rows.size} of the init model's {n_old_users} users lost interactions "
                f"it was trained on (e.g. user {self.user_index_[first]!r} lost "
                f"{int(lost[first])}): a fold-in needs each user's FULL history up to the "
                "cutoff, not only the new rows. To forget data (a sliding window, deletions) "
                "recompute instead"
            )
        diff = (user_items - old).tocsr()
        diff.eliminate_zeros()
        return np.flatnonzero(diff.getnnz(axis=1)), old.getnnz(axis=0)

    def _recompute(self) -> None:
        documents = int((self.user_items_.getnnz(axis=1) > 0).sum())
        self.idf_documents_ = documents
        self.idf_ = self._idf(self.user_items_.getnnz(axis=0), documents)
        totals = np.asarray(self.user_items_.sum(axis=1)).ravel()
        self.mean_user_weight_ = float(totals[totals > 0].mean())
        conf = self._confidence(self.user_items_)
        with _one_blas_thread():
            model = self._implicit()
            model.fit(conf, show_progress=False)
        self.user_factors_ = np.ascontiguousarray(model.user_factors)
        self.item_factors_ = np.ascontiguousarray(model.item_factors)

    def _fold_in(
        self,
        init: ALSTrainer,
        changed: np.ndarray,
        users_before: np.ndarray,
        users_now: np.ndarray,
        n_old_users: int,
        n_old_items: int,
    ) -> np.ndarray:
        """Fold the changed users and new (or grown) items into ``init``'s factors.

        Returns the rows of the items whose factors were recomputed. Confidence is computed
        only for the rows and columns solved (it is row-local: the same values as slicing the
        whole confidence matrix).
        """
        user_items = self.user_items_
        refresh = np.arange(user_items.shape[1]) >= n_old_items
        if self.refresh_items is not None:
            refresh |= (users_now > users_before) & (
                users_now >= (1.0 + float(self.refresh_items)) * users_before
            )
        items = np.flatnonzero(refresh)

        self.idf_documents_ = init.idf_documents_
        self.mean_user_weight_ = init.mean_user_weight_
        self.idf_ = np.concatenate(
            [init.idf_, self._idf(users_now[n_old_items:], init.idf_documents_)]
        )
        n_users, n_items = user_items.shape
        factors = init.user_factors_.shape[1]
        dtype = init.user_factors_.dtype
        with _one_blas_thread():
            model = self._implicit()
            model.user_factors = np.zeros((n_users, factors), dtype=dtype)
            model.user_factors[:n_old_users] = init.user_factors_
            model.item_factors = np.zeros((n_items, factors), dtype=dtype)
            model.item_factors[:n_old_items] = init.item_factors_
            if items.size:
                totals = None
                if self.confidence == "bm25":
                    totals = np.asarray(user_items.sum(axis=1)).ravel()
                columns = self._confidence(user_items[:, items], totals)
                # new users of these items first: they have no factors yet (a changed user's
                # factors from the init model are close enough to solve the items against)
                first_pass = np.flatnonzero(columns[n_old_users:].getnnz(axis=1)) + n_old_users
                if first_pass.size:
                    self._solve_users(model, first_pass, self._confidence(user_items[first_pass]))
                model.partial_fit_items(items, columns.T.tocsr())
            if changed.size:
                self._solve_users(model, changed, self._confidence(user_items[changed]))
        self.user_factors_ = np.ascontiguousarray(model.user_factors)
        self.item_factors_ = np.ascontiguousarray(model.item_factors)
        return items

    def _solve_users(
        self, model: AlternatingLeastSquares, rows: np.ndarray, confidence: sp.csr_matrix
    ) -> None:
        """New factors for ``rows`` (users) from their confidence rows (before ``alpha``).

        With a Dask ``client`` the users are solved in chunks on the workers (the item factors
        sent to every worker once): each user's solution depends only on their own row and the
        fixed item factors, so the factors are the serial fold-in's, bit for bit."""
        if self.client is not None and rows.size:
            model.user_factors[rows] = solve_users_on_dask(
                self.client,
                self.get_params(),
                model.item_factors,
                model.user_factors[rows],
                confidence,
            )
            model._user_norms = None  # what partial_fit_users clears after an update
            model._XtX = None
            return
        if self.foldin_solver == "exact":
            model.partial_fit_users(rows, confidence)
            return
        model.user_factors[rows] = _solve_cg(model, model.user_factors[rows], confidence)

    # -- recommendations ----------------------------------------------------------------------
    def recommend(
        self, user_ids: Iterable[Any], k: int = 10, filter_seen: bool = True
    ) -> pd.DataFrame:
        """Top-k items per user: ``user, rank, item, score, source`` in the order given.

        Known users with a positive history get ALS scores (``source="als"``; items they have
        seen in training are left out when ``filter_seen``); unknown users (and a known user
        with no positive left) get the popularity fallback (``source="popularity"``). A user
        may get fewer than k rows when fewer unseen items exist. Repeated ids are answered once.
        """
        self._check_fitted()
        check_k(k)
        # one BLAS thread, as around the fit: a few users' scores are a small product that a
        # BLAS thread pool only spins on (about 10x the CPU on a busy machine)
        with _one_blas_thread():
            return servable.recommend(self.query_state(), user_ids, k=k, filter_seen=filter_seen)

    def query_state(self) -> servable.RecommenderFactors:
        """What answering a query needs: the part of the model a served version loads."""
        self._check_fitted()
        return servable.RecommenderFactors(
            user_index=self.user_index_,
            item_index=self.item_index_,
            user_factors=self.user_factors_,
            item_factors=self.item_factors_,
            seen=self.seen_,
            has_history=self.user_items_.getnnz(axis=1) > 0,
            popular_items=self.popular_items_,
            popular_scores=self.popular_scores_,
        )

    # -- persistence --------------------------------------------------------------------------
    def save(self, directory: Path | str) -> Path:
        """Factors (.npy), id maps (parquet), matrices (.npz) and parameters (JSON)."""
        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {
            "user_factors": self.user_factors_,
            "item_factors": self.item_factors_,
            "idf": self.idf_,
            "popular_items": self.popular_items_,
            "popular_scores": self.popular_scores_,
        }
        for name, array in arrays.items():
            np.save(directory / f"{name}.npy", array, allow_pickle=False)
        for name, column in IDS:
            pd.DataFrame({column: getattr(self, f"{name}_")}).to_parquet(
                directory / f"{name}.parquet"
            )
        sp.save_npz(directory / "user_items.npz", self.user_items_)
        sp.save_npz(directory / "seen.npz", self.seen_)
        self.orphans_.to_parquet(directory / "orphans.parquet")
        np.savez(
            directory / "recent.npz",
            users=self.recent_users_,
            items=self.recent_items_,
            ts=self.recent_ts_.astype("int64"),
        )
        meta = {
            "family": "als",
            "format": FORMAT,
            "params": self.get_params(),
            "train_end": self.train_end_.isoformat(),
            "init_train_end": None
            if self.init_train_end_ is None
            else self.init_train_end_.isoformat(),
            "increments": self.increments_,
            "n_train_rows": self.n_train_rows_,
            "idf_documents": self.idf_documents_,
            "mean_user_weight": self.mean_user_weight_,
            "users": int(self.user_index_.size),
            "items": int(self.item_index_.size),
            "updated_users": int(self.updated_users_.size),
            "updated_items": int(self.updated_items_.size),
            "new_users": int(self.new_users_.size),
            "new_items": int(self.new_items_.size),
            "timings": self.timings_,
        }
        (directory / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        return directory

    @classmethod
    def load(cls, directory: Path | str) -> ALSTrainer:
        directory = Path(directory)
        meta_path = directory / META_FILE
        if not meta_path.exists():
            raise TrainingError(f"{directory} holds no saved ALS model ({META_FILE} is missing)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") not in READABLE_FORMATS:
            raise TrainingError(
                f"{directory} holds an ALS model in format {meta.get('format')!r}; this code "
                f"reads formats {READABLE_FORMATS}: retrain it"
            )
        model = cls(**meta["params"])
        arrays = {n: np.load(directory / f"{n}.npy", allow_pickle=False) for n in ARRAYS}
        model.user_factors_ = arrays["user_factors"]
        model.item_factors_ = arrays["item_factors"]
        model.idf_ = arrays["idf"]
        model.popular_items_ = arrays["popular_items"]
        model.popular_scores_ = arrays["popular_scores"]
        for name, column in IDS:
            ids = _ids(pd.read_parquet(directory / f"{name}.parquet")[column])
            setattr(model, f"{name}_", ids)
        model.user_items_ = sp.csr_matrix(sp.load_npz(directory / "user_items.npz"))
        model.seen_ = sp.csr_matrix(sp.load_npz(directory / "seen.npz"))
        if meta["format"] >= 2:  # format 1 lacks them: no increment fold-in from it
            orphans = pd.read_parquet(directory / "orphans.parquet")
            model.orphans_ = pd.DataFrame(
                {"user": _ids(orphans["user"]), "item": _ids(orphans["item"])}
            )
            with np.load(directory / "recent.npz", allow_pickle=False) as recent:
                model.recent_users_ = recent["users"]
                model.recent_items_ = recent["items"]
                model.recent_ts_ = recent["ts"].astype("datetime64[ns]")
        model.train_end_ = pd.Timestamp(meta["train_end"])
        init_end = meta["init_train_end"]
        model.init_train_end_ = None if init_end is None else pd.Timestamp(init_end)
        model.increments_ = meta["increments"]
        model.n_train_rows_ = meta["n_train_rows"]
        model.idf_documents_ = meta["idf_documents"]
        model.mean_user_weight_ = meta["mean_user_weight"]
        model.timings_ = meta["timings"]
        return model


@functools.cache
def _controller() -> ThreadpoolController:
    # built once (after implicit loaded scipy's BLAS): threadpool_limits() rescans every library
    # on each call, which costs more than a small fold-in
    return ThreadpoolController()


def _one_blas_thread() -> Any:
    """``threadpoolctl.threadpool_limits(1, "blas")``, as implicit recommends around ALS."""
    return _controller().limit(limits=1, user_api="blas")


def _structure(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """The sparsity pattern of ``matrix`` with every stored value 1."""
    return sp.csr_matrix((np.ones(matrix.nnz), matrix.indices, matrix.indptr), shape=matrix.shape)


def _pairs(frame: pd.DataFrame) -> pd.DataFrame:
    """The distinct ``user, item`` pairs of ``frame`` (external ids), index reset."""
    return frame.loc[:, ["user", "item"]].drop_duplicates().reset_index(drop=True)


def _duration(value: Any) -> Any:
    try:
        return str(pd.Timedelta(value))
    except (TypeError, ValueError):
        return value


def _ids(column: pd.Series) -> np.ndarray:
    if pd.api.types.is_integer_dtype(column):
        return column.to_numpy(dtype="int64")
    return column.to_numpy(dtype=object)


def _solve_cg(
    model: AlternatingLeastSquares, start: np.ndarray, confidence: sp.csr_matrix
) -> np.ndarray:
    """implicit's own fit step (model.solver: conjugate gradient, cg_steps from the current
    factors; a new user starts from zeros), applied to these users only."""
    factors = np.ascontiguousarray(start)
    scaled = sp.csr_matrix(confidence * np.float32(model.alpha), dtype=np.float32)
    model.solver(
        scaled,
        factors,
        model.item_factors,
        model.regularization,
        num_threads=model.num_threads,
    )
    return factors


def _solve_user_chunk(
    params: dict[str, Any], item_factors: np.ndarray, start: np.ndarray, confidence: sp.csr_matrix
) -> np.ndarray:
    """One chunk of a fold-in's users, solved on a Dask worker: the serial fold-in's steps
    (``recalculate_user`` for ``exact``, implicit's CG step for ``cg``) on a model holding the
    fixed item factors, BLAS pinned to one thread as in the retrain process."""
    trainer = ALSTrainer(**params)
    with _one_blas_thread():
        model = trainer._implicit()
        model.item_factors = item_factors
        model.user_factors = np.ascontiguousarray(start)
        if trainer.foldin_solver == "exact":
            return np.asarray(model.recalculate_user(np.arange(start.shape[0]), confidence))
        return _solve_cg(model, start, confidence)


def solve_users_on_dask(
    client: Any,
    params: dict[str, Any],
    item_factors: np.ndarray,
    start: np.ndarray,
    confidence: sp.csr_matrix,
) -> np.ndarray:
    """Fold-in factors of the users whose confidence rows are ``confidence`` (``start``: their
    current factors), solved in one chunk per Dask worker against ``item_factors``.

    The chunks are contiguous runs of rows in order, so the result is assembled in the order
    given whatever worker solved which chunk."""
    workers = sorted(client.scheduler_info()["workers"])
    if not workers:
        raise TrainingError(
            "the Dask cluster has no worker: start `dask worker SCHEDULER_ADDRESS` processes"
        )
    [items] = client.scatter([item_factors], broadcast=True)
    bounds = np.linspace(0, start.shape[0], min(len(workers), start.shape[0]) + 1).astype(int)
    futures = [
        client.submit(
            _solve_user_chunk,
            params,
            items,
            start[lo:hi],
            confidence[lo:hi],
            workers=[workers[k % len(workers)]],
            pure=False,
        )
        for k, (lo, hi) in enumerate(itertools.pairwise(bounds))
    ]
    solved = np.concatenate(client.gather(futures)).astype(start.dtype, copy=False)
    logger.info(
        "ALS fold-in: %d user(s) solved in %d chunk(s) on %d Dask worker(s)",
        start.shape[0],
        len(futures),
        len(workers),
    )
    return solved
