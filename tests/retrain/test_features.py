from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest

from retrain.errors import EmptyWindowError
from retrain.features import PARTITION, FeatureCache, data_version, plan_windows
from retrain.ingest import TS, ingest
from tests.retrain.conftest import DAYS, day_rows


@pytest.fixture
def spec(four_days, write_source, make_spec):
    return make_spec(write_source(four_days))


@pytest.fixture
def partitions(spec):
    return ingest(spec).partitions


def test_first_materialize_computes_every_partition_and_the_second_computes_none(
    tmp_path, spec, partitions
):
    cache = FeatureCache(tmp_path / "cache", spec)

    first = cache.materialize(partitions)
    second = cache.materialize(partitions)

    assert first.computed == DAYS
    assert first.hits == ()
    assert second.computed == ()
    assert second.hits == DAYS
    assert second.paths == first.paths
    assert all(Path(path).is_file() for path in first.paths)


def test_a_new_partition_is_the_only_one_computed(
    tmp_path, four_days, bike_hourly, write_source, make_spec
):
    three_days = four_days[~day_rows(four_days, "2011-03-04")]
    cache_dir = tmp_path / "cache"
    older = make_spec(write_source(three_days))
    FeatureCache(cache_dir, older).materialize(ingest(older).partitions)

    newer = make_spec(write_source(four_days))
    result = FeatureCache(cache_dir, newer).materialize(ingest(newer).partitions)

    assert result.computed == ("2011-03-04",)
    assert result.hits == DAYS[:3]


def test_a_changed_value_recomputes_only_its_partition(
    tmp_path, four_days, write_source, make_spec
):
    cache_dir = tmp_path / "cache"
    original = make_spec(write_source(four_days))
    FeatureCache(cache_dir, original).materialize(ingest(original).partitions)
    corrected = four_days.copy()
    corrected.loc[day_rows(corrected, "2011-03-02").idxmax(), "cnt"] += 100

    spec = make_spec(write_source(corrected))
    cache = FeatureCache(cache_dir, spec)
    parts = ingest(spec).partitions
    result = cache.materialize(parts)

    assert result.computed == ("2011-03-02",)
    assert set(result.hits) == {"2011-03-01", "2011-03-03", "2011-03-04"}
    loaded = cache.load([p for p in parts if p.key == "2011-03-02"])
    assert (
        loaded["cnt"].sum() == four_days.loc[day_rows(four_days, "2011-03-02"), "cnt"].sum() + 100
    )


def test_a_different_feature_list_recomputes_every_partition(
    tmp_path, four_days, write_source, make_spec
):
    folder = write_source(four_days)
    cache_dir = tmp_path / "cache"
    spec = make_spec(folder)
    FeatureCache(cache_dir, spec).materialize(ingest(spec).partitions)

    fewer = make_spec(folder, **{"features.numeric": ["temp", "hum"]})
    result = FeatureCache(cache_dir, fewer).materialize(ingest(fewer).partitions)

    assert result.computed == DAYS
    assert result.hits == ()
    assert "windspeed" not in FeatureCache(cache_dir, fewer).load(ingest(fewer).partitions)


def test_features_of_a_partition_hold_only_rows_inside_its_time_range(tmp_path, spec, partitions):
    cache = FeatureCache(tmp_path / "cache", spec)
    cache.materialize(partitions)

    for part in partitions:
        features = cache.load([part])
        assert len(features) == part.rows
        assert (features[TS] >= part.start).all()
        assert (features[TS] < part.end).all()
        assert set(features[PARTITION]) == {part.key}


def test_load_returns_label_and_feature_columns_in_time_order(tmp_path, spec, partitions):
    cache = FeatureCache(tmp_path / "cache", spec)
    cache.materialize(partitions)

    frame = cache.load(partitions)

    assert list(frame.columns) == [TS, PARTITION, "cnt", *spec.features.columns]
    assert frame[TS].is_monotonic_increasing
    assert frame["weathersit"].map(type).eq(str).all()


def test_derived_features_come_from_the_event_time(tmp_path, four_days, write_source, make_spec):
    spec = make_spec(write_source(four_days), **{"features.derived": ["hour", "is_weekend"]})
    cache = FeatureCache(tmp_path / "cache", spec)
    parts = ingest(spec).partitions
    cache.materialize(parts)

    frame = cache.load(parts)

    assert frame["hour"].tolist() == frame[TS].dt.hour.astype(float).tolist()
    assert frame["is_weekend"].tolist() == (frame[TS].dt.dayofweek >= 5).astype(float).tolist()


def test_categories_do_not_change_when_another_file_holds_a_missing_value(
    tmp_path, four_days, write_source, make_spec
):
    # A missing weathersit in one file makes pandas read the column as float; the categories
    # of every partition must still read "1", "2", ... and not "1.0": otherwise a champion
    # trained on clean data scores every category as unseen.
    clean = make_spec(write_source(four_days))
    first, second = four_days.iloc[:48].copy(), four_days.iloc[48:].copy()
    second.loc[second.index[0], "weathersit"] = None
    gappy = make_spec(write_source(first, second))

    clean_parts = ingest(clean).partitions
    gappy_parts = ingest(gappy).partitions
    clean_cache = FeatureCache(tmp_path / "clean", clean)
    gappy_cache = FeatureCache(tmp_path / "gappy", gappy)
    clean_cache.materialize(clean_parts)
    gappy_cache.materialize(gappy_parts)

    expected = set(clean_cache.load(clean_parts)["weathersit"])
    assert expected <= {"1", "2", "3", "4"}
    assert set(gappy_cache.load(gappy_parts)["weathersit"].dropna()) == expected
    assert gappy_cache.load(gappy_parts)["weathersit"].isna().sum() == 1


def test_data_version_is_stable_for_the_same_partitions_in_any_order(spec, partitions):
    spec_hash = spec.feature_spec_hash()

    assert data_version(spec_hash, partitions) == data_version(spec_hash, partitions[::-1])
    assert data_version(spec_hash, partitions).startswith("dv-")


def test_data_version_changes_with_a_fingerprint_the_partitions_or_the_feature_spec(
    spec, partitions
):
    spec_hash = spec.feature_spec_hash()
    base = data_version(spec_hash, partitions)
    changed = dataclasses.replace(partitions[1], fingerprint="0" * 64)

    assert data_version(spec_hash, [partitions[0], changed, *partitions[2:]]) != base
    assert data_version(spec_hash, partitions[:-1]) != base
    assert data_version("another-spec", partitions) != base


def test_training_ends_exactly_where_the_holdout_starts(four_days, write_source, make_spec):
    spec = make_spec(write_source(four_days), **{"windows.train": "3D", "windows.holdout": "1D"})

    train, holdout = plan_windows(ingest(spec).partitions, spec)

    assert train.end == holdout.start == pd.Timestamp("2011-03-04")
    assert [p.key for p in train.partitions] == list(DAYS[:3])
    assert [p.key for p in holdout.partitions] == ["2011-03-04"]
    assert train.version != holdout.version


def test_a_partition_straddling_the_holdout_start_is_in_neither_window(
    four_days, write_source, make_spec
):
    # A 36-hour holdout starts at noon of 2011-03-03: that day must not reach training.
    spec = make_spec(write_source(four_days), **{"windows.train": "3D", "windows.holdout": "36h"})

    train, holdout = plan_windows(ingest(spec).partitions, spec)

    assert holdout.start == pd.Timestamp("2011-03-03 12:00")
    assert all(p.end <= holdout.start for p in train.partitions)
    assert [p.key for p in train.partitions] == ["2011-03-01", "2011-03-02"]
    assert [p.key for p in holdout.partitions] == ["2011-03-04"]


def test_as_of_ends_the_holdout(four_days, write_source, make_spec):
    spec = make_spec(write_source(four_days), **{"windows.train": "2D", "windows.holdout": "1D"})

    train, holdout = plan_windows(ingest(spec).partitions, spec, as_of=pd.Timestamp("2011-03-04"))

    assert holdout.end == pd.Timestamp("2011-03-04")
    assert [p.key for p in holdout.partitions] == ["2011-03-03"]
    assert [p.key for p in train.partitions] == ["2011-03-01", "2011-03-02"]


def test_an_empty_training_window_says_how_to_fix_it(four_days, write_source, make_spec):
    spec = make_spec(write_source(four_days), **{"windows.train": "3D", "windows.holdout": "1D"})
    parts = ingest(spec).partitions

    with pytest.raises(
        EmptyWindowError, match=r"train window .* holds no usable partition"
    ) as info:
        plan_windows(parts, spec, as_of=pd.Timestamp("2011-03-02"))
    assert "data spans 2011-03-01 to 2011-03-05" in str(info.value)
    assert "Move --as-of or change windows.train" in str(info.value)


def test_no_partition_at_all_is_an_empty_window_error_naming_as_of(spec):
    with pytest.raises(EmptyWindowError, match=r"no usable partition.*--as-of"):
        plan_windows((), spec)


def test_split_windows_cuts_the_holdout_into_equal_consecutive_windows():
    from retrain.families.spine import split_windows
    from retrain.features import Window

    holdout = Window("holdout", pd.Timestamp("2011-04-01"), pd.Timestamp("2011-04-07"), (), "dv")
    ts = pd.Series(
        pd.to_datetime(
            ["2011-04-01 00:00", "2011-04-02 23:00", "2011-04-03 00:00", "2011-04-06 23:59"]
        )
    )

    bounds, ids = split_windows(holdout, 3, ts)

    assert bounds[1] == (pd.Timestamp("2011-04-03"), pd.Timestamp("2011-04-05"))
    assert ids.tolist() == [0, 0, 1, 2]


def test_load_gives_what_reading_each_file_with_pandas_gives(
    tmp_path, four_days, write_source, make_spec
):
    gappy = four_days.copy()
    gappy.loc[gappy.index[24:48], "weathersit"] = None  # one day without any weathersit
    for frame, name in ((four_days, "clean"), (gappy, "gappy")):
        spec = make_spec(write_source(frame), **{"features.optional": ["weathersit"]})
        parts = ingest(spec).partitions
        cache = FeatureCache(tmp_path / name, spec)
        cache.materialize(parts)

        loaded = cache.load(parts)

        one_by_one = pd.concat([cache.read_verified(p) for p in parts], ignore_index=True)
        pd.testing.assert_frame_equal(loaded, one_by_one, check_exact=True)
    assert loaded["weathersit"].isna().sum() == 24


def test_tables_of_different_schemas_are_converted_one_by_one():
    import pyarrow as pa

    from retrain.features import _frame

    typed = pa.table({"a": pa.array(["x", None]), "b": [1.0, 2.0]})
    untyped = pa.table({"a": pa.nulls(1), "b": [3.0]})  # a column all null in one file

    got = _frame([typed, untyped])

    want = pd.concat([typed.to_pandas(), untyped.to_pandas()], ignore_index=True)
    pd.testing.assert_frame_equal(got, want)
    assert got["b"].tolist() == [1.0, 2.0, 3.0]


def test_in_memory_reads_each_partition_once_in_its_thread(tmp_path, spec, partitions, monkeypatch):
    import threading

    from retrain.features import in_memory

    cache = FeatureCache(tmp_path / "cache", spec)
    cache.materialize(partitions)
    reads: list[str] = []
    real = FeatureCache.read_table
    monkeypatch.setattr(
        FeatureCache, "read_table", lambda self, part: reads.append(part.key) or real(self, part)
    )

    cache.load(partitions)
    cache.load(partitions)
    assert len(reads) == 2 * len(partitions)  # no memo: every load reads
    reads.clear()
    with in_memory():
        first = cache.load(partitions)
        again = cache.load(partitions[:2])
        # another thread has no memo of its own: it reads, and does not end this one's
        other = threading.Thread(target=lambda: cache.load(partitions[:1]))
        other.start()
        other.join()
        cache.load(partitions)
    assert reads == [p.key for p in partitions] + [partitions[0].key]
    pd.testing.assert_frame_equal(again, first.iloc[: len(again)])


def test_a_cached_file_parses_to_the_table_and_schema_read_table_gives():
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from retrain.features import _parse

    frame = pd.DataFrame(
        {
            "s": pd.array(["x", None, "z"], dtype="string"),
            "o": ["a", None, "c"],
            "f": [1.5, None, 3.0],
            "i": pd.array([1, None, 3], dtype="Int64"),
            "b": [True, False, True],
            "c": pd.Categorical(["u", "v", "u"]),
            "n": [None, None, None],
            TS: pd.to_datetime(["2024-01-01", "2024-01-02", None]),
        }
    )
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    blob = buffer.getvalue()

    got = _parse(blob)

    want = pq.read_table(pa.BufferReader(blob), use_threads=False)
    assert got.equals(want)
    assert got.schema.equals(want.schema, check_metadata=True)
    pd.testing.assert_frame_equal(got.to_pandas(), want.to_pandas(), check_exact=True)
