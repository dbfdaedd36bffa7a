"""What a policy may see: the partitions before a cutoff, and the replay's data.

No look-ahead by construction: a policy and a trainer only ever hold a :class:`History`, which
holds the partitions before the cutoff and nothing else, and raises :class:`LookAheadError` when
asked for more. Features come from the same feature cache as every retrain, so a second
simulation recomputes no feature.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from retrain.config import ModelSpec
from retrain.errors import EmptyWindowError, LookAheadError, SimulationError
from retrain.features import FeatureCache
from retrain.ingest import Partition, ingest, nothing_usable


@dataclass(frozen=True)
class History:
    """The partitions before a cutoff (and their cached features): all a policy may see.

    The replay loop builds one per step from the partitions already scored; the later ones are
    never handed over, so no policy can read them. Asking for a partition or a time range past
    the cutoff raises :class:`LookAheadError`. ``_rows`` holds the features of the visible
    partitions only, in order; ``_offsets[i]`` is the first row of partition ``i``.
    """

    partitions: tuple[Partition, ...]
    _rows: pd.DataFrame = field(repr=False)
    _offsets: tuple[int, ...] = field(repr=False)

    def __post_init__(self) -> None:
        if not self.partitions:
            raise SimulationError("a History needs at least one partition")
        if len(self._offsets) != len(self.partitions) + 1 or self._offsets[-1] != len(self._rows):
            raise SimulationError("a History needs the row offsets of each of its partitions")

    def __len__(self) -> int:
        return len(self.partitions)

    @property
    def start(self) -> pd.Timestamp:
        return self.partitions[0].start

    @property
    def end(self) -> pd.Timestamp:
        """The cutoff: the end of the newest visible partition."""
        return self.partitions[-1].end

    def partition(self, index: int) -> Partition:
        """The ``index``-th partition of the replay (0 = the oldest)."""
        if index >= len(self.partitions):
            raise LookAheadError(
                f"partition {index} is not visible at this step: the history holds partitions "
                f"0 to {len(self.partitions) - 1} (up to {self.end}); a policy decides with the "
                "data before the cutoff only"
            )
        return self.partitions[index]

    def frame(self, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        """Features and labels of the visible partitions inside ``[start, end)``."""
        if end > self.end:
            raise LookAheadError(
                f"rows up to {end} asked for, but the history ends at {self.end}: a policy "
                "decides with the data before the cutoff only"
            )
        inside = [i for i, p in enumerate(self.partitions) if p.start >= start and p.end <= end]
        if not inside:
            raise EmptyWindowError(f"no visible partition inside [{start}, {end})")
        first, last = inside[0], inside[-1]
        if last - first + 1 != len(inside):
            raise SimulationError("partitions of a History must be in time order")
        return self._rows.iloc[self._offsets[first] : self._offsets[last + 1]]


@dataclass(frozen=True)
class ReplayData:
    """Every partition and its cached features, held by the replay loop only."""

    partitions: tuple[Partition, ...]
    rows: pd.DataFrame = field(repr=False)  # every partition's features, in time order
    offsets: tuple[int, ...] = field(repr=False)  # first row of each partition, then the end
    computed: int
    cached: int

    def history(self, cutoff: int) -> History:
        """The partitions before index ``cutoff``: what the policies may see."""
        if not 0 < cutoff <= len(self.partitions):
            raise SimulationError(f"cutoff {cutoff} outside 1..{len(self.partitions)}")
        end = self.offsets[cutoff]
        return History(self.partitions[:cutoff], self.rows.iloc[:end], self.offsets[: cutoff + 1])

    def features(self, index: int) -> pd.DataFrame:
        """The features of one partition (the replay loop scores it before it is visible)."""
        return self.rows.iloc[self.offsets[index] : self.offsets[index + 1]]

    def before(self, index: int) -> pd.DataFrame:
        """The features of every partition before partition ``index`` (already visible)."""
        return self.rows.iloc[: self.offsets[index]]


def load_replay(spec: ModelSpec, start: str | None = None, end: str | None = None) -> ReplayData:
    """Ingest the source and fill (or reuse) the feature cache for every partition."""
    result = ingest(spec, as_of=pd.Timestamp(end) if end else None)
    partitions = tuple(
        p for p in result.partitions if start is None or p.start >= pd.Timestamp(start)
    )
    if not result.partitions and result.quarantined:
        raise SimulationError(nothing_usable(result.quarantined))
    if not partitions:
        raise SimulationError(
            f"no usable partition in the source between {start or 'the start'} and "
            f"{end or 'the end'}: check the spec's source and --start/--end"
        )
    cache = FeatureCache(spec.state.features, spec)
    materialized = cache.materialize(partitions)
    frames = [cache.read_verified(part) for part in partitions]
    offsets = tuple(int(v) for v in np.cumsum([0, *(len(f) for f in frames)]))
    rows = pd.concat(frames, ignore_index=True)
    return ReplayData(partitions, rows, offsets, len(materialized.computed), len(materialized.hits))


def first_step(data: ReplayData, spec: ModelSpec, scored_from: pd.Timestamp | None = None) -> int:
    """Index of the first scored partition: the initial history must fill the train and holdout
    windows, and no partition before ``scored_from`` is scored (a grid scores every point on
    the same partitions, from the latest first step of its windows)."""
    need = data.partitions[0].start + spec.windows.train_delta + spec.windows.holdout_delta
    if scored_from is not None:
        need = max(need, scored_from)
    for i, part in enumerate(data.partitions):
        if part.start >= need:
            return i
    span = f"{data.partitions[0].start:%Y-%m-%d} to {data.partitions[-1].end:%Y-%m-%d}"
    raise SimulationError(
        f"the history ({span}) is too short: the first model needs windows.train + "
        f"windows.holdout = {spec.windows.train} + {spec.windows.holdout} of data and at least "
        "one later partition to score; shorten the windows or add data"
    )
