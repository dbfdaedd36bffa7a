"""Hostile but realistic data is quarantined, converted or refused, never trained on in
silence (generated data)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from retrain.config import ModelSpec, parse_spec
from retrain.errors import SchemaError, SpecError
from retrain.ingest import ingest
from retrain.trainers import LightGBMTrainer

NOW = pd.Timestamp("2025-01-01")


def hourly(days: int = 4, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = days * 24
    temp = rng.uniform(-5, 30, n)
    return pd.DataFrame(
        {
            "ts": pd.date_range("2024-01-01", periods=n, freq="h").strftime("%Y-%m-%d %H:%M"),
            "temp": temp,
            "zone": rng.choice(["a", "b"], n),
            "y": temp * 2 + rng.normal(size=n),
        }
    )


def spec_for(tmp_path: Path, frame: pd.DataFrame, **top: Any) -> ModelSpec:
    folder = tmp_path / "src"
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / "rows.csv", index=False)
    features = {"numeric": ["temp"], "categorical": ["zone"], **top.pop("features", {})}
    return parse_spec(
        {
            "name": "hostile",
            "label": "y",
            "source": {"path": str(folder)},
            "timestamp": {"column": "ts"},
            "features": features,
            "state": {"dir": str(tmp_path / "state")},
            **top,
        }
    )


def keys(result) -> list[str]:
    return [p.key for p in result.partitions]


def test_timestamps_with_several_utc_offsets_are_converted_to_utc_and_logged(
    tmp_path, project_logs
):
    frame = pd.DataFrame(
        {
            # a Berlin-local export across the spring DST change (+01:00, then +02:00)
            "ts": ["2024-03-30 23:30+01:00", "2024-03-31 01:30+01:00", "2024-03-31 03:30+02:00"],
            "temp": [1.0, 2.0, 3.0],
            "zone": ["a", "b", "a"],
            "y": [1.0, 2.0, 3.0],
        }
    )
    result = ingest(spec_for(tmp_path, frame), now=NOW)

    assert keys(result) == ["2024-03-30", "2024-03-31"]
    stamps = [str(t) for p in result.partitions for t in p.frame["__ts__"]]
    assert stamps == ["2024-03-30 22:30:00", "2024-03-31 00:30:00", "2024-03-31 01:30:00"]
    assert any("several UTC offsets" in r.getMessage() for r in project_logs.records)


def test_timestamps_with_and_without_an_offset_are_a_schema_error_naming_the_fix(tmp_path):
    frame = pd.DataFrame(
        {
            "ts": ["2024-03-30 23:30+01:00", "2024-03-31 01:30"],
            "temp": [1.0, 2.0],
            "zone": ["a", "b"],
            "y": [1.0, 2.0],
        }
    )
    with pytest.raises(SchemaError, match="write every timestamp with its offset"):
        ingest(spec_for(tmp_path, frame), now=NOW)


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("temp", np.inf, "numeric feature 'temp' has 1 infinite value(s) (inf or -inf)"),
        ("temp", -np.inf, "numeric feature 'temp' has 1 infinite value(s) (inf or -inf)"),
        ("temp", 1e308, "numeric feature 'temp' has 1 value(s) outside [-3.40282e+38, "),
        ("y", np.inf, "label 'y' has 1 infinite value(s)"),
        ("y", -1e308, "label 'y' has 1 value(s) outside"),
    ],
)
def test_non_finite_and_absurd_values_quarantine_their_partition(tmp_path, column, value, message):
    frame = hourly()
    frame.loc[30, column] = value  # a row of 2024-01-02

    result = ingest(spec_for(tmp_path, frame), now=NOW)

    assert keys(result) == ["2024-01-01", "2024-01-03", "2024-01-04"]
    [quarantined] = result.quarantined
    assert quarantined.key == "2024-01-02"
    assert message in quarantined.reason
    assert "fix the data" in quarantined.reason


def test_values_outside_the_configured_bounds_quarantine_naming_the_setting(tmp_path):
    frame = hourly()
    frame.loc[50, "temp"] = 75.0  # 2024-01-03

    result = ingest(spec_for(tmp_path, frame, features={"bounds": {"temp": [-50, 60]}}), now=NOW)

    [quarantined] = result.quarantined
    assert quarantined.key == "2024-01-03"
    assert quarantined.reason == (
        "numeric feature 'temp' has 1 value(s) outside [-50, 60], e.g. [75.0]; fix the data or "
        "widen features.bounds.temp"
    )


@pytest.mark.parametrize(
    ("features", "message"),
    [
        ({"bounds": {"zone": [0, 1]}}, "features.bounds names ['zone'], not numeric features"),
        ({"bounds": {"temp": [60, -50]}}, "must be two finite numbers, lower first"),
        ({"optional": ["nope"]}, "features.optional names ['nope'], not features"),
    ],
)
def test_inconsistent_bounds_or_optional_are_spec_errors(tmp_path, features, message):
    with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("]", r"\]")):
        spec_for(tmp_path, hourly(), features=features)


def test_rows_of_the_same_timestamp_and_features_with_different_labels_are_left_out(tmp_path):
    frame = hourly()
    twin = frame.iloc[[40]].assign(y=frame.loc[40, "y"] + 100)  # same row, another label
    frame = pd.concat([frame, twin, frame.iloc[[10]]], ignore_index=True)  # + an exact copy

    result = ingest(spec_for(tmp_path, frame), now=NOW)

    assert keys(result) == ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"]
    assert result.duplicates_dropped == 1
    day2 = result.partitions[1]
    assert day2.rows == 23  # both rows of the conflict are left out
    [quarantined] = result.quarantined
    assert (quarantined.key, quarantined.rows) == ("2024-01-02", 2)
    assert "2 row(s) share their timestamp and features with a row of another label 'y'" in (
        quarantined.reason
    )
    assert "'ts': '2024-01-02 16:00:00'" in quarantined.reason
    assert "set id_columns to the columns that identify a row" in quarantined.reason


def test_with_id_columns_a_conflict_is_one_id_with_two_labels(tmp_path):
    frame = hourly().assign(order=lambda f: [f"{i:05d}" for i in range(len(f))])
    frame.loc[70, "order"] = frame.loc[69, "order"]  # one id, two rows, two labels
    spec = spec_for(tmp_path, frame, id_columns=["order"])

    result = ingest(spec, now=NOW)

    [quarantined] = result.quarantined
    assert (quarantined.key, quarantined.rows) == ("2024-01-03", 2)
    assert "share their id ('order') with a row of another label" in quarantined.reason
    assert "'order': '00069'" in quarantined.reason  # the id as written
    assert result.partitions[2].frame["order"].iloc[0] == "00048"


def test_id_columns_that_are_features_are_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match=r"id_columns \['zone'\] are the label or features"):
        spec_for(tmp_path, hourly(), id_columns=["zone"])


def test_a_feature_null_in_a_whole_partition_that_had_it_before_is_quarantined(tmp_path):
    frame = hourly()
    frame.loc[48:71, "temp"] = np.nan  # 2024-01-03: the column came out empty

    result = ingest(spec_for(tmp_path, frame), now=NOW)

    assert keys(result) == ["2024-01-01", "2024-01-02", "2024-01-04"]
    [quarantined] = result.quarantined
    assert quarantined.key == "2024-01-03"
    assert quarantined.reason.startswith(
        "feature(s) 'temp' are null in every row, although earlier partitions have values"
    )
    assert "list them under features.optional" in quarantined.reason


def test_an_optional_feature_or_one_never_seen_may_be_null_in_a_whole_partition(tmp_path):
    frame = hourly()
    frame.loc[48:71, "temp"] = np.nan
    optional = ingest(spec_for(tmp_path, frame, features={"optional": ["temp"]}), now=NOW)

    late = hourly()
    late.loc[:47, "temp"] = np.nan  # no value until 2024-01-03: nothing vanished
    never = ingest(spec_for(tmp_path / "late", late), now=NOW)

    assert optional.quarantined == () and len(optional.partitions) == 4
    assert never.quarantined == () and len(never.partitions) == 4


@pytest.mark.parametrize("name", ["temp[C]", "rain,mm", "a:b", "{x}", 'say "hi"'])
def test_feature_names_lightgbm_rejects_train_and_score_the_same_after_save(tmp_path, name):
    rng = np.random.default_rng(1)
    X = pd.DataFrame({name: rng.normal(size=200), "zone:id": rng.choice(["a", "b"], 200)})
    y = X[name].to_numpy() * 3
    trainer = LightGBMTrainer(
        task="regression",
        num_boost_round=10,
        categorical=["zone:id"],
        params={"min_data_in_leaf": 5},
    )

    trainer.fit(X, y)
    loaded = LightGBMTrainer.load(trainer.save(tmp_path / "model"))

    assert trainer.feature_names_ == [name, "zone:id"]
    assert np.corrcoef(trainer.predict(X), y)[0, 1] > 0.9
    np.testing.assert_array_equal(loaded.predict(X), trainer.predict(X))
