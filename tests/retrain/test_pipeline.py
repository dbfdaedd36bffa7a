"""The tabular family's data side: the increment a warm start or refit trains on."""

from __future__ import annotations

import pandas as pd
import pytest

from retrain.errors import EmptyWindowError
from retrain.pipeline import increment_window, prepare


def test_a_partition_straddling_the_champions_training_end_goes_to_the_increment_whole(
    bike_spec,
):
    # a manual run at noon: its holdout started inside the day of 2011-04-15, and that day's
    # partition was in neither its training window nor (before the fix) any later increment
    first = prepare(bike_spec, pd.Timestamp("2011-04-22 12:00"))
    champion_end = first.train.end
    assert champion_end == pd.Timestamp("2011-04-15 12:00")
    assert all(p.end <= champion_end for p in first.train.partitions)
    later = prepare(bike_spec, pd.Timestamp("2011-04-29"))

    increment = increment_window(bike_spec, later, champion_end)

    keys = [p.start for p in increment.partitions]
    assert keys[0] == pd.Timestamp("2011-04-15")
    assert keys[-1] == pd.Timestamp("2011-04-21")  # the last day before the holdout
    assert increment.start == pd.Timestamp("2011-04-15")
    # the champion's partitions and the increment's together: every day up to the holdout
    seen = {p.key for p in first.train.partitions} | {p.key for p in increment.partitions}
    upto = {
        p.key
        for p in later.ingest.partitions
        if p.start >= first.train.start and p.end <= later.holdout.start
    }
    assert upto <= seen


def test_no_new_complete_partition_since_the_champion_is_an_empty_increment(bike_spec):
    prepared = prepare(bike_spec, pd.Timestamp("2011-04-29"))

    with pytest.raises(EmptyWindowError, match="no new data since the champion's training end"):
        increment_window(bike_spec, prepared, prepared.holdout.start)
