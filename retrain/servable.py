"""What a registered model needs to answer raw rows, and nothing more.

Every logged model version carries a copy of this module (``retrain_servable.py``, through
MLflow's ``code_paths``), so that it loads and serves wherever MLflow serves, without retrain
installed. It therefore imports only the standard library, numpy and pandas when it is imported;
lightgbm and scipy are imported inside the loaders that need them (pandas reads parquet with
pyarrow), and those packages are the model's declared requirements.

Training calls the same functions, so a served model derives its inputs exactly as training
did: ``retrain.ingest.parse_timestamps`` (event time), ``retrain.features.compute_features``
(numeric, categorical and derived features), the LightGBM trainer's ``encode`` (the frozen
categories) and the ALS trainer's ``recommend`` (top-k with the popularity fallback).

The trivial baselines are served models too (``retrain.families.baseline``): a tabular
baseline answers every row with its one value (:class:`ConstantModel`), a ranking baseline
the most popular items the user has not seen (:class:`PopularityModel`, the same
:func:`recommend_popular` the backtest scores it with). :func:`load_baseline` reads either.

Raw inputs
    A LightGBM model takes the source's own columns with the source's own types: the timestamp
    column (and ``hours_from``) when it has derived features, then the numeric and categorical
    columns (:class:`TabularInputs`). An ALS model takes user ids, as strings or integers, in
    the source's user column or in a column named ``user`` (:class:`QueryInputs`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

# The file (next to the trainer's artifacts) that says which raw columns the model reads.
INPUTS_FILE = "inputs.json"
# The column an ALS query may always use, whatever the source calls its users.
QUERY_COLUMN = "user"
RECOMMENDATION_COLUMNS = ("user", "rank", "item", "score", "source")
# Features computed from the event time: name -> its values for a timestamp series.
DERIVED: dict[str, Callable[[pd.Series], pd.Series]] = {
    "hour": lambda ts: ts.dt.hour,
    "dayofweek": lambda ts: ts.dt.dayofweek,
    "month": lambda ts: ts.dt.month,
    "dayofyear": lambda ts: ts.dt.dayofyear,
    "is_weekend": lambda ts: (ts.dt.dayofweek >= 5).astype(int),
}
# Users scored per matrix product in recommend(): bounds memory to BATCH x items floats.
BATCH = 2048


class ServableError(ValueError):
    """Input a model cannot answer; the message names the problem and the fix."""


# -- event time and features ------------------------------------------------------------------
def _text_timestamps(raw: pd.Series, column: str, fmt: str | None) -> pd.Series:
    """Timestamps written as text. Several UTC offsets in one column (a local-time export that
    spans a daylight-saving change: ``+01:00`` in winter, ``+02:00`` in summer) are each
    converted to UTC, the standard reading of an offset, and the conversion is logged."""
    try:
        return pd.to_datetime(raw, format=fmt, errors="coerce")
    except ValueError as exc:  # pandas: "Mixed timezones detected. Pass utc=True ..."
        if "timezone" not in str(exc).lower():
            raise ServableError(
                f"timestamp column {column!r} does not parse ({exc}); fix the data or set "
                "timestamp.format"
            ) from None
    ts = pd.to_datetime(raw, format=fmt, errors="coerce", utc=True)
    logger.info(
        "timestamp column %r holds several UTC offsets (a local-time export across a "
        "daylight-saving change?): each timestamp is converted to UTC with its own offset",
        column,
    )
    return ts


def parse_timestamps(
    frame: pd.DataFrame, column: str, hours_from: str | None = None, fmt: str | None = None
) -> pd.Series:
    """Event time of every row (naive UTC, ``datetime64[ns]``); ``hours_from`` adds an hour
    column to a date. Raises ServableError naming the rows that do not parse."""
    raw = frame[column]
    if pd.api.types.is_datetime64_any_dtype(raw):
        ts = raw
    elif pd.api.types.is_numeric_dtype(raw) and fmt in {"s", "ms"}:
        ts = pd.to_datetime(raw, unit=fmt, errors="coerce")
    else:
        ts = _text_timestamps(raw, column, fmt)
    bad = ts.isna() & raw.notna()
    if bad.any() or raw.isna().any():
        examples = raw[bad | raw.isna()].head(3).tolist()
        offsets = (
            "; the others carry a UTC offset: write every timestamp with its offset"
            if getattr(ts.dt, "tz", None) is not None and not raw.isna().all()
            else ""
        )
        raise ServableError(
            f"timestamp column {column!r} does not parse in {int((bad | raw.isna()).sum())} "
            f"row(s), e.g. {examples}{offsets}; fix the data or set timestamp.format (a "
            "strftime pattern, or 's'/'ms' for epoch numbers)"
        )
    if getattr(ts.dt, "tz", None) is not None:
        ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
    if hours_from:
        hours = pd.to_numeric(frame[hours_from], errors="coerce")
        if hours.isna().any():
            raise ServableError(
                f"timestamp.hours_from column {hours_from!r} has non-numeric values; fix the data"
            )
        ts = ts + pd.to_timedelta(hours, unit="h")
    return ts.astype("datetime64[ns]")


def category_strings(values: pd.Series) -> np.ndarray:
    """A categorical column as strings (None when missing), as models see categories.

    Integer codes read as float only because the source has a gap somewhere stay "1", "2",
    not "1.0" (unseen by a model trained on "1").
    """
    if pd.api.types.is_float_dtype(values):
        present = values.dropna()
        if (present == present.round()).all():
            values = values.astype("Int64")
    return values.astype("string").to_numpy(dtype=object, na_value=None)


def derive_features(
    frame: pd.DataFrame,
    ts: pd.Series | None,
    numeric: Sequence[str],
    categorical: Sequence[str],
    derived: Sequence[str],
) -> pd.DataFrame:
    """Model-ready feature columns of raw rows: numeric as float64 (unparseable: NaN),
    categorical as strings, derived features from the event time ``ts``."""
    out: dict[str, np.ndarray] = {}
    for col in numeric:
        out[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64").to_numpy()
    for col in categorical:
        out[col] = category_strings(frame[col])
    if derived:
        if ts is None:
            raise ServableError(f"derived feature(s) {list(derived)} need the event time")
        times = pd.Series(ts.to_numpy())
        for name in derived:
            if name not in DERIVED:
                raise ServableError(
                    f"unknown derived feature {name!r}; choose from {sorted(DERIVED)}"
                )
            out[name] = DERIVED[name](times).astype("float64").to_numpy()
    return pd.DataFrame(out, index=pd.RangeIndex(len(frame)))


def require_columns(frame: Any, columns: Sequence[str]) -> pd.DataFrame:
    if not isinstance(frame, pd.DataFrame):
        raise ServableError(
            f"the model takes a table of rows with columns {list(columns)}, got "
            f"{type(frame).__name__}"
        )
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ServableError(
            f"column(s) {missing} are missing from the rows the model is asked to score; it "
            f"reads the source's own columns {list(columns)} (got {list(map(str, frame.columns))})"
        )
    return frame


@dataclass(frozen=True)
class TabularInputs:
    """The raw columns a tabular model reads and how it turns them into its features."""

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    derived: tuple[str, ...] = ()
    timestamp: str | None = None
    hours_from: str | None = None
    timestamp_format: str | None = None

    @property
    def time_columns(self) -> tuple[str, ...]:
        """The columns the event time is parsed from (only read for derived features)."""
        if not self.derived:
            return ()
        return tuple(c for c in (self.timestamp, self.hours_from) if c)

    @property
    def columns(self) -> tuple[str, ...]:
        """Every raw column the model reads, in order."""
        return tuple(dict.fromkeys((*self.time_columns, *self.numeric, *self.categorical)))

    def features(self, frame: Any) -> pd.DataFrame:
        """The features of raw rows, exactly as training computes them."""
        frame = require_columns(frame, self.columns)
        ts = None
        if self.derived:
            if self.timestamp is None:
                raise ServableError("a model with derived features needs timestamp.column")
            ts = parse_timestamps(frame, self.timestamp, self.hours_from, self.timestamp_format)
        return derive_features(frame, ts, self.numeric, self.categorical, self.derived)


@dataclass(frozen=True)
class QueryInputs:
    """A recommender's query: user ids in the source's ``user`` column (or ``user``)."""

    user: str = QUERY_COLUMN

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.user, QUERY_COLUMN)))

    def users(self, model_input: Any) -> list[Any]:
        if isinstance(model_input, pd.DataFrame):
            for col in self.columns:
                if col in model_input.columns:
                    return model_input[col].tolist()
            raise ServableError(
                f"the recommender reads user ids from column {self.user!r} (or "
                f"{QUERY_COLUMN!r}); got columns {list(map(str, model_input.columns))}"
            )
        if isinstance(model_input, pd.Series | np.ndarray | list | tuple):
            return list(model_input)
        return [model_input]


Inputs = TabularInputs | QueryInputs


def inputs_to_json(inputs: Inputs) -> dict[str, Any]:
    kind = "tabular" if isinstance(inputs, TabularInputs) else "query"
    return {"kind": kind, **asdict(inputs)}


def inputs_from_json(data: Mapping[str, Any]) -> Inputs:
    if data.get("kind") == "query":
        return QueryInputs(user=str(data.get("user", QUERY_COLUMN)))
    return TabularInputs(
        numeric=tuple(data.get("numeric", ())),
        categorical=tuple(data.get("categorical", ())),
        derived=tuple(data.get("derived", ())),
        timestamp=data.get("timestamp"),
        hours_from=data.get("hours_from"),
        timestamp_format=data.get("timestamp_format"),
    )


def read_inputs(path: str | Path | None) -> Inputs | None:
    """The inputs saved with a model (None: it reads its feature columns as they are)."""
    if path is None or not Path(path).exists():
        return None
    return inputs_from_json(json.loads(Path(path).read_text()))


# -- gradient boosting --------------------------------------------------------------------------
# characters LightGBM refuses in a feature name ("Do not support special JSON characters")
_JSON_SPECIAL = re.compile(r'[",:\[\]{}]')


def lightgbm_names(names: Sequence[str]) -> list[str]:
    """The names LightGBM is given for ``names``: each special JSON character (LightGBM
    refuses ``" , : [ ] { }``) becomes ``_``, with a ``__2`` suffix should two names meet.
    Training and serving both go through :func:`encode_frame`, so they agree; the trainer's
    ``feature_names_`` (and the columns a client sends) stay the source's.

    >>> lightgbm_names(["temp", "temp[C]", "temp_C_", "a:b"])
    ['temp', 'temp_C___2', 'temp_C_', 'a_b']
    """
    out: list[str] = []
    for name in names:
        safe = _JSON_SPECIAL.sub("_", str(name))
        candidate, n = safe, 1
        while candidate in out or (candidate != name and candidate in names):
            n += 1
            candidate = f"{safe}__{n}"
        out.append(candidate)
    return out


def _require_features(X: pd.DataFrame, feature_names: Sequence[str]) -> None:
    missing = [c for c in feature_names if c not in X.columns]
    if missing:
        raise ServableError(
            f"feature column(s) {missing} are missing from the data the model is asked to "
            "score; the model was trained with " + ", ".join(feature_names)
        )


def _category_codes(values: pd.Series, col: str, cats: Sequence[str]) -> pd.Series:
    """A categorical column as positions in its frozen categories (float64; unseen and
    missing: NaN), with the warning about unseen categories."""
    as_str = values.astype("string")
    index = pd.Index(cats, dtype="string")
    if index.is_unique and not index.hasnans:
        # one hash lookup per row: position in the frozen categories, -1 if absent
        found = index.get_indexer(as_str)
        mapped = pd.Series(np.where(found >= 0, found, np.nan), index=values.index)
    else:
        mapped = as_str.map({value: float(i) for i, value in enumerate(cats)})
    unseen = mapped.isna() & as_str.notna()
    if unseen.any():
        logger.warning(
            "feature %r: %d row(s) with categories the model never saw (e.g. %s) are "
            "scored as missing",
            col,
            int(unseen.sum()),
            as_str[unseen].unique()[:3].tolist(),
        )
    return mapped.astype("float64")


def _arrow_category_codes(values: pd.Series, cats: Sequence[str]) -> np.ndarray | None:
    """:func:`_category_codes` of an Arrow-backed string column, by one Arrow ``index_in``
    (pandas' path costs about a millisecond a column in dtype resolution and masks); None
    when the column is not one, the categories are not distinct strings, or a value is not
    among them (:func:`_category_codes` then says which)."""
    column = arrow_strings(values)
    if column is None or len(set(cats)) != len(cats) or not all(isinstance(c, str) for c in cats):
        return None
    import pyarrow as pa  # the column is Arrow's already
    import pyarrow.compute as pc

    found = pc.index_in(column, value_set=pa.array(list(cats), type=column.type))
    if found.null_count != column.null_count:  # an unseen category
        return None
    codes = found.to_numpy(zero_copy_only=False)  # nulls: NaN (as float64)
    return np.asarray(codes, dtype="float64")


def encode_frame(
    X: pd.DataFrame, feature_names: Sequence[str], categories: Mapping[str, Sequence[str]]
) -> pd.DataFrame:
    """Columns in training order, named for LightGBM (:func:`lightgbm_names`); categoricals as
    their frozen integer codes (unseen: NaN)."""
    _require_features(X, feature_names)
    out = X[list(feature_names)].copy()
    for col, cats in categories.items():
        out[col] = _category_codes(out[col], col, cats)
    out.columns = lightgbm_names(list(feature_names))
    return out.astype("float64")


def encode_matrix(
    X: pd.DataFrame, feature_names: Sequence[str], categories: Mapping[str, Sequence[str]]
) -> np.ndarray:
    """``encode_frame(X, ...).to_numpy()`` without building the frame: rows x features in
    training order, float64, column-major (as pandas hands LightGBM the frame's block). The
    same values to the bit; ``X`` may hold other columns (they are not read)."""
    _require_features(X, feature_names)
    double = np.dtype("float64")
    out = np.empty((len(X), len(feature_names)), dtype=double, order="F")
    for j, col in enumerate(feature_names):
        values = X[col]
        if col in categories:
            codes = _arrow_category_codes(values, categories[col])
            if codes is None:
                codes = _category_codes(values, col, categories[col]).to_numpy()
            out[:, j] = codes
        elif values.dtype == double:
            out[:, j] = values.to_numpy()
        else:  # by a dtype object: pandas resolves a dtype's name through every extension type
            out[:, j] = values.astype(double).to_numpy()
    return out


# the column of the predicted class in a multiclass model's answer with probabilities
CLASS_COLUMN = "class"
PROBABILITY_PREFIX = "probability_"


def class_answer(proba: np.ndarray, classes: Sequence[Any], probabilities: bool = False) -> Any:
    """A multiclass model's answer: the most probable class of each row, as the training data
    wrote it (an array of strings or integers); with ``probabilities`` a frame of that class
    (``class``) and one ``probability_<class>`` column per class.

    >>> class_answer(np.array([[0.2, 0.8], [0.6, 0.4]]), ["DOWN", "UP"]).tolist()
    ['UP', 'DOWN']
    >>> class_answer(np.array([[0.2, 0.8]]), [1, 2], probabilities=True).to_dict("records")
    [{'class': 2, 'probability_1': 0.2, 'probability_2': 0.8}]
    """
    labels = np.asarray(list(classes), dtype=object)[np.asarray(proba).argmax(axis=1)]
    if all(isinstance(c, int) for c in classes):
        labels = labels.astype("int64")
    if not probabilities:
        return labels
    frame = pd.DataFrame({CLASS_COLUMN: labels})
    for i, name in enumerate(classes):
        frame[f"{PROBABILITY_PREFIX}{name}"] = np.asarray(proba, dtype="float64")[:, i]
    return frame


class TabularModel:
    """A saved LightGBM booster with its frozen encodings, scoring raw rows.

    A multiclass model (``classes``) answers the class of each row, as the training data wrote
    it, or with ``probabilities=True`` that class and one probability per class
    (:func:`class_answer`); any other model one number per row."""

    def __init__(
        self,
        booster: Any,
        feature_names: Sequence[str],
        categories: Mapping[str, Sequence[str]],
        inputs: TabularInputs | None = None,
        classes: Sequence[Any] = (),
    ) -> None:
        self.booster = booster
        self.feature_names = list(feature_names)
        self.categories = {k: list(v) for k, v in categories.items()}
        self.inputs = inputs
        self.classes = list(classes)

    @classmethod
    def load(cls, directory: str | Path, inputs: str | Path | None = None) -> TabularModel:
        """What ``LightGBMTrainer.save`` wrote (``model.txt``, ``encoding.json``)."""
        import lightgbm

        directory = Path(directory)
        meta_path = directory / "encoding.json"
        if not meta_path.exists() or not (directory / "model.txt").exists():
            raise ServableError(f"{directory} holds no saved LightGBM model")
        meta = json.loads(meta_path.read_text())
        booster = lightgbm.Booster(model_file=str(directory / "model.txt"))
        read = read_inputs(inputs)
        if read is not None and not isinstance(read, TabularInputs):
            raise ServableError(f"{inputs} describes a recommender's inputs, not a table's")
        classes = meta.get("classes", []) if meta.get("task") == "multiclass" else []
        return cls(booster, meta["feature_names"], meta["categories"], read, classes)

    def predict(self, model_input: Any, probabilities: bool = False) -> Any:
        frame = require_columns(
            model_input, self.inputs.columns if self.inputs else self.feature_names
        )
        features = self.inputs.features(frame) if self.inputs else frame
        encoded = encode_frame(features, self.feature_names, self.categories)
        scores = np.asarray(self.booster.predict(encoded), dtype="float64")
        if self.classes:
            return class_answer(scores, self.classes, probabilities)
        if probabilities:
            raise ServableError(
                "probabilities are the answer of a multiclass model; this model answers one "
                "number per row: leave out the probabilities parameter"
            )
        return scores


# -- recommendations ------------------------------------------------------------------------------
def id_array(values: Iterable[Any] | pd.Series | np.ndarray) -> np.ndarray:
    """External ids as a plain numpy array (int64 for integer ids, object for strings)."""
    series = values if isinstance(values, pd.Series) else pd.Series(list(values))
    if pd.api.types.is_integer_dtype(series):
        return series.to_numpy(dtype="int64")
    return series.to_numpy(dtype=object)


def lookup(index: np.ndarray, values: Any) -> np.ndarray:
    """Row of each value in ``index`` (-1 when absent).

    Each distinct value is looked up once (a window of interactions repeats its ids many
    times): the same rows as ``get_indexer`` of every value, at a fraction of the CPU. An
    Arrow string column without missing values, against an index of strings, is matched by
    Arrow's ``index_in`` (no Python string per value). ``index`` holds distinct ids."""
    found = _arrow_lookup(index, values)
    if found is not None:
        return found
    codes, distinct = pd.factorize(
        values if isinstance(values, pd.Series | pd.Index | np.ndarray) else pd.Index(values),
        use_na_sentinel=False,
    )
    rows = np.asarray(pd.Index(index).get_indexer(pd.Index(distinct)), dtype="int64")
    return rows[codes]


def arrow_strings(values: Any) -> Any:
    """The Arrow array of an Arrow-backed string column (or index, or array), else None."""
    array = getattr(values, "array", values)
    dtype = getattr(array, "dtype", None)
    is_string = (isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow") or (
        isinstance(dtype, pd.ArrowDtype) and str(dtype.pyarrow_dtype) in {"string", "large_string"}
    )
    return array.__arrow_array__() if is_string else None


def _arrow_lookup(index: np.ndarray, values: Any) -> np.ndarray | None:
    """:func:`lookup` by Arrow's ``index_in``, or None when it does not apply (``values`` not
    Arrow strings, a missing value, an index that is not all strings)."""
    column = arrow_strings(values)
    index = np.asarray(index)
    if column is None or column.null_count or index.dtype != object or index.size == 0:
        return None
    import pyarrow as pa  # the column is Arrow's already
    import pyarrow.compute as pc

    try:
        keys = pa.array(index, type=column.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # an id that is not a string
        return None
    if keys.null_count:
        return None
    found = pc.index_in(column, value_set=keys)
    return np.asarray(found.fill_null(-1).to_numpy(), dtype="int64")


def coerce_ids(index: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Query ids in the index's type: '42' finds user 42 when the model's ids are integers."""
    if index.dtype.kind in "iu" and ids.dtype.kind not in "iu":
        numeric = pd.to_numeric(pd.Series(ids, dtype=object), errors="coerce")
        whole = numeric.notna() & (numeric == numeric.round())
        if whole.all():
            return numeric.to_numpy(dtype="int64")
    return ids


def query_ids(user_ids: Any) -> np.ndarray:
    """The distinct query ids, in the order first given."""
    if isinstance(user_ids, str | int | np.integer):
        user_ids = [user_ids]
    return id_array(pd.Series(pd.unique(pd.Series(list(user_ids)))))


def query_keys(index: np.ndarray, users: Sequence[Any]) -> np.ndarray:
    """Raw user ids (strings or integers) as the keys of a model's id map: a model whose ids
    are strings (the ALS family keeps them as training does, :func:`category_strings`) finds
    user 42 by 42 or "42"; integer ids are matched by :func:`coerce_ids`."""
    whole = [int(u) if isinstance(u, float) and u.is_integer() else u for u in users]
    series = pd.Series(whole, dtype=object).infer_objects()
    if index.dtype.kind in "iu":
        return id_array(series)
    return category_strings(series)


def check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ServableError(f"k must be a positive integer, got {k!r}")
    return int(k)


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Columns of the k best scores of each row, best first (ties: lower column first)."""
    n_cols = scores.shape[1]
    kk = min(k, n_cols)
    if kk < n_cols:
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        part.sort(axis=1)
    else:
        part = np.broadcast_to(np.arange(n_cols), scores.shape).copy()
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(part_scores, order, axis=1)


def recommendation_frame(
    users: np.ndarray, items: np.ndarray, scores: np.ndarray, source: str
) -> pd.DataFrame:
    """Rows ``user, rank, item, score, source`` from (n_users, k) item and score arrays.

    Entries whose score is -inf (filtered) are left out, so a user may get fewer than k rows.
    """
    return pd.DataFrame(_recommendation_columns(users, items, scores, source))


def _recommendation_columns(
    users: np.ndarray, items: np.ndarray, scores: np.ndarray, source: str
) -> dict[str, np.ndarray]:
    """The columns of :func:`recommendation_frame`, as arrays."""
    width = items.shape[1]
    keep = np.isfinite(scores)
    ranks = np.cumsum(keep, axis=1)
    return {
        "user": np.repeat(users, width)[keep.ravel()],
        "rank": ranks[keep].astype("int64"),
        "item": items[keep],
        "score": scores[keep].astype("float64"),
        "source": np.full(int(keep.sum()), source, dtype=object),
    }


def _rows_in_order(parts: list[dict[str, np.ndarray]], order: np.ndarray | None) -> pd.DataFrame:
    """The rows of ``parts`` (columns of :func:`recommendation_frame`), taken in ``order``
    (None: as they come): what ``pd.concat`` of their frames and ``iloc[order]`` give (the
    same values and dtypes, a fresh RangeIndex), built as one frame. A part without rows goes
    through ``pd.concat``, whose dtype of an empty column is its own."""
    if any(part["rank"].size == 0 for part in parts):
        out = pd.concat([pd.DataFrame(part) for part in parts], ignore_index=True)
        return out if order is None else out.iloc[order].reset_index(drop=True)
    columns = {}
    for name in parts[0]:
        values = parts[0][name] if len(parts) == 1 else np.concatenate([p[name] for p in parts])
        columns[name] = values if order is None else values[order]
    return pd.DataFrame(columns)


def empty_recommendations() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in RECOMMENDATION_COLUMNS})


def recommend(
    factors: RecommenderFactors, user_ids: Iterable[Any], k: int = 10, filter_seen: bool = True
) -> pd.DataFrame:
    """Top-k items per user: ``user, rank, item, score, source`` in the order given.

    Known users with a positive history get ALS scores (``source="als"``; items they have
    seen in training are left out when ``filter_seen``); unknown users (and a known user
    with no positive left) get the most popular items of the recent past
    (``source="popularity"``). Repeated ids are answered once.
    """
    k = check_k(k)
    users = query_ids(user_ids)
    if users.size == 0:
        return empty_recommendations()
    rows = lookup(factors.user_index, coerce_ids(factors.user_index, users))
    als = rows >= 0
    als[als] = factors.has_history[rows[als]]
    parts = []
    positions = []
    als_positions = np.flatnonzero(als)
    for start in range(0, als_positions.size, BATCH):
        batch = als_positions[start : start + BATCH]
        batch_rows = rows[batch]
        scores = factors.user_factors[batch_rows] @ factors.item_factors.T
        if filter_seen:
            seen = factors.seen[batch_rows].tocoo()
            scores[seen.row, seen.col] = -np.inf
        cols, best = top_k(scores, k)
        parts.append(_recommendation_columns(users[batch], factors.item_index[cols], best, "als"))
        positions.append(np.repeat(batch, (np.isfinite(best)).sum(axis=1)))
    fallback = np.flatnonzero(~als)
    if fallback.size:
        head = factors.popular_items[:k]
        parts.append(
            _recommendation_columns(
                users[fallback],
                np.broadcast_to(factors.item_index[head], (fallback.size, head.size)),
                np.broadcast_to(factors.popular_scores[:k], (fallback.size, head.size)),
                "popularity",
            )
        )
        positions.append(np.repeat(fallback, head.size))
    # the rows in the order of the users asked (one frame, not a concat and a reorder)
    order = np.argsort(np.concatenate(positions), kind="stable")
    return _rows_in_order(parts, order)


@dataclass(frozen=True)
class RecommenderFactors:
    """What answering a query needs of a fitted ALS model (``seen``: a scipy CSR matrix)."""

    user_index: np.ndarray
    item_index: np.ndarray
    user_factors: np.ndarray
    item_factors: np.ndarray
    seen: Any
    has_history: np.ndarray
    popular_items: np.ndarray
    popular_scores: np.ndarray


def _ids(column: pd.Series) -> np.ndarray:
    if pd.api.types.is_integer_dtype(column):
        return column.to_numpy(dtype="int64")
    return column.to_numpy(dtype=object)


class RecommenderModel:
    """A saved ALS model answering "top-k items for these users" from raw user ids."""

    def __init__(self, factors: RecommenderFactors, inputs: QueryInputs | None = None) -> None:
        self.factors = factors
        self.inputs = inputs or QueryInputs()

    @classmethod
    def load(cls, directory: str | Path, inputs: str | Path | None = None) -> RecommenderModel:
        """What ``ALSTrainer.save`` wrote (``als.json``, factors, id maps, matrices)."""
        import scipy.sparse as sp

        directory = Path(directory)
        if not (directory / "als.json").exists():
            raise ServableError(f"{directory} holds no saved ALS model (als.json is missing)")
        arrays = {
            name: np.load(directory / f"{name}.npy", allow_pickle=False)
            for name in ("user_factors", "item_factors", "popular_items", "popular_scores")
        }
        user_items = sp.csr_matrix(sp.load_npz(directory / "user_items.npz"))
        factors = RecommenderFactors(
            user_index=_ids(pd.read_parquet(directory / "user_index.parquet")["user"]),
            item_index=_ids(pd.read_parquet(directory / "item_index.parquet")["item"]),
            user_factors=arrays["user_factors"],
            item_factors=arrays["item_factors"],
            seen=sp.csr_matrix(sp.load_npz(directory / "seen.npz")),
            has_history=user_items.getnnz(axis=1) > 0,
            popular_items=arrays["popular_items"],
            popular_scores=arrays["popular_scores"],
        )
        read = read_inputs(inputs)
        if read is not None and not isinstance(read, QueryInputs):
            raise ServableError(f"{inputs} describes a table's inputs, not a recommender's")
        return cls(factors, read)

    def predict(self, model_input: Any, k: int = 10) -> pd.DataFrame:
        users = query_keys(self.factors.user_index, self.inputs.users(model_input))
        return recommend(self.factors, users, k=k)


# -- trivial baselines ------------------------------------------------------------------------
# The file a saved baseline keeps its kind and parameters in (next to its arrays).
BASELINE_FILE = "baseline.json"


class ConstantModel:
    """A tabular baseline: the training window's mean, majority class or positive rate,
    the same value for every row. It still checks that rows carry the model's raw columns,
    so a client that sends the wrong table is told, as a booster would tell it.

    A multiclass baseline (``classes``, with ``probabilities``: its one row of class
    probabilities, priors or one-hot) answers as a multiclass booster does: the class of each
    row as the training data wrote it, or with ``probabilities=True`` that class and one
    probability per class (:func:`class_answer`)."""

    def __init__(
        self,
        value: float,
        inputs: TabularInputs | None = None,
        classes: Sequence[Any] = (),
        probabilities: Sequence[float] = (),
    ) -> None:
        self.value = float(value)
        self.inputs = inputs
        self.classes = list(classes)
        self.probabilities = np.asarray(list(probabilities), dtype="float64")
        if self.classes and self.probabilities.size != len(self.classes):
            raise ServableError(
                f"a multiclass baseline of {len(self.classes)} classes holds "
                f"{self.probabilities.size} probabilities: its {BASELINE_FILE} is damaged"
            )

    @classmethod
    def load(cls, directory: str | Path, inputs: str | Path | None = None) -> ConstantModel:
        meta = _baseline_meta(directory, "constant")
        read = read_inputs(inputs)
        if read is not None and not isinstance(read, TabularInputs):
            raise ServableError(f"{inputs} describes a recommender's inputs, not a table's")
        classes = meta.get("classes", []) if meta.get("task") == "multiclass" else []
        return cls(float(meta["value"]), read, classes, meta.get("probabilities", []))

    def predict(self, model_input: Any, probabilities: bool = False) -> Any:
        if self.inputs is not None:
            model_input = require_columns(model_input, self.inputs.columns)
        if self.classes:
            rows = np.tile(self.probabilities, (len(model_input), 1))
            return class_answer(rows, self.classes, probabilities)
        if probabilities:
            raise ServableError(
                "probabilities are the answer of a multiclass model; this model answers one "
                "number per row: leave out the probabilities parameter"
            )
        return np.full(len(model_input), self.value, dtype="float64")


def recommend_popular(
    item_index: np.ndarray,
    user_index: np.ndarray,
    ranking: np.ndarray,
    scores: np.ndarray,
    seen: Any,
    user_ids: Iterable[Any],
    k: int = 10,
    filter_seen: bool = True,
    source: str = "popularity",
) -> pd.DataFrame:
    """Top-k of ``ranking`` (item rows, most popular first, with their ``scores``) for each
    user; a known user's ``seen`` items (a users x items CSR matrix) are left out."""
    k = check_k(k)
    users = query_ids(user_ids)
    if users.size == 0:
        return empty_recommendations()
    rows = lookup(user_index, coerce_ids(user_index, users))
    parts = []
    for start in range(0, users.size, BATCH):
        part_users, part_rows = users[start : start + BATCH], rows[start : start + BATCH]
        known = part_rows >= 0
        width = k
        if filter_seen and known.any():
            # at most (items seen) of the k + seen most popular items can be filtered
            width = k + int(seen.getnnz(axis=1)[part_rows[known]].max())
        width = min(width, ranking.size)
        head = ranking[:width]
        items = np.broadcast_to(head, (part_users.size, width))
        best = np.broadcast_to(scores[:width], (part_users.size, width)).copy()
        if filter_seen and known.any():
            position = np.full(item_index.size, -1, dtype="int64")
            position[head] = np.arange(width)
            hits = seen[part_rows[known]].tocoo()
            pos = position[hits.col]
            hit = pos >= 0
            best[np.flatnonzero(known)[hits.row[hit]], pos[hit]] = -np.inf
            # unseen items first, in popularity order
            order = np.argsort(~np.isfinite(best), axis=1, kind="stable")[:, :k]
            items = np.take_along_axis(items, order, axis=1)
            best = np.take_along_axis(best, order, axis=1)
        else:
            items, best = items[:, :k], best[:, :k]
        parts.append(_recommendation_columns(part_users, item_index[items], best, source))
    return _rows_in_order(parts, None)


class PopularityModel:
    """A ranking baseline: the most popular items of the recent past of training, the items a
    known user has already seen left out (``source`` = "popularity")."""

    def __init__(
        self,
        item_index: np.ndarray,
        user_index: np.ndarray,
        ranking: np.ndarray,
        scores: np.ndarray,
        seen: Any,
        inputs: QueryInputs | None = None,
    ) -> None:
        self.item_index, self.user_index = item_index, user_index
        self.ranking, self.scores, self.seen = ranking, scores, seen
        self.inputs = inputs or QueryInputs()

    @classmethod
    def load(cls, directory: str | Path, inputs: str | Path | None = None) -> PopularityModel:
        import scipy.sparse as sp

        directory = Path(directory)
        _baseline_meta(directory, "popularity")
        read = read_inputs(inputs)
        if read is not None and not isinstance(read, QueryInputs):
            raise ServableError(f"{inputs} describes a table's inputs, not a recommender's")
        return cls(
            _ids(pd.read_parquet(directory / "item_index.parquet")["item"]),
            _ids(pd.read_parquet(directory / "user_index.parquet")["user"]),
            np.load(directory / "ranking.npy", allow_pickle=False),
            np.load(directory / "scores.npy", allow_pickle=False),
            sp.csr_matrix(sp.load_npz(directory / "seen.npz")),
            read,
        )

    def predict(self, model_input: Any, k: int = 10) -> pd.DataFrame:
        users = query_keys(self.user_index, self.inputs.users(model_input))
        return recommend_popular(
            self.item_index, self.user_index, self.ranking, self.scores, self.seen, users, k
        )


def _baseline_meta(directory: str | Path, kind: str) -> dict[str, Any]:
    path = Path(directory) / BASELINE_FILE
    if not path.exists():
        raise ServableError(f"{directory} holds no saved baseline ({BASELINE_FILE} is missing)")
    meta: dict[str, Any] = json.loads(path.read_text())
    if meta.get("kind") != kind:
        raise ServableError(f"{path} holds a {meta.get('kind')!r} baseline, not a {kind!r} one")
    return meta


def load_baseline(
    directory: str | Path, inputs: str | Path | None = None
) -> ConstantModel | PopularityModel:
    """The saved baseline in ``directory``, whichever kind it is."""
    path = Path(directory) / BASELINE_FILE
    if not path.exists():
        raise ServableError(f"{directory} holds no saved baseline ({BASELINE_FILE} is missing)")
    kind = json.loads(path.read_text()).get("kind")
    if kind == "popularity":
        return PopularityModel.load(directory, inputs)
    return ConstantModel.load(directory, inputs)
