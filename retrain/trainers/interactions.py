"""Interaction tables for the recommendation family: checks, id maps, sparse matrices, popularity.

An interaction table has one row per event: ``user`` and ``item`` (external ids, int or str),
``weight`` (a rating, a count or 1.0; never negative) and ``ts`` (a timestamp). A row is a
*positive* when its weight is above zero and, if ``min_rating`` is set, at least ``min_rating``;
only positives teach a model what a user likes, but every row counts as *seen* (a user who rated
a film 1 star has still watched it: recommending it again is wasted).

Recommendations are a table ``user, rank, item, score, source`` (rank 1 is the best item;
``source`` says which model produced the row, e.g. ``"als"`` or ``"popularity"``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from retrain import servable
from retrain.errors import TrainingError

# what a served model runs too (retrain.servable ships inside every model version)
from retrain.servable import (
    RECOMMENDATION_COLUMNS,
    coerce_ids,
    empty_recommendations,
    id_array,
    lookup,
    query_ids,
    recommendation_frame,
    top_k,
)

__all__ = [
    "RECOMMENDATION_COLUMNS",
    "coerce_ids",
    "empty_recommendations",
    "id_array",
    "lookup",
    "query_ids",
    "recommendation_frame",
    "top_k",
]

COLUMNS = ("user", "item", "weight", "ts")
DUPLICATES = ("sum", "last")


def check_interactions(frame: Any) -> pd.DataFrame:
    """The four columns of ``frame`` after checking them; raises TrainingError naming the fix."""
    if not isinstance(frame, pd.DataFrame):
        raise TrainingError(
            "interactions must be a pandas DataFrame with columns user, item, weight, ts; "
            f"got {type(frame).__name__}"
        )
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise TrainingError(
            f"interactions lack column(s) {missing}: rename the source columns to user, item, "
            "weight, ts (MovieLens: userId -> user, movieId -> item, rating -> weight, "
            "timestamp -> ts)"
        )
    if len(frame) == 0:
        raise TrainingError(
            "no interactions to fit on: the training window is empty; widen it or check ingest"
        )
    for col in ("user", "item"):
        nulls = int(frame[col].isna().sum())
        if nulls:
            raise TrainingError(f"{nulls} interaction(s) have no {col} id: drop them in ingest")
    weight = frame["weight"]
    if not pd.api.types.is_numeric_dtype(weight) or pd.api.types.is_bool_dtype(weight):
        raise TrainingError(
            f"column weight must be numeric (a rating, a count or 1.0), got {weight.dtype}"
        )
    values = weight.to_numpy(dtype="float64", na_value=np.nan)
    bad = ~np.isfinite(values)
    if bad.any():
        raise TrainingError(
            f"{int(bad.sum())} interaction(s) have a missing or infinite weight: fill or drop "
            "them in ingest"
        )
    negative = values < 0
    if negative.any():
        first = int(np.flatnonzero(negative)[0])
        raise TrainingError(
            f"{int(negative.sum())} interaction(s) have negative weights (e.g. "
            f"{values[first]:g} for user {frame['user'].iloc[first]!r}, item "
            f"{frame['item'].iloc[first]!r}): ALS reads a negative confidence as a dislike and "
            "would learn it silently; drop or clip these rows (or shift the rating scale) "
            "before fit"
        )
    if not pd.api.types.is_datetime64_any_dtype(frame["ts"]):
        raise TrainingError(
            f"column ts must hold timestamps (datetime64), got {frame['ts'].dtype}: convert it, "
            "e.g. pd.to_datetime(frame['ts'], unit='s') for Unix seconds"
        )
    if frame["ts"].isna().any():
        raise TrainingError(
            f"{int(frame['ts'].isna().sum())} interaction(s) have no timestamp: drop them in ingest"
        )
    return frame.loc[:, list(COLUMNS)]


def check_min_rating(min_rating: float | None) -> None:
    if min_rating is not None and (
        isinstance(min_rating, bool) or not np.isfinite(float(min_rating))
    ):
        raise TrainingError(f"min_rating must be a finite number or None, got {min_rating!r}")


def positive_mask(weights: np.ndarray, min_rating: float | None) -> np.ndarray:
    """Rows that count as positives: weight > 0 and weight >= min_rating (when set)."""
    mask = weights > 0
    if min_rating is not None:
        mask &= weights >= float(min_rating)
    return mask


def check_positives(mask: np.ndarray, min_rating: float | None) -> None:
    if not mask.any():
        rule = "weight > 0" + ("" if min_rating is None else f" and weight >= {min_rating:g}")
        raise TrainingError(
            f"none of the {mask.size} interactions counts as a positive ({rule}): lower "
            "min_rating or widen the training window"
        )


def dedupe_last(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep only the latest row of each (user, item) pair (ties: the later row of the input)."""
    ordered = frame.sort_values("ts", kind="stable")
    return ordered.drop_duplicates(["user", "item"], keep="last").sort_index()


def sorted_unique(values: pd.Series, what: str) -> np.ndarray:
    """Distinct ids in sorted order (so row numbers do not depend on the input's row order).

    Arrow strings without missing values are made distinct and sorted by Arrow (UTF-8 byte
    order is code point order: the order of Python's sort), as the same Python strings."""
    column = servable.arrow_strings(values)
    if column is not None and not column.null_count:
        import pyarrow.compute as pc  # the column is Arrow's already

        distinct = pc.unique(column)
        ordered = distinct.take(pc.array_sort_indices(distinct))
        return np.asarray(ordered.to_numpy(zero_copy_only=False), dtype=object)
    unique = id_array(pd.Series(pd.unique(values), dtype=values.dtype))
    try:
        return np.sort(unique)
    except TypeError as exc:
        raise TrainingError(
            f"{what} ids mix types (e.g. 1 and '1'): cast the column to one type in ingest"
        ) from exc


def id_rows(
    values: pd.Series, what: str, where: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The id map of ``values[where]`` and the row of every value in it: ``(lookup(index,
    values), index)`` with ``index = sorted_unique(values[where], what)`` (all values without
    ``where``). Arrow strings without missing values take one dictionary encoding and one sort
    of the distinct ids, instead of two hash passes over every value."""
    column = servable.arrow_strings(values)
    if column is None or column.null_count:
        index = sorted_unique(values if where is None else values[where], what)
        return lookup(index, values), index
    import pyarrow as pa  # the column is Arrow's already
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(column.combine_chunks())
    codes = np.asarray(encoded.indices.to_numpy(), dtype="int64")
    kept = np.arange(len(encoded.dictionary))
    if where is not None:
        present = np.zeros(kept.size, dtype=bool)
        present[codes[np.asarray(where, dtype=bool)]] = True
        kept = np.flatnonzero(present)
    distinct = encoded.dictionary.take(pa.array(kept))
    order = np.asarray(pc.array_sort_indices(distinct), dtype="int64")
    index = np.asarray(distinct.take(pa.array(order)).to_numpy(zero_copy_only=False), dtype=object)
    rank = np.full(len(encoded.dictionary), -1, dtype="int64")
    rank[kept[order]] = np.arange(order.size)
    return rank[codes], index


def encode_ids(
    index: np.ndarray | None, values: pd.Series, positive: np.ndarray, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Row of every value, and the id map: ``index`` plus the ids of positive rows it lacks.

    Without an ``index`` the map is the sorted distinct ids of the positive rows. Otherwise
    ``index`` keeps its rows (a row never changes meaning) and the ids it lacks are appended,
    sorted. An id with no positive row gets no row (-1).
    """
    if index is None or index.size == 0:
        return id_rows(values, what, positive)
    codes = lookup(index, values)
    absent = codes < 0
    if not absent.any():
        return codes, index
    candidates = values[absent]
    unique = sorted_unique(candidates[positive[absent]], what)
    if unique.size == 0:
        return codes, index
    if index.dtype.kind != unique.dtype.kind:
        raise TrainingError(
            f"{what} ids are {unique.dtype} in the new data but {index.dtype} in the model: "
            "cast them to the model's type in ingest"
        )
    extra = lookup(unique, candidates)
    codes[absent] = np.where(extra >= 0, extra + index.size, -1)
    return codes, np.concatenate([index, unique.astype(index.dtype, copy=False)])


def sparse_matrix(
    rows: np.ndarray, cols: np.ndarray, values: np.ndarray, shape: tuple[int, int]
) -> sp.csr_matrix:
    """CSR matrix with duplicates summed (in float64) and sorted column indices."""
    matrix = sp.csr_matrix(
        (np.asarray(values, dtype="float64"), (rows, cols)), shape=shape, dtype="float64"
    )
    matrix.sum_duplicates()
    matrix.sort_indices()
    return matrix


def pad_rows_cols(matrix: sp.csr_matrix, shape: tuple[int, int]) -> sp.csr_matrix:
    """``matrix`` grown to ``shape`` with empty rows and columns at the end."""
    rows, cols = matrix.shape
    if (rows, cols) == shape:
        return matrix
    indptr = np.concatenate(
        [matrix.indptr, np.full(shape[0] - rows, matrix.indptr[-1], dtype=matrix.indptr.dtype)]
    )
    return sp.csr_matrix((matrix.data, matrix.indices, indptr), shape=shape)


def popularity_ranking(
    user_rows: np.ndarray,
    item_rows: np.ndarray,
    ts: np.ndarray,
    n_items: int,
    end: pd.Timestamp,
    window: pd.Timedelta,
    overall: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Every item row ordered by recent popularity; returns (item rows, scores).

    The score is the number of distinct users with a positive interaction in the window
    ``(end - window, end]``; ties (and items not seen in the window) are ordered by the number
    of distinct users over all the given rows (``overall``, computed when not given), then by
    item row.
    """
    n_items = int(n_items)
    recent = ts > np.datetime64((end - window).to_datetime64())
    scores = _distinct_users_per_item(user_rows[recent], item_rows[recent], n_items)
    if overall is None:
        overall = _distinct_users_per_item(user_rows, item_rows, n_items)
    order = np.lexsort((np.arange(n_items), -overall, -scores))
    return order, scores[order].astype("float64")


def _distinct_users_per_item(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    if users.size == 0:
        return np.zeros(n_items, dtype="int64")
    # sort + compare neighbours: numpy 2.x's hash-based np.unique is ~30x slower on these keys
    pairs = np.sort(users.astype("int64") * n_items + items.astype("int64"))
    distinct = pairs[np.concatenate(([True], pairs[1:] != pairs[:-1]))]
    return np.bincount(distinct % n_items, minlength=n_items)


def check_k(k: Any) -> int:
    try:
        return servable.check_k(k)
    except servable.ServableError as exc:
        raise TrainingError(str(exc)) from None


def check_window(window: Any) -> pd.Timedelta:
    try:
        value = pd.Timedelta(window)
    except (TypeError, ValueError) as exc:
        raise TrainingError(
            f"popularity window {window!r} is not a duration: use e.g. '30D' or '12h'"
        ) from exc
    if pd.isna(value) or value <= pd.Timedelta(0):
        raise TrainingError(f"popularity window must be positive, got {window!r}")
    return value


def splice_rows(
    matrix: sp.csr_matrix, rows: np.ndarray, replacement: sp.csr_matrix
) -> sp.csr_matrix:
    """``matrix`` with its rows ``rows`` (sorted, distinct) replaced by the rows of ``replacement``.

    Every other row is copied as it is (same values, same order): O(nnz) array copies, no
    arithmetic, so the result is bit-for-bit what building the whole matrix again would give.
    """
    rows = np.asarray(rows, dtype="int64")
    counts = np.diff(matrix.indptr).astype("int64")
    new_counts = counts.copy()
    new_counts[rows] = np.diff(replacement.indptr)
    indptr = np.zeros(counts.size + 1, dtype="int64")
    np.cumsum(new_counts, out=indptr[1:])
    total = int(indptr[-1])
    indices = np.empty(total, dtype=matrix.indices.dtype)
    data = np.empty(total, dtype=matrix.data.dtype)
    replaced = np.zeros(counts.size, dtype=bool)
    replaced[rows] = True
    keep = np.repeat(~replaced, counts)
    shift = np.repeat(indptr[:-1] - matrix.indptr[:-1].astype("int64"), counts)[keep]
    target = np.flatnonzero(keep) + shift
    indices[target] = matrix.indices[keep]
    data[target] = matrix.data[keep]
    spots = np.repeat(indptr[rows] - replacement.indptr[:-1].astype("int64"), new_counts[rows])
    spots += np.arange(replacement.nnz)
    indices[spots] = replacement.indices
    data[spots] = replacement.data.astype(data.dtype, copy=False)
    return sp.csr_matrix((data, indices, indptr), shape=matrix.shape)
