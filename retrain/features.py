"""Feature cache and training windows.

Features are computed per time partition and cached as parquet, keyed by (feature-spec hash,
partition fingerprint): only missing or stale partitions are computed. A partition's features use
only that partition's rows, so no feature can see data after the partition's end.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from retrain.config import ModelSpec
from retrain.errors import EmptyWindowError
from retrain.ingest import TS, Partition

logger = logging.getLogger(__name__)

PARTITION = "__partition__"


def compute_features(part: Partition, spec: ModelSpec) -> pd.DataFrame:
    """Model-ready columns of one partition: timestamp, partition key, label and features."""
    frame = part.frame
    out = pd.DataFrame({TS: frame[TS].to_numpy(), PARTITION: part.key})
    out[spec.label] = pd.to_numeric(frame[spec.label], errors="raise").astype("float64").to_numpy()
    for col in spec.features.numeric:
        out[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64").to_numpy()
    for col in spec.features.categorical:
        values = frame[col]
        if pd.api.types.is_float_dtype(values):
            present = values.dropna()
            if (present == present.round()).all():
                # Integer codes read as float only because the source has a gap somewhere:
                # they must stay "1", "2", not become "1.0" (unseen by a model trained on "1").
                values = values.astype("Int64")
        out[col] = values.astype("string").to_numpy(dtype=object, na_value=None)
    ts = pd.Series(frame[TS].to_numpy())
    derived = {
        "hour": lambda: ts.dt.hour,
        "dayofweek": lambda: ts.dt.dayofweek,
        "month": lambda: ts.dt.month,
        "dayofyear": lambda: ts.dt.dayofyear,
        "is_weekend": lambda: (ts.dt.dayofweek >= 5).astype(int),
    }
    for name in spec.features.derived:
        out[name] = derived[name]().astype("float64").to_numpy()
    return out


class _Memo:
    """Cached partitions held in memory while ``in_memory()`` is active (None: read each time)."""

    frames: dict[Path, pd.DataFrame] | None = None


def _read(path: Path) -> pd.DataFrame:
    if _Memo.frames is None:
        return pd.read_parquet(path)
    frame = _Memo.frames.get(path)
    if frame is None:
        frame = _Memo.frames[path] = pd.read_parquet(path)
    return frame


@contextlib.contextmanager
def in_memory() -> Iterator[None]:
    """Within: each cached partition is read from disk once per process. A cache file's path
    holds the feature-spec hash and the partition's fingerprint, so what it holds never
    changes; a replay reads the same partitions for thousands of fits."""
    previous = _Memo.frames
    _Memo.frames = {} if previous is None else previous
    try:
        yield
    finally:
        _Memo.frames = previous


@dataclass(frozen=True)
class MaterializeResult:
    computed: tuple[str, ...]
    hits: tuple[str, ...]
    paths: tuple[Path, ...]


class FeatureCache:
    """Parquet files under ``root/<spec hash>/<partition>__<fingerprint>.parquet``."""

    def __init__(self, root: Path, spec: ModelSpec) -> None:
        self.root = Path(root)
        self.spec = spec
        self.spec_hash = spec.feature_spec_hash()

    def path_for(self, part: Partition) -> Path:
        return self.root / self.spec_hash[:16] / f"{part.key}__{part.fingerprint[:20]}.parquet"

    def materialize(self, partitions: Iterable[Partition]) -> MaterializeResult:
        """Make sure every partition's features are cached; compute only what is missing."""
        computed, hits, paths = [], [], []
        for part in partitions:
            path = self.path_for(part)
            if path.exists():
                hits.append(part.key)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                features = compute_features(part, self.spec)
                tmp = path.with_suffix(f".tmp{os.getpid()}")
                features.to_parquet(tmp, index=False)
                os.replace(tmp, path)  # readers never see a half-written file
                computed.append(part.key)
            paths.append(path)
        if computed:
            logger.info(
                "feature cache: computed %d partition(s), %d hit(s)", len(computed), len(hits)
            )
        return MaterializeResult(tuple(computed), tuple(hits), tuple(paths))

    def load(self, partitions: Sequence[Partition]) -> pd.DataFrame:
        """Features of the given partitions, in time order (they must be materialised)."""
        if not partitions:
            raise EmptyWindowError("no partition to load")
        frames = [_read(self.path_for(p)) for p in partitions]
        return pd.concat(frames, ignore_index=True)


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
    partitions: Sequence[Partition], spec: ModelSpec, as_of: pd.Timestamp | None = None
) -> tuple[Window, Window]:
    """Training window and the holdout right after it, ending at ``as_of`` or the newest data.

    Training never sees a partition at or after the holdout's start.
    """
    if not partitions:
        raise EmptyWindowError("no usable partition was ingested: check the source and --as-of")
    end = as_of if as_of is not None else partitions[-1].end
    holdout_start = end - spec.windows.holdout_delta
    train_start = holdout_start - spec.windows.train_delta
    spec_hash = spec.feature_spec_hash()
    train = make_window("train", train_start, holdout_start, partitions, spec_hash)
    holdout = make_window("holdout", holdout_start, end, partitions, spec_hash)
    return train, holdout
