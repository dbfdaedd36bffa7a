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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

from retrain import servable
from retrain.config import ModelSpec, SourceSpec
from retrain.errors import DataError, SchemaError
from retrain.redact import redact_url

logger = logging.getLogger(__name__)

TS = "__ts__"
# ingest only: the problem of the file a row came from (a column it lacks), None when sound
FILE_PROBLEM = "__file_problem__"
SUPPORTED = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


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
    """A partition kept out of training, with the reason and the fix."""

    key: str
    rows: int
    reason: str


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
                f"{candidate} is not a parquet or CSV file: move it out of {path} "
                "(only .csv, .parquet and .pq files are read; .md/.txt are skipped)"
            )
        files.append((candidate, fmt))
    if not files:
        raise DataError(f"source.path {path} holds no .csv or .parquet file")
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


def _read_files(
    source: SourceSpec, freq: str | None
) -> tuple[list[tuple[Path, pd.DataFrame]], list[Quarantine]]:
    """Read each file; with ``freq``, a file declaring its partition that cannot be read is
    quarantined instead of failing the whole source."""
    read: list[tuple[Path, pd.DataFrame]] = []
    quarantined: list[Quarantine] = []
    for path, fmt in _source_files(source):
        try:
            frame = pd.read_csv(path) if fmt == "csv" else pd.read_parquet(path)
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


def read_source(source: SourceSpec) -> pd.DataFrame:
    """Read every row of the source as one frame (strings left as they are)."""
    if source.kind == "sql":
        assert source.url is not None and source.table is not None
        engine = sa.create_engine(source.url)
        try:
            with engine.connect() as conn:
                table = sa.Table(source.table, sa.MetaData(), autoload_with=conn)
                return pd.read_sql(sa.select(table), conn)
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
    frames = [frame for _, frame in _read_files(source, freq=None)[0]]
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


def _check_partition(frame: pd.DataFrame, spec: ModelSpec) -> tuple[pd.DataFrame, str | None]:
    """Clean one partition; returns the usable rows and a quarantine reason (or None)."""
    for col in spec.features.numeric:
        values = frame[col]
        if not pd.api.types.is_numeric_dtype(values):
            coerced = pd.to_numeric(values, errors="coerce")
            bad = coerced.isna() & values.notna()
            if bad.any():
                return frame, (
                    f"numeric feature {col!r} has {int(bad.sum())} non-numeric value(s), e.g. "
                    f"{values[bad].head(2).tolist()}; fix the data or list {col!r} under "
                    "features.categorical"
                )
    label = frame[spec.label]
    if spec.task == "regression" and not pd.api.types.is_numeric_dtype(label):
        bad = pd.to_numeric(label, errors="coerce").isna() & label.notna()
        if bad.any():
            return frame, (
                f"label {spec.label!r} has {int(bad.sum())} non-numeric value(s), e.g. "
                f"{label[bad].head(2).tolist()}; a regression label must be a number: fix the data"
            )
        frame = frame.assign(**{spec.label: pd.to_numeric(label)})
    labelled = frame[frame[spec.label].notna()]
    if labelled.empty:
        return frame, f"label {spec.label!r} is null in every row; wait for labels or fix the data"
    if spec.task == "binary":
        values = set(pd.unique(labelled[spec.label]))
        if not values <= {0, 1}:
            return frame, (
                f"label {spec.label!r} of a binary task holds {sorted(map(str, values))[:5]}; "
                "it must be 0/1"
            )
    return labelled, None


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


def utc_now() -> pd.Timestamp:
    """The wall-clock time as a naive UTC timestamp, like the event times after parsing."""
    return pd.Timestamp.now(tz="UTC").tz_localize(None)


def ingest(
    spec: ModelSpec, as_of: pd.Timestamp | None = None, now: pd.Timestamp | None = None
) -> IngestResult:
    """Read, validate and partition the source. Rows at or after ``as_of`` are not visible.

    Only complete partitions are used: one that ends after ``as_of`` or, without ``as_of``,
    after ``now`` (the wall clock, UTC, by default) is still filling up and is left out, so a
    window ends at the newest complete partition.
    """
    if as_of is not None:
        complete_by = as_of
    elif now is None:
        complete_by = utc_now()
    else:
        complete_by = now.tz_convert("UTC").tz_localize(None) if now.tzinfo else now
    quarantined: list[Quarantine] = []
    files: list[tuple[Path, pd.DataFrame]] = []
    problems: list[str | None] = []
    if spec.source.kind == "files":
        files, quarantined = _read_files(spec.source, spec.partitions.freq)
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
        raw = read_source(spec.source)
    if raw.empty:
        if quarantined:
            return IngestResult((), tuple(quarantined), 0, 0)
        raise DataError("the source holds no row: check source.path / source.table")
    _require_columns(raw, spec)
    ts = parse_timestamps(raw, spec)
    keep = [spec.label, *spec.features.numeric, *spec.features.categorical]
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
    if as_of is None:
        future = frame[TS] > complete_by
        if future.any():
            quarantined += _future_rows(frame[future], spec, complete_by)
            frame = frame[~future].reset_index(drop=True)

    periods = frame[TS].dt.to_period(spec.partitions.freq)
    partitions: list[Partition] = []
    for period, part in frame.groupby(periods, sort=True):
        start = period.start_time
        end = (period + 1).start_time
        if end > complete_by:
            # the newest partition is still filling up
            if as_of is None:
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
        usable, reason = _check_partition(part, spec)
        if reason is not None:
            quarantined.append(Quarantine(key=key, rows=len(part), reason=reason))
            continue
        notes = []
        if duplicates_per.get(key, 0):
            notes.append(f"{int(duplicates_per[key])} duplicated row(s) dropped")
        if len(usable) < len(part):
            notes.append(f"{len(part) - len(usable)} row(s) without label {spec.label!r} dropped")
        partitions.append(
            Partition(key, start, end, fingerprint(usable), usable, "; ".join(notes) or None)
        )
    for q in quarantined:
        logger.warning("quarantined partition %s: %s", q.key, q.reason)
    return IngestResult(tuple(partitions), tuple(quarantined), dropped, len(raw))
