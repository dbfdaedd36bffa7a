"""Without --as-of, only complete partitions are used: the one still filling up is left out."""

from __future__ import annotations

import pandas as pd

from retrain.features import plan_windows
from retrain.ingest import ingest, utc_now
from tests.retrain.conftest import DAYS, day_rows


def keys(result) -> list[str]:
    return [p.key for p in result.partitions]


def test_the_partition_that_ends_after_now_is_dropped(four_days, write_source, make_spec):
    spec = make_spec(write_source(four_days))

    result = ingest(spec, now=pd.Timestamp("2011-03-04 13:30"))

    assert keys(result) == list(DAYS[:3])
    assert sum(p.rows for p in result.partitions) == int((~day_rows(four_days, DAYS[3])).sum())


def test_a_partition_that_ends_exactly_now_is_complete(four_days, write_source, make_spec):
    spec = make_spec(write_source(four_days))

    assert keys(ingest(spec, now=pd.Timestamp("2011-03-05 00:00"))) == list(DAYS)


def test_an_aware_now_is_compared_in_utc(four_days, write_source, make_spec):
    spec = make_spec(write_source(four_days))

    # 00:30 in Paris is still 23:30 UTC of the day before: the fourth day is not complete yet
    result = ingest(spec, now=pd.Timestamp("2011-03-05 00:30", tz="Europe/Paris"))

    assert keys(result) == list(DAYS[:3])


def test_as_of_decides_completeness_when_it_is_before_now(four_days, write_source, make_spec):
    spec = make_spec(write_source(four_days))

    result = ingest(spec, as_of=pd.Timestamp("2011-03-04"), now=pd.Timestamp("2011-03-10 12:00"))

    assert keys(result) == list(DAYS[:3])


def test_an_as_of_in_the_future_still_quarantines_rows_after_now(
    four_days, write_source, make_spec
):
    spec = make_spec(write_source(four_days))

    result = ingest(spec, as_of=pd.Timestamp("2011-03-10"), now=pd.Timestamp("2011-03-02 12:00"))

    assert keys(result) == [DAYS[0]]  # 2011-03-02 is still filling up at now
    future = [q for q in result.quarantined if "in the future" in q.reason]
    assert [q.key for q in future] == ["2011-03-02", "2011-03-03", "2011-03-04"]
    assert "(after now, 2011-03-02 12:00:00)" in future[0].reason


def test_by_default_now_is_the_wall_clock(four_days, write_source, make_spec):
    # The same four days of rows, moved so that the last one is today (UTC).
    today = utc_now().normalize()
    moved = four_days.copy()
    old_days = pd.to_datetime(moved["dteday"])
    shift = today - old_days.max()
    moved["dteday"] = (old_days + shift).dt.strftime("%Y-%m-%d")
    spec = make_spec(write_source(moved))

    result = ingest(spec)

    expected = [str((today - pd.Timedelta(days=n)).date()) for n in (3, 2, 1)]
    assert keys(result) == expected  # today is still filling up
    assert result.partitions[-1].end == today


def test_the_windows_end_at_the_newest_complete_partition(four_days, write_source, make_spec):
    spec = make_spec(write_source(four_days), **{"windows.train": "2D", "windows.holdout": "1D"})
    result = ingest(spec, now=pd.Timestamp("2011-03-04 13:30"))

    train, holdout = plan_windows(result.partitions, spec)

    assert (holdout.start, holdout.end) == (pd.Timestamp("2011-03-03"), pd.Timestamp("2011-03-04"))
    assert (train.start, train.end) == (pd.Timestamp("2011-03-01"), pd.Timestamp("2011-03-03"))
