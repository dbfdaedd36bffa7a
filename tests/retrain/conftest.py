"""Fixtures of the retrain tests: a few days of the real bike data and specs pointing at them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from retrain.config import ModelSpec, parse_spec
from tests.conftest import bike_slice, spec_dict

# Four days of hourly rows (~90): enough for daily partitions, small enough to be instant.
FIRST_DAY = "2011-03-01"
DAYS = ("2011-03-01", "2011-03-02", "2011-03-03", "2011-03-04")


@pytest.fixture(scope="session")
def four_days(bike_hourly: pd.DataFrame) -> pd.DataFrame:
    return bike_slice(bike_hourly, "2011-03-01", "2011-03-05")


def day_rows(frame: pd.DataFrame, day: str) -> pd.Series:
    """Mask of the rows of one calendar day (``dteday`` holds the date)."""
    return frame["dteday"] == day


@pytest.fixture
def write_source(tmp_path: Path) -> Callable[..., Path]:
    """Write frames as files of a fresh source folder; returns the folder."""
    counter = iter(range(1000))

    def write(*frames: pd.DataFrame, fmt: str = "csv") -> Path:
        folder = tmp_path / f"source{next(counter)}"
        folder.mkdir()
        for i, frame in enumerate(frames):
            if fmt == "csv":
                frame.to_csv(folder / f"part{i}.csv", index=False)
            else:
                frame.to_parquet(folder / f"part{i}.parquet", index=False)
        return folder

    return write


@pytest.fixture
def make_spec(tmp_path: Path) -> Callable[..., ModelSpec]:
    """A validated spec over ``source`` (a folder, a file or a SQL dict) with dotted overrides."""

    def make(source: Path | dict[str, Any], **overrides: Any) -> ModelSpec:
        data = spec_dict(Path("unused"), tmp_path / "state", **overrides)
        if isinstance(source, dict):
            data["source"] = source
        else:
            data["source"]["path"] = str(source)
        return parse_spec(data)

    return make
