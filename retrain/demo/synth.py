"""A seeded drifting binary-classification stream with recurring concepts (numpy only).

The stream is a data source like any other: :func:`write_stream` writes one parquet file per
day (``<day>.parquet``, the partition layout ingest reads), and ``retrain/demo/drift.toml`` is
its spec. A shipped copy lives in ``retrain/demo/data/drift_stream`` (the default schedule and
seed, one file per month: ``python -m retrain.demo.synth retrain/demo/data/drift_stream
--layout monthly`` rewrites it byte for byte); tests generate smaller ones with
:func:`generate`, which takes well under a second.

Each row has six numeric features ``x0`` .. ``x5`` (standard normal, with a concept-specific
shift of ``x4``), a categorical ``channel`` (``web``, ``app``, ``store``) and a binary label
``y``. A *concept* is the rule that maps features to the label's probability:

- ``A``: ``x0 + x1 > 0``, and ``channel == "store"`` raises the odds;
- ``B``: ``x0 - x1 > 0.5 x2`` (the hyperplane turned by 90 degrees: A's model is wrong on
  about half of the rows), ``channel`` plays no part;
- ``C``: ``x2 * x3 > 0`` (an interaction, XOR-like), and ``x4``'s mean moves to +1 (covariate
  drift a monitor can see).

Labels are drawn from ``sigmoid(sharpness * margin)``, so even the right concept's model errs
on a few rows. The :data:`DEFAULT_SCHEDULE` runs 365 days from 2024-01-01: ``A`` -> abrupt to
``B`` -> gradual to ``C`` -> abrupt back to ``A`` (recurs) -> gradual to ``B`` (recurs). In a
gradual stretch each row belongs to the new concept with a probability rising linearly from 0
to 1. The true concept of each row is in the ``concept`` column: it is not a feature (the spec
lists it under ``features.leakage``), it is there to check and explain the drift.

>>> frame = generate(seed=3, days=4, rows_per_day=10)
>>> frame.shape, sorted(frame["concept"].unique())
((40, 11), ['A'])
>>> bool(generate(seed=3, days=4, rows_per_day=10).equals(frame))
True
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

FEATURES = ("x0", "x1", "x2", "x3", "x4", "x5")
CHANNELS = ("web", "app", "store")
START = "2024-01-01"
DEFAULT_SEED = 20240101
DEFAULT_ROWS_PER_DAY = 200
SHARPNESS = 4.0


@dataclass(frozen=True)
class Segment:
    """Days ``[start, end)`` of the schedule: concept ``to``, reached gradually from ``since``
    (``since is None``: the segment starts abruptly with ``to``)."""

    start: int
    end: int
    to: str
    since: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end:
            raise ValueError(f"segment [{self.start}, {self.end}) must have 0 <= start < end")
        unknown = {self.to, self.since or self.to} - set(CONCEPTS)
        if unknown:
            raise ValueError(f"unknown concept(s) {sorted(unknown)}; choose from {list(CONCEPTS)}")


def _margin_a(x: np.ndarray, channel: np.ndarray) -> np.ndarray:
    return x[:, 0] + x[:, 1] + 0.8 * (channel == 2) - 0.2


def _margin_b(x: np.ndarray, channel: np.ndarray) -> np.ndarray:
    return x[:, 0] - x[:, 1] - 0.5 * x[:, 2]


def _margin_c(x: np.ndarray, channel: np.ndarray) -> np.ndarray:
    return 1.5 * x[:, 2] * x[:, 3]


CONCEPTS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "A": _margin_a,
    "B": _margin_b,
    "C": _margin_c,
}
# the mean of x4 under each concept (C shifts the inputs too)
X4_SHIFT = {"A": 0.0, "B": 0.0, "C": 1.0}

DEFAULT_SCHEDULE: tuple[Segment, ...] = (
    Segment(0, 100, "A"),
    Segment(100, 160, "B"),  # abrupt A -> B at day 100 (2024-04-10)
    Segment(160, 190, "C", since="B"),  # gradual B -> C over days 160-189
    Segment(190, 250, "C"),
    Segment(250, 310, "A"),  # abrupt C -> A at day 250 (2024-09-07): A recurs
    Segment(310, 340, "B", since="A"),  # gradual A -> B over days 310-339: B recurs
    Segment(340, 365, "B"),
)


def _check_schedule(schedule: Sequence[Segment], days: int) -> None:
    day = 0
    for segment in schedule:
        if segment.start != day:
            raise ValueError(
                f"schedule segments must follow each other without gaps: a segment starts at "
                f"day {segment.start}, expected {day}"
            )
        day = segment.end
    if day < days:
        raise ValueError(f"the schedule covers {day} days, fewer than the {days} asked for")


def concepts_of_day(
    day: int, rows: int, rng: np.random.Generator, schedule: Sequence[Segment]
) -> np.ndarray:
    """The concept of each of a day's rows (a gradual segment mixes the old and new one)."""
    for segment in schedule:
        if segment.start <= day < segment.end:
            if segment.since is None:
                return np.full(rows, segment.to, dtype=object)
            share = (day - segment.start + 0.5) / (segment.end - segment.start)
            new = rng.random(rows) < share
            return np.where(new, segment.to, segment.since).astype(object)
    raise ValueError(f"day {day} is outside the schedule")


def generate(
    seed: int = DEFAULT_SEED,
    days: int = 365,
    rows_per_day: int = DEFAULT_ROWS_PER_DAY,
    schedule: Sequence[Segment] = DEFAULT_SCHEDULE,
    start: str = START,
) -> pd.DataFrame:
    """The whole stream as one frame, in time order; the same seed gives the same rows."""
    if days < 1 or rows_per_day < 1:
        raise ValueError(f"days ({days}) and rows_per_day ({rows_per_day}) must be positive")
    _check_schedule(schedule, days)
    rng = np.random.default_rng(seed)
    first = pd.Timestamp(start)
    concept = np.empty(days * rows_per_day, dtype=object)
    x = np.empty((days * rows_per_day, len(FEATURES)))
    channel = np.empty(days * rows_per_day, dtype=int)
    label = np.empty(days * rows_per_day, dtype=int)
    seconds = np.empty(days * rows_per_day, dtype="int64")
    for day in range(days):
        rows = slice(day * rows_per_day, (day + 1) * rows_per_day)
        concept[rows] = today = concepts_of_day(day, rows_per_day, rng, schedule)
        x[rows] = rng.standard_normal((rows_per_day, len(FEATURES)))
        x[rows, 4] += np.array([X4_SHIFT[c] for c in today])
        channel[rows] = rng.integers(0, len(CHANNELS), rows_per_day)
        margin = np.empty(rows_per_day)
        for name, rule in CONCEPTS.items():
            mine = today == name
            if mine.any():
                margin[mine] = rule(x[rows][mine], channel[rows][mine])
        chance = 1.0 / (1.0 + np.exp(-SHARPNESS * margin))
        label[rows] = rng.random(rows_per_day) < chance
        seconds[rows] = np.sort(rng.integers(0, 86_400, rows_per_day)) + day * 86_400
    frame = pd.DataFrame(np.round(x, 2), columns=list(FEATURES))
    frame.insert(0, "ts", first + pd.to_timedelta(seconds, "s"))
    frame["channel"] = np.asarray(CHANNELS, dtype=object)[channel]
    frame["y"] = label
    frame["concept"] = concept.astype(str)
    frame["day"] = np.repeat(np.arange(days), rows_per_day)
    return frame


def write_stream(
    directory: Path,
    seed: int = DEFAULT_SEED,
    days: int = 365,
    rows_per_day: int = DEFAULT_ROWS_PER_DAY,
    schedule: Sequence[Segment] = DEFAULT_SCHEDULE,
    layout: Literal["daily", "monthly"] = "daily",
) -> list[Path]:
    """Write the stream as parquet files: one per day (``<YYYY-MM-DD>.parquet``, each file
    declares its partition) or one per month (``<YYYY-MM>.parquet``: ingest splits them into
    daily partitions by timestamp; the shipped copy, 12 files instead of 365)."""
    if layout not in {"daily", "monthly"}:
        raise ValueError(f"layout {layout!r}: choose 'daily' or 'monthly'")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    frame = generate(seed, days, rows_per_day, schedule)
    stamp = "%Y-%m-%d" if layout == "daily" else "%Y-%m"
    keys = frame["ts"].dt.strftime(stamp)
    paths = []
    for key, rows in frame.groupby(keys, sort=True):
        path = directory / f"{key}.parquet"
        rows.drop(columns="day").to_parquet(path, index=False, compression="zstd")
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("directory", type=Path, help="where the daily parquet files go")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--rows-per-day", type=int, default=DEFAULT_ROWS_PER_DAY)
    parser.add_argument("--layout", choices=("daily", "monthly"), default="daily")
    args = parser.parse_args(argv)
    write_stream(
        args.directory, args.seed, args.days, args.rows_per_day, DEFAULT_SCHEDULE, args.layout
    )


if __name__ == "__main__":
    main()
