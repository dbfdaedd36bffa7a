"""Data age: how old the newest row a model was trained on is, as a first-class figure.

Every registered version records the end of its training data (the tag ``retrain.data_end``:
the timestamp of its last training row). The champion's data age at an as-of time is the as-of
minus that row; ``retrain status``, the flow's artifacts and the monitor show it, and the age
trigger counts from it.

>>> tags = {"retrain.data_end": "2011-06-30 23:00:00", "retrain.window_end": "2011-07-01"}
>>> data_end(tags)
Timestamp('2011-06-30 23:00:00')
>>> format_age(data_age(pd.Timestamp("2011-07-15"), data_end(tags)))
'14.0 days'
>>> data_end({"retrain.window_end": "2011-07-01"})  # a version tagged before data_end existed
Timestamp('2011-07-01 00:00:00')
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from retrain.families.lineage import Lineage


def data_end(tags: Mapping[str, str]) -> pd.Timestamp | None:
    """The end of a version's training data: its last training row, or (for versions
    registered before that tag existed) the end of its training window."""
    return Lineage(tags).data_end


def last_row(timestamps: pd.Series) -> pd.Timestamp | None:
    """The newest timestamp of a training frame (None for an empty one)."""
    if not len(timestamps):
        return None
    return pd.Timestamp(pd.to_datetime(timestamps).max())


def data_age(as_of: pd.Timestamp, end: pd.Timestamp | None) -> pd.Timedelta | None:
    """As-of minus the last training row (None when the version records no data end)."""
    return None if end is None else as_of - end


def format_age(age: pd.Timedelta | None) -> str:
    if age is None:
        return "unknown"
    return f"{age / pd.Timedelta(days=1):.1f} days"
