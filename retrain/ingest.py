"""Ingest: read the source, validate its schema, dedupe, split into time partitions.

Every partition gets a content fingerprint. A partition that cannot be used (no labelled row, a
feature that does not parse as a number) is quarantined with the reason; the other partitions
still flow. So are rows whose timestamp lies in the future, and a file whose name declares its
partition (``2011-03-02.parquet`` or ``.../dt=2011-03-02/part-0.parquet``) but that cannot be
read, holds no row, or holds rows outside that partition.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from retrain import servable
from retrain.config import ModelSpec, SourceSpec, label_text
from retrain.errors import DataError, SchemaError
from retrain.redact import redact_url

logger = logging.getLogger(__name__)

TS = "__ts__"
# ingest only: the problem of the file a row came from (a column it lacks), None when sound
FILE_PROBLEM = "__file_problem__"
SUPPORTED = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".json": "json",  # an array of records
    ".jsonl": "json",  # one record per line
    ".ndjson": "json",
}


@dataclass(frozen=True)
class Partition:
    """One time partition of validated rows (``[start, end)``)."""

    key: str
    start: pd.Timestamp
    end: pd.Timestamp
    fingerprint: str
    frame: pd.DataFrame = field(repr=False, compare=False)
    # rows of this partition ingest dropped and why (duplicates, missing labels); None: none
    note: str | None = field(default=None, compare=False)

    @property
    def rows(self) -> int:
        return len(self.frame)


@dataclass(frozen=True)
class Quarantine:
    """A partition kept out of training, with the reason and the fix.

    ``reason`` is this partition's (counts, examples, the file); ``cause`` the same problem in
    words that do not depend on the partition, so that many partitions quarantined for one
    problem are reported once (None: the reason is already partition-independent).
    """

    key: str
    rows: int
    reason: str
    cause: str | None = None

    @property
    def problem(self) -> str:
        """What groups this record with others: the cause, else the reason."""
        return self.cause or self.reason


@dataclass(frozen=True)
class IngestResult:
    partitions: tuple[Partition, ...]
    quarantined: tuple[Quarantine, ...]
    duplicates_dropped: int
    source_rows: int


def _source_files(source: SourceSpec) -> list[tuple[Path, str]]:
    assert source.path is not None
    path = source.path
    if not path.exists():
        raise DataError(f"source.path {path} does not exist: point it at a folder or a file")
    candidates = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    files = []
    for candidate in candidates:
        if candidate.name.startswith(".") or candidate.suffix.lower() in {".md", ".txt"}:
            continue  # README, SOURCE.md, licence texts travel with the data
        fmt = SUPPORTED.get(candidate.suffix.lower())
        if source.format != "auto" and fmt is not None and fmt != source.format:
            continue
        if fmt is None:
            raise DataError(
                f"{candidate} is not a parquet, CSV or JSON file: move it out of {path} "
                "(only .csv, .parquet, .pq, .json, .jsonl and .ndjson files are read; .md/.txt "
                "are skipped)"
            )
        files.append((candidate, fmt))
    if not files:
        raise DataError(f"source.path {path} holds no .csv, .parquet or .json file")
    return files


def declared_partition(path: Path, freq: str) -> str | None:
    """The partition key a file's name declares (its stem or a ``key=value`` folder), if any.

    >>> declared_partition(Path("data/2011-03-02.parquet"), "D")
    '2011-03-02'
    >>> declared_partition(Path("data/dt=2011-03-02/part-0.parquet"), "D")
    '2011-03-02'
    >>> declared_partition(Path("data/2011-03.csv"), "D") is None
    True
    """
    for name in (path.stem, path.parent.name.partition("=")[2]):
        if not name:
            continue
        try:
            key = str(pd.Period(name, freq=freq))
        except (ValueError, TypeError):
            continue
        if key == name:
            return key
    return None


def text_columns(spec: ModelSpec) -> tuple[str, ...]:
    """The columns read as text in every source format: ids and categories (the ALS user and
    item columns are categorical features too) and ``id_columns``, so ``0425210`` stays
    ``0425210``."""
    return tuple(dict.fromkeys([*spec.features.categorical, *spec.id_columns]))


_INTEGRAL_TEXT = r"-?\d+\.0+"


def as_text(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """``columns`` of ``frame`` as strings exactly as written; numbers (parquet, SQL) as their
    text, integral floats without the fraction (a column of codes written as ``1.0``, ``2.0``
    because it has a gap is ``1``, ``2``, like the integers a client sends).

    >>> frame = pd.DataFrame({"a": ["007", None], "b": [1.0, None], "c": ["1.0", "2.0"]})
    >>> as_text(frame, ["a", "b", "c"]).to_dict("list")
    {'a': ['007', None], 'b': ['1', None], 'c': ['1', '2']}
    """
    out = {}
    for col in columns:
        if col not in frame.columns:
            continue
        values = frame[col]
        if pd.api.types.is_float_dtype(values):
            present = values.dropna()
            if (present == present.round()).all():
                values = values.astype("Int64")
            out[col] = values.astype("string")
            continue
        text = values.astype("string")
        present = text.dropna()
        if len(present) and present.str.fullmatch(_INTEGRAL_TEXT).all():
            text = text.str.replace(r"\.0+$", "", regex=True)
        out[col] = text
    return frame.assign(**out) if out else frame


def _read_file(path: Path, fmt: str, text: Sequence[str]) -> pd.DataFrame:
    dtype = {col: "string" for col in text}
    if fmt == "csv":
        return pd.read_csv(path, dtype=dtype)
    if fmt == "json":
        # read_json turns text that looks like a number into one ("0425" -> 425) unless told
        lines = path.suffix.lower() in {".jsonl", ".ndjson"}
        return pd.read_json(path, lines=lines, dtype=dtype)  # type: ignore[arg-type]
    return pd.read_parquet(path)


def _read_files(
    source: SourceSpec, freq: str | None, text: Sequence[str] = ()
) -> tuple[list[tuple[Path, pd.DataFrame]], list[Quarantine]]:
    """Read each file (``text``: columns kept as written, see :func:`as_text`); with ``freq``,
    a file declaring its partition that cannot be read is quarantined instead of failing the
    whole source."""
    read: list[tuple[Path, pd.DataFrame]] = []
    quarantined: list[Quarantine] = []
    for path, fmt in _source_files(source):
        try:
            frame = as_text(_read_file(path, fmt, text), text)
        except Exception as exc:  # pandas/pyarrow raise many types for a bad file
            key = declared_partition(path, freq) if freq else None
            if key is None:
                raise DataError(
                    f"{path} cannot be read as {fmt}: {exc}; fix or remove the file"
                ) from exc
            quarantined.append(
                Quarantine(key, 0, f"file {path} cannot be read as {fmt} ({exc}); rewrite it")
            )
            continue
        read.append((path, frame))
    return read, quarantined


def source_stat_key(source: SourceSpec) -> tuple[tuple[str, int, int], ...] | None:
    """What identifies a file source's current content without reading it: each file's
    path, size and modification time (ns). None for a SQL source (a table has no such key).

    A file written again changes its size or its modification time; one rewritten to the
    same size with its old modification time put back (``touch -d``, ``cp -p`` of another
    file of that size) would not be noticed. Only samples of the source's rows are keyed by
    this (:func:`retrain.families.spine.source_rows`), never what a model trains on."""
    if source.kind != "files":
        return None
    key = []
    for path, _ in _source_files(source):
        stat = path.stat()
        key.append((str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(key)


def read_source(source: SourceSpec, text: Sequence[str] = ()) -> pd.DataFrame:
    """Read every row of the source as one frame (strings left as they are; ``text``: columns
    read as text whatever the format, see :func:`as_text`)."""
    if source.kind == "sql":
        assert source.url is not None and source.table is not None
        engine = sa.create_engine(source.url)
        try:
            with engine.connect() as conn:
                table = sa.Table(source.table, sa.MetaData(), autoload_with=conn)
                return as_text(pd.read_sql(sa.select(table), conn), text)
        except sa.exc.NoSuchTableError:
            raise DataError(
                f"table {source.table!r} does not exist in {redact_url(source.url)}: "
                "fix source.table"
            ) from None
        except sa.exc.OperationalError as exc:
            raise DataError(
                f"cannot read the SQL source {redact_url(source.url)}: {exc.orig}"
            ) from None
        finally:
            engine.dispose()
    frames = [frame for _, frame in _read_files(source, None, text)[0]]
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _required_columns(spec: ModelSpec) -> dict[str, str]:
    """Every column the spec reads, with the setting that names it."""
    needs = {spec.timestamp.column: "timestamp.column", spec.label: "label"}
    if spec.timestamp.hours_from:
        needs[spec.timestamp.hours_from] = "timestamp.hours_from"
    for col in spec.features.numeric:
        needs[col] = "features.numeric"
    for col in spec.features.categorical:
        needs[col] = "features.categorical"
    for col in spec.id_columns:
        needs[col] = "id_columns"
    return needs


def _require_columns(frame: pd.DataFrame, spec: ModelSpec) -> None:
    needs = _required_columns(spec)
    missing = [f"{col!r} ({role})" for col, role in needs.items() if col not in frame.columns]
    if missing:
        raise SchemaError(
            f"column(s) {', '.join(missing)} missing from the source; it has "
            f"{list(frame.columns)}. Fix the spec or the data."
        )


def _incomplete_files(
    files: list[tuple[Path, pd.DataFrame]], spec: ModelSpec, as_of: pd.Timestamp | None
) -> tuple[list[tuple[Path, pd.DataFrame]], list[str | None], list[Quarantine]]:
    """Files that lack a column the spec reads while other files have it.

    Joined with the others, such a file's rows would get NaN in that column and train
    silently on it; instead each row keeps its file's problem (the list returned beside the
    files), and every partition holding such a row is quarantined. A file that lacks the
    timestamp cannot be placed: quarantined whole when its name declares its partition, an
    error naming it otherwise. (A column missing from every file is the spec's problem:
    ``_require_columns`` says so.)
    """
    needs = _required_columns(spec)
    present: set[str] = set()
    for _, frame in files:
        present.update(map(str, frame.columns))
    time_columns = {spec.timestamp.column, spec.timestamp.hours_from} - {None}
    kept: list[tuple[Path, pd.DataFrame]] = []
    problems: list[str | None] = []
    quarantined: list[Quarantine] = []
    for path, frame in files:
        missing = [col for col in needs if col in present and col not in frame.columns]
        if not missing:
            kept.append((path, frame))
            problems.append(None)
            continue
        named = ", ".join(f"{col!r} ({needs[col]})" for col in missing)
        problem = (
            f"file {path} lacks column(s) {named} that the other files have; its rows are not "
            "used: re-export it with every column the spec reads"
        )
        if time_columns & set(missing):
            key = declared_partition(path, spec.partitions.freq)
            if key is None:
                raise SchemaError(
                    f"{problem}. Without its timestamp its rows cannot be placed in a "
                    "partition: fix or remove the file"
                )
            if _visible(key, spec, as_of):
                quarantined.append(Quarantine(key, len(frame), problem))
            continue
        kept.append((path, frame))
        problems.append(problem)
    return kept, problems, quarantined


def parse_timestamps(frame: pd.DataFrame, spec: ModelSpec) -> pd.Series:
    """Event time of every row; raises SchemaError naming unparseable values."""
    try:  # the code every served model runs on raw rows (retrain.servable)
        return servable.parse_timestamps(
            frame, spec.timestamp.column, spec.timestamp.hours_from, spec.timestamp.format
        )
    except servable.ServableError as exc:
        raise SchemaError(str(exc)) from None


def fingerprint(frame: pd.DataFrame) -> str:
    """Content hash of a partition, independent of row order."""
    hashed = np.sort(pd.util.hash_pandas_object(frame, index=False).to_numpy())
    digest = hashlib.sha256(hashed.tobytes())
    digest.update(",".join(map(str, frame.columns)).encode())
    return digest.hexdigest()


Problem = tuple[str, str | None]  # a partition's reason, and its partition-independent cause


def _map_label(frame: pd.DataFrame, spec: ModelSpec) -> tuple[pd.DataFrame, Problem | None]:
    """A binary label as 0/1 through ``positive`` or ``labels``, a multiclass label as its class
    code (its position in ``classes``), before it is checked."""
    label = frame[spec.label]
    present = label.dropna()
    if spec.positive is None and spec.labels is None and spec.classes is None:
        return frame, None
    codes = {value: spec.label_code(value) for value in pd.unique(present)}
    unknown = sorted({label_text(v) for v, code in codes.items() if code is None})
    if unknown and spec.classes is not None:
        rows = int(present.map(codes).isna().sum())
        listed = ", ".join(spec.class_labels)
        fix = (
            "add it to classes if it is a real class (a model knows the classes it was trained "
            "with: a warm start from one with other classes is a schema change, see "
            "stateful.on_schema_change), or fix the data"
        )
        return frame, (
            f"label {spec.label!r} has {rows} row(s) of class {', '.join(map(repr, unknown[:5]))}"
            f", which classes ({listed}) does not list; {fix}",
            f"label {spec.label!r} has a class that classes ({listed}) does not list; {fix}",
        )
    if unknown:
        cause = (
            f"label {spec.label!r} has values that labels ({spec.label_mapping}) does not map; "
            "add each value to labels with its class 0 or 1"
        )
        return frame, (
            f"label {spec.label!r} has {int(present.map(codes).isna().sum())} row(s) with "
            f"values that labels does not map: {', '.join(unknown[:5])}; add each to labels "
            "with its class 0 or 1",
            cause,
        )
    mapped = label.map(codes).astype("float64")
    return frame.assign(**{spec.label: mapped}), None


# the default bounds of a numeric value: float32's range. Beyond it a value is no measurement
# (1e308 is an overflow or a sentinel), and sums and squares of it overflow in the metrics.
DEFAULT_BOUND = float(np.finfo(np.float32).max)


def _out_of_bounds(what: str, col: str, values: pd.Series, spec: ModelSpec) -> Problem | None:
    """Infinite values, or values outside ``features.bounds`` (default: float32's range)."""
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    infinite = np.isinf(numbers)
    if infinite.any():
        fix = "fix the data (write a missing value as an empty cell or null, not inf)"
        return (
            f"{what} has {int(infinite.sum())} infinite value(s) (inf or -inf); {fix}",
            f"{what} has infinite values (inf or -inf); {fix}",
        )
    low, high = spec.features.bounds.get(col, (-DEFAULT_BOUND, DEFAULT_BOUND))
    outside = (numbers < low) | (numbers > high)
    if not outside.any():
        return None
    setting = f"features.bounds.{col}"
    if col in spec.features.bounds:
        fix = f"fix the data or widen {setting}"
    else:
        fix = f"fix the data, or set {setting} = [lower, upper] if such values are real"
    examples = [float(v) for v in numbers[outside][:2]]
    return (
        f"{what} has {int(outside.sum())} value(s) outside [{low:g}, {high:g}], e.g. "
        f"{examples}; {fix}",
        f"{what} has values outside [{low:g}, {high:g}]; {fix}",
    )


def _features_in_bounds(frame: pd.DataFrame, spec: ModelSpec) -> bool:
    """Whether every numeric feature is a number within its bounds in every row of ``frame``:
    then no partition of it has a value outside (the check is row by row), and the checks of
    its partitions can skip that part (one check of the source instead of one a partition)."""
    for col in spec.features.numeric:
        values = frame[col]
        if not pd.api.types.is_numeric_dtype(values):
            return False
        if _out_of_bounds(f"numeric feature {col!r}", col, values, spec) is not None:
            return False
    return True


def _check_partition(
    frame: pd.DataFrame,
    spec: ModelSpec,
    source_labels: set[Any] | None = None,
    features_in_bounds: bool = False,
) -> tuple[pd.DataFrame, Problem | None]:
    """Clean one partition; returns the usable rows and a quarantine reason (or None).
    ``source_labels``: the label values of the whole source, named when a binary label is not
    0/1 (so every partition gives the same reason, reported once). ``features_in_bounds``:
    the numeric features of the whole source were found numbers within their bounds
    (:func:`_features_in_bounds`), so this partition's are."""
    for col in spec.features.numeric:
        values = frame[col]
        if not pd.api.types.is_numeric_dtype(values):
            coerced = pd.to_numeric(values, errors="coerce")
            bad = coerced.isna() & values.notna()
            if bad.any():
                return frame, (
                    f"numeric feature {col!r} has {int(bad.sum())} non-numeric value(s), e.g. "
                    f"{values[bad].head(2).tolist()}; fix the data or list {col!r} under "
                    "features.categorical",
                    f"numeric feature {col!r} has non-numeric values; fix the data or list "
                    f"{col!r} under features.categorical",
                )
    for col in () if features_in_bounds else spec.features.numeric:
        problem = _out_of_bounds(f"numeric feature {col!r}", col, frame[col], spec)
        if problem is not None:
            return frame, problem
    frame, problem = _map_label(frame, spec)
    if problem is not None:
        return frame, problem
    label = frame[spec.label]
    if spec.task == "regression" and not pd.api.types.is_numeric_dtype(label):
        bad = pd.to_numeric(label, errors="coerce").isna() & label.notna()
        if bad.any():
            return frame, (
                f"label {spec.label!r} has {int(bad.sum())} non-numeric value(s), e.g. "
                f"{label[bad].head(2).tolist()}; a regression label must be a number: fix the "
                "data",
                f"label {spec.label!r} has non-numeric values; a regression label must be a "
                "number: fix the data",
            )
        frame = frame.assign(**{spec.label: pd.to_numeric(label)})
    if spec.task not in ("binary", "multiclass"):
        problem = _out_of_bounds(f"label {spec.label!r}", spec.label, frame[spec.label], spec)
        if problem is not None:
            return frame, problem
    labelled = frame[frame[spec.label].notna()]
    if labelled.empty:
        return frame, (
            f"label {spec.label!r} is null in every row; wait for labels or fix the data",
            None,
        )
    if spec.task == "binary":
        values = set(pd.unique(labelled[spec.label]))
        if not values <= {0, 1}:
            return frame, _not_binary(spec, source_labels or values)
    return labelled, None


def _check_positive(frame: pd.DataFrame, spec: ModelSpec) -> None:
    """``positive`` must name a value the label holds: a typo (or YAML reading ``yes`` as
    true) would otherwise make every row a 0."""
    values = sorted({label_text(v) for v in pd.unique(frame[spec.label].dropna())})
    if values and label_text(spec.positive) not in values:
        raise DataError(
            f"positive = {spec.positive!r} matches no value of label {spec.label!r}, which holds "
            f"{', '.join(values[:5])}: set positive to the value that means 1 (in YAML quote "
            "it, positive: 'yes', or it is read as true)"
        )


def _not_binary(spec: ModelSpec, values: set[Any]) -> Problem:
    """Why a binary label that is not 0/1 cannot be used, and the setting that maps it."""
    shown = sorted({label_text(v) for v in values} - {"0", "1"})
    if len(shown) == 2:
        a, b = shown
        fix = (
            f"set positive = {a!r} or {b!r} (the value that means 1), or labels = "
            f"{{{a} = 1, {b} = 0}}, in the spec"
        )
    else:
        fix = "set positive = <the value that means 1> or labels = {<value> = 1, ...} in the spec"
    return (
        f"label {spec.label!r} has values outside {{0, 1}}: {', '.join(shown[:5])}; {fix}",
        f"label {spec.label!r} of a binary task is not 0/1; set positive = <the value that "
        "means 1> or labels = {<value> = 1, <value> = 0} in the spec",
    )


def _vanished_features(frame: pd.DataFrame, watched: list[str], seen: set[str]) -> Problem | None:
    """A feature null in every row of a partition although earlier partitions had values: a
    broken export (a renamed or dropped column) more often than a real absence."""
    checked = [c for c in watched if c in seen]
    if not checked:
        return None
    # one pass over the partition's columns (a partition's check runs for every partition)
    empty = frame[checked].isna().to_numpy().all(axis=0)
    gone = [c for c, none in zip(checked, empty, strict=True) if none]
    if not gone:
        return None
    names = ", ".join(map(repr, gone))
    fix = (
        "fix the export, or list them under features.optional if they may be missing for a "
        "whole partition"
    )
    text = f"feature(s) {names} are null in every row, although earlier partitions have values"
    return f"{text}; {fix}", f"{text}; {fix}"


def _period_of(key: str, freq: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    period = pd.Period(key, freq=freq)
    return period.start_time, (period + 1).start_time


def _visible(key: str, spec: ModelSpec, as_of: pd.Timestamp | None) -> bool:
    """A declared partition that starts at or after ``as_of`` does not exist yet (replay)."""
    return as_of is None or _period_of(key, spec.partitions.freq)[0] < as_of


def _empty_declared_files(
    files: list[tuple[Path, pd.DataFrame]], spec: ModelSpec, as_of: pd.Timestamp | None
) -> list[Quarantine]:
    found = []
    for path, frame in files:
        key = declared_partition(path, spec.partitions.freq)
        if len(frame) == 0 and key is not None and _visible(key, spec, as_of):
            found.append(
                Quarantine(
                    key,
                    0,
                    f"file {path} of partition {key} holds no row: re-export the partition "
                    "(an empty delivery is not a quiet day)",
                )
            )
    return found


def _rows_outside_declared_partitions(
    frame: pd.DataFrame,
    files: list[tuple[Path, pd.DataFrame]],
    spec: ModelSpec,
    as_of: pd.Timestamp | None,
) -> tuple[np.ndarray, list[Quarantine]]:
    """Rows of files whose timestamps leave the partition the file's name declares.

    Such a file is quarantined whole: a daily file that holds another day's rows was written by
    a broken export, and none of its rows can be trusted.
    """
    origin = np.repeat(np.arange(len(files)), [len(f) for _, f in files])
    drop = np.zeros(len(frame), dtype=bool)
    found = []
    ts = frame[TS].to_numpy()
    for i, (path, _) in enumerate(files):
        key = declared_partition(path, spec.partitions.freq)
        if key is None or not _visible(key, spec, as_of):
            continue
        start, end = _period_of(key, spec.partitions.freq)
        mine = origin == i
        outside = mine & ((ts < start.to_datetime64()) | (ts >= end.to_datetime64()))
        if outside.any():
            drop |= mine
            examples = [str(t) for t in frame.loc[outside, TS].head(2)]
            found.append(
                Quarantine(
                    key,
                    int(mine.sum()),
                    f"file {path} of partition {key} has {int(outside.sum())} row(s) whose "
                    f"timestamp {spec.timestamp.column!r} lies outside [{start}, {end}), e.g. "
                    f"{examples}; none of its rows are used: fix the export or move the rows "
                    "to their own partition's file",
                )
            )
    return drop, found


def _row_ids(spec: ModelSpec) -> list[str]:
    """The columns that identify a row: ``id_columns``, else the timestamp and the features."""
    if spec.id_columns:
        return list(spec.id_columns)
    return [TS, *spec.features.numeric, *spec.features.categorical]


def _conflicting_rows(frame: pd.DataFrame, spec: ModelSpec) -> np.ndarray:
    """Labelled rows that share their ids with a row of another label (exact duplicates are
    already gone): which label is true cannot be known, so none of them is used."""
    labelled = frame[frame[spec.label].notna()]
    conflicting = np.zeros(len(frame), dtype=bool)
    if labelled.empty:
        return conflicting
    ids = _row_ids(spec)
    if not labelled.duplicated(subset=ids, keep=False).any():
        return conflicting
    labels = labelled.groupby(ids, dropna=False, sort=False)[spec.label].transform("nunique")
    hit = labels.index[labels.to_numpy() > 1]
    conflicting[frame.index.get_indexer(hit)] = True
    return conflicting


def _conflict_records(rows: pd.DataFrame, spec: ModelSpec) -> list[Quarantine]:
    """One quarantine record per partition holding conflicting rows."""
    if spec.id_columns:
        named = f"id ({', '.join(map(repr, spec.id_columns))})"
        hint = ""
    else:
        named = "timestamp and features"
        hint = (
            ", or, if they are different events, set id_columns to the columns that identify "
            "a row (e.g. id_columns = ['order_id'])"
        )
    found = []
    for period, part in rows.groupby(rows[TS].dt.to_period(spec.partitions.freq), sort=True):
        ids = part[_row_ids(spec)].head(1).to_dict("records")
        example = {k if k != TS else spec.timestamp.column: str(v) for k, v in ids[0].items()}
        found.append(
            Quarantine(
                str(period),
                len(part),
                f"{len(part)} row(s) share their {named} with a row of another label "
                f"{spec.label!r}, e.g. {example}; none of them is used: fix the source{hint}",
                f"rows share their {named} with a row of another label {spec.label!r}; none "
                f"of them is used: fix the source{hint}",
            )
        )
    return found


def _future_rows(rows: pd.DataFrame, spec: ModelSpec, now: pd.Timestamp) -> list[Quarantine]:
    """Rows stamped after now, one quarantine record per partition they fall into."""
    found = []
    for period, part in rows.groupby(rows[TS].dt.to_period(spec.partitions.freq), sort=True):
        examples = [str(t) for t in part[TS].head(2)]
        found.append(
            Quarantine(
                str(period),
                len(part),
                f"{len(part)} row(s) have timestamp {spec.timestamp.column!r} in the future "
                f"(after now, {now}), e.g. {examples}; they are left out: fix the clock or "
                "the timestamps at the source",
            )
        )
    return found


def group_quarantined(
    quarantined: Sequence[Quarantine],
) -> list[tuple[str, list[Quarantine]]]:
    """Quarantine records grouped by problem (partition-independent cause), largest first; a
    group's records in partition order."""
    groups: dict[str, list[Quarantine]] = {}
    for q in quarantined:
        groups.setdefault(q.problem, []).append(q)
    ordered = sorted(groups.items(), key=lambda item: -len(item[1]))
    return [(problem, sorted(records, key=lambda q: q.key)) for problem, records in ordered]


def _group_text(problem: str, records: Sequence[Quarantine]) -> str:
    """A group's problem; with the first partition's own reason when the reasons differ."""
    reasons = {q.reason for q in records}
    if len(reasons) == 1:
        return records[0].reason
    return f"{problem} (partition {records[0].key}: {records[0].reason})"


def quarantine_summary(quarantined: Sequence[Quarantine]) -> list[str]:
    """One line per problem: how many partitions, the first and the last, and the reason.

    >>> lines = quarantine_summary([Quarantine("2011-03-01", 5, "r1", "c"),
    ...                             Quarantine("2011-03-02", 7, "r2", "c"),
    ...                             Quarantine("2011-03-04", 1, "other")])
    >>> for line in lines:
    ...     print(line)
    quarantined 2 partition(s) (2011-03-01 to 2011-03-02, 12 rows): c (partition 2011-03-01: r1)
    quarantined partition 2011-03-04 (1 rows): other
    """
    lines = []
    for problem, records in group_quarantined(quarantined):
        rows = sum(q.rows for q in records)
        text = _group_text(problem, records)
        if len(records) == 1:
            lines.append(f"quarantined partition {records[0].key} ({rows} rows): {text}")
        else:
            lines.append(
                f"quarantined {len(records)} partition(s) ({records[0].key} to "
                f"{records[-1].key}, {rows} rows): {text}"
            )
    return lines


def nothing_usable(quarantined: Sequence[Quarantine]) -> str:
    """Why no partition is usable, when every one was quarantined: the cause and the fix."""
    groups = group_quarantined(quarantined)
    if not groups:
        return "no usable partition was ingested: check the source and --as-of"
    keys = sorted({q.key for q in quarantined})
    span = f"{keys[0]} to {keys[-1]}" if len(keys) > 1 else keys[0]
    if len(groups) == 1:
        problem, records = groups[0]
        return (
            f"no usable partition: all {len(keys)} partition(s) ({span}) were quarantined "
            f"for one reason: {_group_text(problem, records)}"
        )
    parts = "; ".join(
        f"{len(records)} partition(s): {_group_text(problem, records)}"
        for problem, records in groups[:3]
    )
    more = f"; and {len(groups) - 3} more reason(s) (see the warnings)" if len(groups) > 3 else ""
    return (
        f"no usable partition: all {len(keys)} partition(s) ({span}) were quarantined for "
        f"{len(groups)} reasons: {parts}{more}"
    )


def utc_now() -> pd.Timestamp:
    """The wall-clock time as a naive UTC timestamp, like the event times after parsing."""
    return pd.Timestamp.now(tz="UTC").tz_localize(None)


def ingest(
    spec: ModelSpec, as_of: pd.Timestamp | None = None, now: pd.Timestamp | None = None
) -> IngestResult:
    """Read, validate and partition the source. Rows at or after ``as_of`` are not visible.

    Only complete partitions are used: one that ends after ``as_of`` or after ``now`` (the
    wall clock, UTC, by default) is still filling up and is left out, so a window ends at the
    newest complete partition. Rows stamped after ``now`` are quarantined whatever the
    ``as_of``: an ``as_of`` in the future does not make future rows real.
    """
    if now is None:
        wall = utc_now()
    else:
        wall = now.tz_convert("UTC").tz_localize(None) if now.tzinfo else now
    complete_by = wall if as_of is None else min(as_of, wall)
    quarantined: list[Quarantine] = []
    files: list[tuple[Path, pd.DataFrame]] = []
    problems: list[str | None] = []
    if spec.source.kind == "files":
        files, quarantined = _read_files(spec.source, spec.partitions.freq, text_columns(spec))
        quarantined += _empty_declared_files(files, spec, as_of)
        files = [(path, f) for path, f in files if len(f)]
        files, problems, incomplete = _incomplete_files(files, spec, as_of)
        quarantined += incomplete
        raw = (
            pd.concat([f for _, f in files], ignore_index=True)
            if len(files) > 1
            else (files[0][1] if files else pd.DataFrame())
        )
    else:
        raw = read_source(spec.source, text_columns(spec))
    if raw.empty:
        if quarantined:
            return IngestResult((), tuple(quarantined), 0, 0)
        raise DataError("the source holds no row: check source.path / source.table")
    _require_columns(raw, spec)
    ts = parse_timestamps(raw, spec)
    keep = [spec.label, *spec.features.numeric, *spec.features.categorical, *spec.id_columns]
    frame = raw[list(dict.fromkeys(keep))].copy()
    frame.insert(0, TS, ts)
    if files and any(problems):
        lengths = [len(f) for _, f in files]
        frame[FILE_PROBLEM] = np.repeat(np.array(problems, dtype=object), lengths)
    if files:
        misplaced, outside = _rows_outside_declared_partitions(frame, files, spec, as_of)
        quarantined += outside
        frame = frame[~misplaced]
    if as_of is not None:
        frame = frame[frame[TS] < as_of]
    duplicated = frame.duplicated()
    dropped = int(duplicated.sum())
    duplicates_per = (
        frame.loc[duplicated, TS].dt.to_period(spec.partitions.freq).astype(str).value_counts()
    )
    frame = frame[~duplicated].reset_index(drop=True)
    if dropped:
        logger.warning("dropped %d duplicated row(s)", dropped)
    if spec.family != "als":  # an ALS source sums or keeps the last of a pair (als.duplicates)
        conflicting = _conflicting_rows(frame, spec)
        if conflicting.any():
            quarantined += _conflict_records(frame[conflicting], spec)
            frame = frame[~conflicting].reset_index(drop=True)
    future = frame[TS] > wall
    if future.any():
        quarantined += _future_rows(frame[future], spec, wall)
        frame = frame[~future].reset_index(drop=True)

    periods = frame[TS].dt.to_period(spec.partitions.freq)
    partitions: list[Partition] = []
    watched = [
        c
        for c in dict.fromkeys([*spec.features.numeric, *spec.features.categorical])
        if c not in spec.features.optional
    ]
    seen: set[str] = set()  # features with a value in an earlier usable partition
    source_labels = (
        set(pd.unique(frame[spec.label].dropna()))
        if spec.task == "binary" and spec.positive is None and spec.labels is None
        else None
    )
    if spec.positive is not None:
        _check_positive(frame, spec)
    in_bounds = _features_in_bounds(frame, spec)
    for period, part in frame.groupby(periods, sort=True):
        start = period.start_time
        end = (period + 1).start_time
        if end > complete_by:
            # the newest partition is still filling up
            if as_of is None or as_of > wall:
                logger.info(
                    "partition %s ends at %s, after now (%s): still filling up, not used",
                    period,
                    end,
                    complete_by,
                )
            continue
        part = part.sort_values(TS, kind="stable").reset_index(drop=True)
        key = str(period)
        if FILE_PROBLEM in part.columns:
            flagged = part[FILE_PROBLEM].dropna()
            if len(flagged):
                quarantined.append(Quarantine(key, len(part), str(flagged.iloc[0])))
                continue
            part = part.drop(columns=FILE_PROBLEM)
        usable, problem = _check_partition(part, spec, source_labels, in_bounds)
        if problem is None:
            problem = _vanished_features(usable, watched, seen)
        if problem is not None:
            quarantined.append(Quarantine(key, len(part), *problem))
            continue
        if watched:
            valued = usable[watched].notna().to_numpy().any(axis=0)
            seen.update(c for c, has in zip(watched, valued, strict=True) if has)
        notes = []
        if duplicates_per.get(key, 0):
            notes.append(f"{int(duplicates_per[key])} duplicated row(s) dropped")
        if len(usable) < len(part):
            notes.append(f"{len(part) - len(usable)} row(s) without label {spec.label!r} dropped")
        partitions.append(
            Partition(key, start, end, fingerprint(usable), usable, "; ".join(notes) or None)
        )
    for line in quarantine_summary(quarantined):
        logger.warning("%s", line)
    return IngestResult(tuple(partitions), tuple(quarantined), dropped, len(raw))
