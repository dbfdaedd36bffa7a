from __future__ import annotations

import pandas as pd
import pytest
import sqlalchemy as sa

from retrain.errors import DataError, SchemaError
from retrain.ingest import TS, fingerprint, ingest
from tests.retrain.conftest import DAYS, day_rows


def keys_and_fingerprints(result) -> list[tuple[str, str]]:
    return [(p.key, p.fingerprint) for p in result.partitions]


def test_rows_are_partitioned_per_day_with_the_hour_added_from_hours_from(
    four_days, write_source, make_spec
):
    result = ingest(make_spec(write_source(four_days)))

    assert [p.key for p in result.partitions] == list(DAYS)
    assert result.quarantined == ()
    assert result.source_rows == len(four_days)
    for part in result.partitions:
        source = four_days[day_rows(four_days, part.key)]
        assert part.start == pd.Timestamp(part.key)
        assert part.end == pd.Timestamp(part.key) + pd.Timedelta("1D")
        assert part.rows == len(source)
        expected = pd.to_datetime(source["dteday"]) + pd.to_timedelta(source["hr"], unit="h")
        assert sorted(part.frame[TS]) == sorted(expected)


def test_a_missing_label_column_is_a_schema_error_naming_the_column_and_its_role(
    four_days, write_source, make_spec
):
    spec = make_spec(write_source(four_days.drop(columns=["cnt"])))

    with pytest.raises(SchemaError, match=r"'cnt' \(label\)"):
        ingest(spec)


def test_a_file_lacking_a_feature_column_quarantines_its_partitions_and_the_others_flow(
    four_days, write_source, make_spec
):
    early = four_days[day_rows(four_days, "2011-03-01") | day_rows(four_days, "2011-03-02")]
    late = four_days[day_rows(four_days, "2011-03-03") | day_rows(four_days, "2011-03-04")]
    folder = write_source(early, late.drop(columns=["temp"]))  # part1.csv lost a column

    result = ingest(make_spec(folder))

    assert [p.key for p in result.partitions] == ["2011-03-01", "2011-03-02"]
    assert [(q.key, q.rows) for q in result.quarantined] == [
        ("2011-03-03", int(day_rows(late, "2011-03-03").sum())),
        ("2011-03-04", int(day_rows(late, "2011-03-04").sum())),
    ]
    reason = result.quarantined[0].reason
    assert "part1.csv lacks column(s) 'temp' (features.numeric)" in reason
    assert "re-export it with every column the spec reads" in reason
    # the rows of the sound file are as they were: no NaN column leaked into them
    assert all(p.frame["temp"].notna().all() for p in result.partitions)
    assert "__file_problem__" not in result.partitions[0].frame.columns


def test_a_partition_file_lacking_the_timestamp_is_quarantined_and_the_others_flow(
    tmp_path, four_days, make_spec
):
    folder = write_days(tmp_path / "days", four_days)
    day = four_days[day_rows(four_days, "2011-03-02")]
    day.drop(columns=["dteday"]).to_parquet(folder / "2011-03-02.parquet", index=False)

    result = ingest(make_spec(folder))

    assert [p.key for p in result.partitions] == ["2011-03-01", "2011-03-03", "2011-03-04"]
    [quarantined] = result.quarantined
    assert (quarantined.key, quarantined.rows) == ("2011-03-02", len(day))
    assert "lacks column(s) 'dteday' (timestamp.column)" in quarantined.reason


def test_an_undeclared_file_lacking_the_timestamp_is_a_schema_error_naming_it(
    four_days, write_source, make_spec
):
    folder = write_source(four_days.iloc[:40], four_days.iloc[40:].drop(columns=["dteday"]))

    with pytest.raises(SchemaError, match=r"part1\.csv lacks column\(s\) 'dteday'.*fix or remove"):
        ingest(make_spec(folder))


def test_a_file_that_is_neither_parquet_nor_csv_is_a_data_error_naming_it(
    four_days, write_source, make_spec
):
    folder = write_source(four_days)
    (folder / "data.xlsx").write_text("{}")

    with pytest.raises(DataError, match=r"data\.xlsx is not a parquet, CSV or JSON file"):
        ingest(make_spec(folder))


def test_a_corrupt_parquet_file_is_a_data_error_naming_it(four_days, write_source, make_spec):
    folder = write_source(four_days)
    (folder / "broken.parquet").write_bytes(b"PAR1 this is not really parquet")

    with pytest.raises(DataError, match=r"broken\.parquet cannot be read as parquet"):
        ingest(make_spec(folder))


def test_a_timestamp_that_does_not_parse_names_the_column_and_an_example(
    four_days, write_source, make_spec
):
    frame = four_days.copy()
    frame.loc[5, "dteday"] = "31/02/2011?"

    with pytest.raises(SchemaError, match=r"'dteday' does not parse in 1 row.*31/02/2011\?"):
        ingest(make_spec(write_source(frame)))


def test_parquet_files_give_the_same_partitions_as_csv_files_of_the_same_rows(
    four_days, write_source, make_spec
):
    halves = (four_days.iloc[:40], four_days.iloc[40:])
    from_csv = ingest(make_spec(write_source(*halves, fmt="csv")))
    from_parquet = ingest(make_spec(write_source(*halves, fmt="parquet")))

    assert keys_and_fingerprints(from_parquet) == keys_and_fingerprints(from_csv)


def test_a_single_file_can_be_the_source(four_days, write_source, make_spec):
    folder = write_source(four_days, fmt="parquet")

    result = ingest(make_spec(folder / "part0.parquet"))

    assert [p.key for p in result.partitions] == list(DAYS)


def test_a_sql_table_gives_the_same_partitions_as_files(
    tmp_path, four_days, write_source, make_spec
):
    url = f"sqlite:///{tmp_path / 'source.db'}"
    engine = sa.create_engine(url)
    four_days.to_sql("hours", engine, index=False)
    engine.dispose()

    from_sql = ingest(make_spec({"kind": "sql", "url": url, "table": "hours"}))
    from_csv = ingest(make_spec(write_source(four_days)))

    assert keys_and_fingerprints(from_sql) == keys_and_fingerprints(from_csv)


def test_a_missing_sql_table_is_a_data_error_naming_the_table(tmp_path, four_days, make_spec):
    url = f"sqlite:///{tmp_path / 'source.db'}"
    engine = sa.create_engine(url)
    four_days.to_sql("hours", engine, index=False)
    engine.dispose()

    with pytest.raises(DataError, match=r"table 'hourz' does not exist.*fix source\.table"):
        ingest(make_spec({"kind": "sql", "url": url, "table": "hourz"}))


def test_as_of_hides_later_rows_and_drops_the_incomplete_newest_partition(
    four_days, write_source, make_spec
):
    spec = make_spec(write_source(four_days))
    as_of = pd.Timestamp("2011-03-03 12:00")

    result = ingest(spec, as_of=as_of)

    # 2011-03-03 is only half visible at noon: it is still filling up and must not be used.
    assert [p.key for p in result.partitions] == ["2011-03-01", "2011-03-02"]
    assert all((p.frame[TS] < as_of).all() for p in result.partitions)
    assert max(p.end for p in result.partitions) <= as_of


def test_as_of_at_midnight_keeps_the_day_that_ends_there(four_days, write_source, make_spec):
    result = ingest(make_spec(write_source(four_days)), as_of=pd.Timestamp("2011-03-03"))

    assert [p.key for p in result.partitions] == ["2011-03-01", "2011-03-02"]
    assert result.partitions[-1].rows == int(day_rows(four_days, "2011-03-02").sum())


def test_exact_duplicate_rows_are_dropped_and_counted(four_days, write_source, make_spec):
    clean = ingest(make_spec(write_source(four_days)))
    doubled = pd.concat([four_days, four_days.iloc[10:15]], ignore_index=True)

    result = ingest(make_spec(write_source(doubled)))

    assert result.duplicates_dropped == 5
    assert result.source_rows == len(four_days) + 5
    assert keys_and_fingerprints(result) == keys_and_fingerprints(clean)
    # each partition says what it lost (rows 10-14 are hours of the first day)
    assert [p.note for p in result.partitions] == ["5 duplicated row(s) dropped", None, None, None]


def test_a_partition_without_any_label_is_quarantined_and_the_others_still_flow(
    four_days, write_source, make_spec
):
    frame = four_days.copy()
    frame.loc[day_rows(frame, "2011-03-02"), "cnt"] = None

    result = ingest(make_spec(write_source(frame)))

    assert [p.key for p in result.partitions] == ["2011-03-01", "2011-03-03", "2011-03-04"]
    [quarantined] = result.quarantined
    assert quarantined.key == "2011-03-02"
    assert quarantined.rows == int(day_rows(frame, "2011-03-02").sum())
    assert "label 'cnt' is null in every row" in quarantined.reason


def test_unlabelled_rows_of_a_partition_with_labels_are_dropped_not_quarantined(
    four_days, write_source, make_spec
):
    frame = four_days.copy()
    frame.loc[[0, 1], "cnt"] = None

    result = ingest(make_spec(write_source(frame)))

    first = result.partitions[0]
    assert result.quarantined == ()
    assert first.rows == int(day_rows(frame, "2011-03-01").sum()) - 2
    assert first.frame["cnt"].notna().all()
    assert first.note == "2 row(s) without label 'cnt' dropped"


def test_text_in_a_numeric_feature_quarantines_its_partition_naming_the_column(
    four_days, write_source, make_spec
):
    frame = four_days.copy()
    frame["temp"] = frame["temp"].astype(object)
    frame.loc[day_rows(frame, "2011-03-03").idxmax(), "temp"] = "warm"

    result = ingest(make_spec(write_source(frame)))

    assert [p.key for p in result.partitions] == ["2011-03-01", "2011-03-02", "2011-03-04"]
    [quarantined] = result.quarantined
    assert quarantined.key == "2011-03-03"
    assert "numeric feature 'temp'" in quarantined.reason
    assert "'warm'" in quarantined.reason


def test_fingerprint_does_not_depend_on_row_order(four_days):
    frame = four_days[["dteday", "hr", "cnt", "temp"]]
    shuffled = frame.sample(frac=1.0, random_state=1).reset_index(drop=True)

    assert fingerprint(shuffled) == fingerprint(frame)


def test_fingerprint_changes_when_one_value_changes(four_days):
    frame = four_days[["dteday", "hr", "cnt", "temp"]]
    changed = frame.copy()
    changed.loc[7, "cnt"] += 1

    assert fingerprint(changed) != fingerprint(frame)


def test_fingerprint_changes_when_a_column_is_renamed(four_days):
    frame = four_days[["dteday", "hr", "cnt", "temp"]]

    assert fingerprint(frame.rename(columns={"temp": "atemp"})) != fingerprint(frame)


# -- bad input of the list: each is an error naming the fix or a quarantine record ------


def write_days(folder, frame, fmt="parquet"):
    """One file per day named after its partition (2011-03-01.parquet ...): declared partitions."""
    folder.mkdir(exist_ok=True)
    for day in DAYS:
        rows = frame[day_rows(frame, day)]
        if fmt == "csv":
            rows.to_csv(folder / f"{day}.csv", index=False)
        else:
            rows.to_parquet(folder / f"{day}.parquet", index=False)
    return folder


def test_an_extra_column_is_ignored_and_changes_no_fingerprint(four_days, write_source, make_spec):
    clean = ingest(make_spec(write_source(four_days)))

    result = ingest(make_spec(write_source(four_days.assign(surprise="x", debug_id=1))))

    assert keys_and_fingerprints(result) == keys_and_fingerprints(clean)
    assert result.quarantined == ()


def test_a_truncated_parquet_file_is_a_data_error_naming_it(four_days, write_source, make_spec):
    folder = write_source(four_days, fmt="parquet")
    data = (folder / "part0.parquet").read_bytes()
    (folder / "part0.parquet").write_bytes(data[: len(data) // 2])

    with pytest.raises(DataError, match=r"part0\.parquet cannot be read as parquet.*fix or remove"):
        ingest(make_spec(folder))


def test_a_corrupt_file_of_a_declared_partition_is_quarantined_and_the_others_flow(
    tmp_path, four_days, make_spec
):
    folder = write_days(tmp_path / "days", four_days)
    data = (folder / "2011-03-02.parquet").read_bytes()
    (folder / "2011-03-02.parquet").write_bytes(data[: len(data) // 2])

    result = ingest(make_spec(folder))

    assert [p.key for p in result.partitions] == ["2011-03-01", "2011-03-03", "2011-03-04"]
    [quarantined] = result.quarantined
    assert quarantined.key == "2011-03-02"
    assert "2011-03-02.parquet cannot be read as parquet" in quarantined.reason
    assert "rewrite it" in quarantined.reason


def test_an_empty_file_of_a_declared_partition_is_quarantined_and_the_others_flow(
    tmp_path, four_days, make_spec
):
    folder = write_days(tmp_path / "days", four_days, fmt="csv")
    four_days.iloc[:0].to_csv(folder / "2011-03-03.csv", index=False)

    result = ingest(make_spec(folder))

    assert [p.key for p in result.partitions] == ["2011-03-01", "2011-03-02", "2011-03-04"]
    [quarantined] = result.quarantined
    assert (quarantined.key, quarantined.rows) == ("2011-03-03", 0)
    assert "2011-03-03.csv of partition 2011-03-03 holds no row" in quarantined.reason


def test_rows_outside_the_partition_their_file_declares_quarantine_that_file(
    tmp_path, four_days, make_spec
):
    frame = four_days.copy()
    folder = write_days(tmp_path / "days", frame)
    wrong = frame[day_rows(frame, "2011-03-02")].copy()
    wrong.loc[wrong.index[:3], "dteday"] = "2011-03-09"  # a broken export stamped 3 rows wrong
    wrong.to_parquet(folder / "2011-03-02.parquet", index=False)

    result = ingest(make_spec(folder))

    assert [p.key for p in result.partitions] == ["2011-03-01", "2011-03-03", "2011-03-04"]
    [quarantined] = result.quarantined
    assert quarantined.key == "2011-03-02"
    assert quarantined.rows == len(wrong)
    assert "has 3 row(s) whose timestamp 'dteday' lies outside" in quarantined.reason
    assert "2011-03-09" in quarantined.reason
    assert "fix the export" in quarantined.reason


def test_rows_stamped_in_the_future_are_quarantined_naming_the_column(
    four_days, write_source, make_spec
):
    frame = four_days.copy()
    frame.loc[[3, 4], "dteday"] = "2099-01-01"  # a clock gone wrong upstream

    result = ingest(make_spec(write_source(frame)), now=pd.Timestamp("2011-03-05"))

    assert [p.key for p in result.partitions] == list(DAYS)
    assert sum(p.rows for p in result.partitions) == len(frame) - 2
    [quarantined] = result.quarantined
    assert (quarantined.key, quarantined.rows) == ("2099-01-01", 2)
    assert "timestamp 'dteday' in the future" in quarantined.reason
    assert "fix the clock" in quarantined.reason


def test_the_same_rows_delivered_in_two_files_are_counted_once(four_days, write_source, make_spec):
    clean = ingest(make_spec(write_source(four_days)))
    redelivered = four_days[day_rows(four_days, "2011-03-02")]

    result = ingest(make_spec(write_source(four_days, redelivered)))

    assert result.duplicates_dropped == len(redelivered)
    assert keys_and_fingerprints(result) == keys_and_fingerprints(clean)


def test_text_in_a_regression_label_quarantines_its_partition(four_days, write_source, make_spec):
    frame = four_days.copy()
    frame["cnt"] = frame["cnt"].astype(object)
    frame.loc[day_rows(frame, "2011-03-04").idxmax(), "cnt"] = "lots"

    result = ingest(make_spec(write_source(frame)))

    assert [p.key for p in result.partitions] == ["2011-03-01", "2011-03-02", "2011-03-03"]
    [quarantined] = result.quarantined
    assert "label 'cnt' has 1 non-numeric value(s), e.g. ['lots']" in quarantined.reason
    assert all(p.frame["cnt"].dtype.kind in "if" for p in result.partitions)


def test_the_doctests_of_declared_partition_hold():
    import doctest

    from retrain import ingest as ingest_module

    result = doctest.testmod(ingest_module, verbose=False)
    assert result.attempted >= 3 and result.failed == 0


def test_a_changed_source_file_is_read_again_for_the_samples_an_unchanged_one_is_not(
    four_days, write_source, make_spec, monkeypatch
):
    import os

    from retrain.families import spine
    from retrain.features import Window

    folder = write_source(four_days)
    spec = make_spec(folder)
    window = Window("holdout", pd.Timestamp("2011-03-01"), pd.Timestamp("2011-03-05"), (), "v")
    reads = []
    real_read = spine.read_source
    monkeypatch.setattr(spine, "read_source", lambda *a: reads.append(1) or real_read(*a))

    first = spine.source_rows(spec, window)
    again = spine.source_rows(spec, window)
    assert len(reads) == 1 and first.equals(again)  # unchanged files: read once

    # the same number of bytes, another value, and a later modification time: read again
    path = folder / "part0.csv"
    stat = path.stat()
    changed = four_days.assign(cnt=four_days["cnt"].astype(str).str.replace("1", "2"))
    changed.to_csv(path, index=False)
    assert path.stat().st_size == stat.st_size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    fresh = spine.source_rows(spec, window)

    assert len(reads) == 2
    assert not fresh["cnt"].astype(str).str.contains("1").any()
