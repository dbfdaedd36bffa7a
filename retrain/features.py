"""Feature cache and training windows.

Features are computed per time partition and cached as parquet, keyed by (feature-spec hash,
partition fingerprint): only missing or stale partitions are computed. A partition's features use
only that partition's rows, so no feature can see data after the partition's end.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from retrain.config import ModelSpec
from retrain.errors import CacheError, EmptyWindowError
from retrain.ingest import TS, Partition, Quarantine, nothing_usable
from retrain.redact import redact_url
from retrain.servable import derive_features

logger = logging.getLogger(__name__)

PARTITION = "__partition__"


def compute_features(part: Partition, spec: ModelSpec) -> pd.DataFrame:
    """Model-ready columns of one partition: timestamp, partition key, label and features."""
    frame = part.frame
    out = pd.DataFrame({TS: frame[TS].to_numpy(), PARTITION: part.key})
    out[spec.label] = pd.to_numeric(frame[spec.label], errors="raise").astype("float64").to_numpy()
    # the code every served model runs on raw rows (retrain.servable ships inside the model)
    features = derive_features(
        frame,
        pd.Series(frame[TS].to_numpy()),
        spec.features.numeric,
        spec.features.categorical,
        spec.features.derived,
    )
    for col in features.columns:
        out[col] = features[col].to_numpy()
    return out


class _Memo(threading.local):
    """Cached partitions held in memory while ``in_memory()`` is active in this thread (None:
    read each time), as the Arrow tables parsed from their files (``FeatureCache.load``
    converts a window's tables to pandas at once). Per thread: two runs in one process never
    end each other's memo."""

    frames: dict[str, pa.Table] | None = None


_MEMO = _Memo()


@contextlib.contextmanager
def in_memory() -> Iterator[None]:
    """Within (in this thread): each cached partition is read from disk once. A cache file's
    path holds the feature-spec hash and the partition's fingerprint, so what it holds never
    changes; a replay reads the same partitions for thousands of fits, and a retrain reads the
    training window for the fit and again for the gate (the ranking family) and the refit."""
    previous = _MEMO.frames
    _MEMO.frames = {} if previous is None else previous
    try:
        yield
    finally:
        _MEMO.frames = previous


@dataclass(frozen=True)
class MaterializeResult:
    computed: tuple[str, ...]
    hits: tuple[str, ...]
    paths: tuple[str, ...]


CHECKSUM_SUFFIX = ".sha256"


def _sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def cache_filesystem(root: str | os.PathLike[str], options: Mapping[str, Any] | None = None) -> Any:
    """The fsspec filesystem and root path of a cache location (a local path or any URL)."""
    import fsspec  # lazy: s3fs and friends load only when a URL asks for them

    target = os.fspath(root)
    try:
        fs, path = fsspec.core.url_to_fs(target, **dict(options or {}))
    except ImportError as exc:
        raise CacheError(
            f"the feature cache {redact_url(target)} needs a storage driver that is not "
            f"installed ({exc}); for s3:// install retrain[s3] (s3fs)"
        ) from None
    except ValueError as exc:  # fsspec: "Protocol not known"
        raise CacheError(
            f"the feature cache {redact_url(target)} has a scheme no storage driver knows "
            f"({exc}); use a local folder or a URL such as s3://bucket/prefix"
        ) from None
    return fs, path.rstrip("/")


class FeatureCache:
    """Parquet files under ``root/<spec hash>/<partition>__<fingerprint>.parquet``.

    ``root`` is a local folder or any fsspec URL (``s3://bucket/prefix``), so workers on other
    machines share one cache. Each file has a ``.sha256`` beside it, written after the data: a
    file without its checksum, or whose bytes do not match it (truncated, tampered), is never
    used; it is recomputed from its partition and the repair logged.

    Writes are atomic where the files land: on a local disk a temporary file is renamed into
    place; on object storage the whole file is one PUT, which readers see whole or not at all.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        spec: ModelSpec,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.spec = spec
        self.spec_hash = spec.feature_spec_hash()
        opts = spec.state.cache_options if options is None else options
        self.options = dict(opts)
        self.fs, self.root = cache_filesystem(root, self.options)
        self.url = os.fspath(root)
        self.local = "file" in _protocols(self.fs)

    def path_for(self, part: Partition) -> str:
        return f"{self.root}/{self.spec_hash[:16]}/{part.key}__{part.fingerprint[:20]}.parquet"

    def uri_for(self, part: Partition) -> str:
        """The file of a partition as a URL other processes (Dask workers) can open."""
        return self.fs.unstrip_protocol(self.path_for(part))

    def _cached(self, path: str) -> bool:
        return bool(self.fs.exists(path + CHECKSUM_SUFFIX) and self.fs.exists(path))

    def _write(self, part: Partition, path: str) -> pd.DataFrame:
        features = compute_features(part, self.spec)
        buffer = io.BytesIO()
        features.to_parquet(buffer, index=False)
        blob = buffer.getvalue()
        self._put(path, blob)
        self._put(path + CHECKSUM_SUFFIX, _sha256(blob).encode())
        return features

    def _put(self, path: str, blob: bytes) -> None:
        if self.local:
            self.fs.makedirs(self.fs._parent(path), exist_ok=True)
            tmp = f"{path}.tmp{os.getpid()}"
            try:
                with open(tmp, "wb") as fh:
                    fh.write(blob)
                os.replace(tmp, path)  # readers never see a half-written file
            except BaseException:
                # a full disk (ENOSPC) or a kill mid-write: leave no partial file behind
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        else:
            self.fs.pipe_file(path, blob)  # one PUT: the object appears whole or not at all

    def materialize(self, partitions: Iterable[Partition]) -> MaterializeResult:
        """Make sure every partition's features are cached; compute only what is missing."""
        computed, hits, paths = [], [], []
        for part in partitions:
            path = self.path_for(part)
            if self._cached(path):
                hits.append(part.key)
            else:
                self._write(part, path)
                computed.append(part.key)
            paths.append(path)
        if computed:
            logger.info(
                "feature cache: computed %d partition(s), %d hit(s)", len(computed), len(hits)
            )
        return MaterializeResult(tuple(computed), tuple(hits), tuple(paths))

    def _read(self, part: Partition) -> pa.Table:
        """``read_table``, or the table already read within ``in_memory()``."""
        if _MEMO.frames is None:
            return self.read_table(part)
        key = str(self.path_for(part))
        table = _MEMO.frames.get(key)
        if table is None:
            table = _MEMO.frames[key] = self.read_table(part)
        return table

    def read_table(self, part: Partition) -> pa.Table:
        """One partition's cached features as an Arrow table, verified like ``read_verified``
        (a missing, truncated or tampered file is recomputed first)."""
        path = self.path_for(part)
        problem, blob = _checked_bytes(self.fs, path)
        if problem is None:
            try:
                return _parse(blob)
            except (OSError, ValueError) as exc:  # matches its checksum yet does not parse
                problem = f"does not parse ({exc})"
        self._heal(part, problem)
        problem, blob = _checked_bytes(self.fs, path)
        if problem is not None:
            raise CacheError(
                f"feature cache file {redact_url(self.fs.unstrip_protocol(path))} {problem} "
                "right after it was recomputed: check that the cache location is writable and "
                "not changed by another process"
            )
        return _parse(blob)

    def read_verified(self, part: Partition) -> pd.DataFrame:
        """One partition's cached features, verified against the checksum written with them.

        A missing, truncated or tampered file is recomputed from the partition (and the repair
        logged at WARNING), never used.
        """
        path = self.path_for(part)
        problem, blob = _checked_bytes(self.fs, path)
        if problem is None:
            try:
                return pd.read_parquet(io.BytesIO(blob))
            except (OSError, ValueError) as exc:  # matches its checksum yet does not parse
                problem = f"does not parse ({exc})"
        return self._heal(part, problem)

    def _heal(self, part: Partition, problem: str) -> pd.DataFrame:
        path = self.path_for(part)
        logger.warning(
            "feature cache: %s %s; recomputing partition %s",
            redact_url(self.fs.unstrip_protocol(path)),
            problem,
            part.key,
        )
        return self._write(part, path)

    def dask_frame(self, partitions: Sequence[Partition], client: Any = None) -> Any:
        """The features of ``partitions`` as a Dask DataFrame, one Dask partition per file.

        Workers read the files themselves (from object storage when the cache is on a URL) and
        verify each against its checksum. With a ``client``, the checksums are checked on the
        workers first and a bad file is recomputed here before training reads it.
        """
        import dask.dataframe as dd

        if not partitions:
            raise EmptyWindowError("no partition to load")
        uris = [self.uri_for(p) for p in partitions]
        if client is not None:
            futures = client.map(check_cached_file, uris, options=self.options, pure=False)
            problems = client.gather(futures)
            for part, problem in zip(partitions, problems, strict=True):
                if problem is not None:
                    self._heal(part, problem)
        meta = self.read_verified(partitions[0]).iloc[:0]
        return dd.from_map(
            read_cached_file, uris, options=self.options, meta=meta, enforce_metadata=False
        )

    def load(self, partitions: Sequence[Partition]) -> pd.DataFrame:
        """Features of the given partitions, in time order (they must be materialised).

        The files are parsed to Arrow and converted to pandas once for the whole window (what
        ``pd.concat`` of one ``pd.read_parquet`` per file gives, at about half the CPU)."""
        if not partitions:
            raise EmptyWindowError("no partition to load")
        return _frame([self._read(p) for p in partitions])


def _parse(blob: bytes) -> pa.Table:
    # a partition file is small: one thread parses it faster than a pool, and the file reader
    # alone (no dataset discovery, the same table and schema) costs about a quarter of
    # ``pq.read_table``
    return pq.ParquetFile(pa.BufferReader(blob)).read(use_threads=False)


def _frame(tables: Sequence[pa.Table]) -> pd.DataFrame:
    """The tables as one frame with a fresh RangeIndex; tables whose schemas differ (a column
    all null in one partition) are converted one by one and concatenated by pandas."""
    first = tables[0].schema
    if all(t.schema.equals(first) for t in tables[1:]):
        frame = pa.concat_tables(tables).to_pandas()
        frame.index = pd.RangeIndex(len(frame))
        return frame
    return pd.concat([t.to_pandas() for t in tables], ignore_index=True)


def verify_cached(fs: Any, path: str) -> str | None:
    """Why the cached file at ``path`` must not be used, or None if it matches its checksum."""
    return _checked_bytes(fs, path)[0]


def _checked_bytes(fs: Any, path: str) -> tuple[str | None, bytes]:
    try:
        recorded = fs.cat_file(path + CHECKSUM_SUFFIX).decode().strip()
    except FileNotFoundError:
        return "has no checksum (an interrupted write or a file put there by hand)", b""
    try:
        blob = fs.cat_file(path)
    except FileNotFoundError:
        return "is missing", b""
    if _sha256(blob) != recorded:
        return f"does not match its checksum ({len(blob)} bytes: truncated or modified)", b""
    return None, blob


def check_cached_file(uri: str, options: Mapping[str, Any]) -> str | None:
    """:func:`verify_cached` by URL: what a Dask worker runs next to the data."""
    fs, path = cache_filesystem(uri, options)
    return verify_cached(fs, path)


def read_cached_file(uri: str, options: Mapping[str, Any]) -> pd.DataFrame:
    """One cached file by URL, verified: what a Dask worker runs to read its partitions."""
    fs, path = cache_filesystem(uri, options)
    problem, blob = _checked_bytes(fs, path)
    if problem is not None:
        raise CacheError(
            f"feature cache file {redact_url(uri)} {problem}: rerun the retrain (the cache "
            "recomputes it before training)"
        )
    return pd.read_parquet(io.BytesIO(blob))


def _protocols(fs: Any) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


def data_version(spec_hash: str, partitions: Sequence[Partition]) -> str:
    """Hash of the partition fingerprints and the feature-spec hash."""
    digest = hashlib.sha256(spec_hash.encode())
    for part in sorted(partitions, key=lambda p: p.key):
        digest.update(f"|{part.key}:{part.fingerprint}".encode())
    return "dv-" + digest.hexdigest()[:16]


@dataclass(frozen=True)
class Window:
    """A half-open time window ``[start, end)`` and the partitions inside it."""

    name: str
    start: pd.Timestamp
    end: pd.Timestamp
    partitions: tuple[Partition, ...]
    version: str

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.partitions)

    def describe(self) -> str:
        return f"{self.name} [{self.start:%Y-%m-%d %H:%M}, {self.end:%Y-%m-%d %H:%M})"


def make_window(
    name: str,
    start: pd.Timestamp,
    end: pd.Timestamp,
    partitions: Sequence[Partition],
    spec_hash: str,
) -> Window:
    inside = tuple(p for p in partitions if p.start >= start and p.end <= end)
    if not inside:
        have = (
            f"the data spans {partitions[0].start:%Y-%m-%d} to {partitions[-1].end:%Y-%m-%d}"
            if partitions
            else "no usable partition was ingested"
        )
        raise EmptyWindowError(
            f"the {name} window [{start:%Y-%m-%d %H:%M}, {end:%Y-%m-%d %H:%M}) holds no usable "
            f"partition; {have}. Move --as-of or change windows.{name}."
        )
    return Window(name, start, end, inside, data_version(spec_hash, inside))


def plan_windows(
    partitions: Sequence[Partition],
    spec: ModelSpec,
    as_of: pd.Timestamp | None = None,
    quarantined: Sequence[Quarantine] = (),
) -> tuple[Window, Window]:
    """Training window and the holdout right after it, ending at ``as_of`` or the newest data.

    Training never sees a partition at or after the holdout's start. Without any usable
    partition the error says why ingest quarantined them (``quarantined``), grouped by cause.
    """
    if not partitions:
        raise EmptyWindowError(nothing_usable(quarantined))
    end = as_of if as_of is not None else partitions[-1].end
    holdout_start = end - spec.windows.holdout_delta
    train_start = holdout_start - spec.windows.train_delta
    spec_hash = spec.feature_spec_hash()
    train = make_window("train", train_start, holdout_start, partitions, spec_hash)
    holdout = make_window("holdout", holdout_start, end, partitions, spec_hash)
    return train, holdout
