"""Binary labels as users have them: ``positive`` / ``labels`` map them to 0/1 (generated data)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from retrain.config import ModelSpec, parse_spec
from retrain.errors import DataError, EmptyWindowError, SpecError
from retrain.features import FeatureCache, plan_windows
from retrain.ingest import ingest
from retrain.live.outcomes import outcomes


def updown(days: int = 4, per_day: int = 12, seed: int = 0) -> pd.DataFrame:
    """Hourly rows with a text label UP/DOWN that follows the feature x."""
    rng = np.random.default_rng(seed)
    n = days * per_day
    x = rng.normal(size=n)
    return pd.DataFrame(
        {
            "ts": pd.date_range("2024-01-01", periods=n, freq=f"{24 // per_day}h"),
            "x": x,
            "move": np.where(x > 0, "UP", "DOWN"),
        }
    )


def spec_for(tmp_path: Path, frame: pd.DataFrame, **top: Any) -> ModelSpec:
    folder = tmp_path / "src"
    folder.mkdir(exist_ok=True)
    frame.to_csv(folder / "rows.csv", index=False)
    data: dict[str, Any] = {
        "name": "updown",
        "task": "binary",
        "metric": "logloss",
        "label": "move",
        "source": {"path": str(folder)},
        "timestamp": {"column": "ts"},
        "features": {"numeric": ["x"]},
        "state": {"dir": str(tmp_path / "state")},
        **top,
    }
    return parse_spec(data)


def test_positive_maps_the_named_value_to_1_and_every_other_to_0(tmp_path):
    frame = updown()
    result = ingest(spec_for(tmp_path, frame, positive="UP"), now=pd.Timestamp("2025-01-01"))

    assert result.quarantined == ()
    rows = pd.concat([p.frame for p in result.partitions])
    assert sorted(rows["move"].unique()) == [0.0, 1.0]
    assert (rows["move"] == (rows["x"] > 0).astype(float)).all()


def test_labels_maps_each_value_and_the_cached_features_hold_0_and_1(tmp_path):
    spec = spec_for(tmp_path, updown(), labels={"UP": 1, "DOWN": 0})
    result = ingest(spec, now=pd.Timestamp("2025-01-01"))

    cache = FeatureCache(spec.state.features, spec)
    cache.materialize(result.partitions)
    features = cache.load(result.partitions)
    assert features["move"].dtype == "float64"
    assert (features["move"] == (features["x"] > 0).astype(float)).all()


def test_a_value_labels_does_not_map_quarantines_its_partition_naming_value_and_fix(tmp_path):
    frame = updown()
    frame.loc[3, "move"] = "FLAT"  # a day-one row
    result = ingest(
        spec_for(tmp_path, frame, labels={"UP": 1, "DOWN": 0}), now=pd.Timestamp("2025-01-01")
    )

    [quarantined] = result.quarantined
    assert quarantined.key == "2024-01-01"
    assert "values that labels does not map: FLAT" in quarantined.reason
    assert "add each to labels with its class 0 or 1" in quarantined.reason
    assert [p.key for p in result.partitions] == ["2024-01-02", "2024-01-03", "2024-01-04"]


def test_a_text_binary_label_without_a_mapping_names_the_values_and_the_setting(tmp_path):
    result = ingest(spec_for(tmp_path, updown()), now=pd.Timestamp("2025-01-01"))

    assert result.partitions == ()
    reason = result.quarantined[0].reason
    assert "label 'move' has values outside {0, 1}: DOWN, UP" in reason
    assert "set positive = 'DOWN' or 'UP' (the value that means 1)" in reason
    assert "labels = {DOWN = 1, UP = 0}" in reason


@pytest.mark.parametrize(
    ("top", "message"),
    [
        (
            {"task": "regression", "metric": "mae", "positive": "UP"},
            "positive map the label of a binary task; task is 'regression': remove positive",
        ),
        (
            {"positive": "UP", "labels": {"UP": 1, "DOWN": 0}},
            "give positive (the value that means 1) or labels",
        ),
        ({"labels": {"UP": 1, "FLAT": 1}}, "maps no value to 0: a binary label needs both"),
        ({"labels": {"UP": 1, "DOWN": 2}}, "labels.DOWN"),
        ({"positive": " "}, "positive is empty"),
    ],
)
def test_an_inconsistent_label_mapping_is_a_spec_error_naming_the_fix(tmp_path, top, message):
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        spec_for(tmp_path, updown(), **top)


def test_the_label_mapping_is_part_of_the_feature_spec_hash(tmp_path):
    plain = spec_for(tmp_path, updown())
    up = spec_for(tmp_path, updown(), positive="UP")
    down = spec_for(tmp_path, updown(), positive="DOWN")
    same = spec_for(tmp_path, updown(), positive="UP")

    assert len({plain.feature_spec_hash(), up.feature_spec_hash(), down.feature_spec_hash()}) == 3
    assert up.feature_spec_hash() == same.feature_spec_hash()


def test_yaml_number_keys_of_labels_match_integer_labels(tmp_path):
    frame = updown().assign(move=lambda f: np.where(f["x"] > 0, 2, 1))
    spec = spec_for(tmp_path, frame, labels={2: 1, 1: 0})
    result = ingest(spec, now=pd.Timestamp("2025-01-01"))

    rows = pd.concat([p.frame for p in result.partitions])
    assert (rows["move"] == (rows["x"] > 0).astype(float)).all()


def test_live_feedback_labels_are_mapped_like_the_training_labels(tmp_path):
    spec = spec_for(tmp_path, updown(), positive="UP")
    at = datetime(2024, 2, 1)
    predictions = [
        {
            "request_id": r,
            "arm": "champion",
            "version": "1",
            "at": at,
            "output": {"predictions": [p]},
        }
        for r, p in (("a", 0.9), ("b", 0.2))
    ]
    feedback = [
        {"request_id": "a", "at": at, "outcome": {"label": "UP"}},
        {"request_id": "b", "at": at, "outcome": {"labels": ["DOWN"]}},
    ]

    found = outcomes(
        "lightgbm",
        "accuracy",
        predictions,
        feedback,
        now=at + timedelta(hours=1),
        label_delay=timedelta(0),
        label_code=spec.label_code,
    )

    assert [o.value for o in found] == [1.0, 1.0]


def test_every_partition_quarantined_for_one_reason_warns_once_and_fails_naming_the_fix(
    tmp_path, project_logs
):
    spec = spec_for(tmp_path, updown(days=30))
    result = ingest(spec, now=pd.Timestamp("2025-01-01"))  # project_logs sees retrain's records

    warnings = [
        r.getMessage()
        for r in dict.fromkeys(project_logs.records)  # each once
        if r.name == "retrain.ingest" and r.levelno >= logging.WARNING
    ]
    assert warnings == [
        "quarantined 30 partition(s) (2024-01-01 to 2024-01-30, 360 rows): label 'move' has "
        "values outside {0, 1}: DOWN, UP; set positive = 'DOWN' or 'UP' (the value that means "
        "1), or labels = {DOWN = 1, UP = 0}, in the spec"
    ]
    with pytest.raises(EmptyWindowError) as info:
        plan_windows(result.partitions, spec, quarantined=result.quarantined)
    assert str(info.value) == (
        "no usable partition: all 30 partition(s) (2024-01-01 to 2024-01-30) were quarantined "
        "for one reason: label 'move' has values outside {0, 1}: DOWN, UP; set positive = 'DOWN' "
        "or 'UP' (the value that means 1), or labels = {DOWN = 1, UP = 0}, in the spec"
    )


def test_reasons_that_differ_per_partition_group_by_their_cause(tmp_path, project_logs):
    frame = updown(days=5).assign(x=lambda f: f["x"].astype(object))
    for i, bad in enumerate([0, 12, 13, 24, 25, 26]):  # 1, 2 and 3 bad values on days 1-3
        frame.loc[bad, "x"] = f"bad{i}"
    spec = spec_for(tmp_path, frame, positive="UP")
    result = ingest(spec, now=pd.Timestamp("2025-01-01"))  # project_logs sees retrain's records

    [line] = [
        r.getMessage()
        for r in dict.fromkeys(project_logs.records)  # each once
        if r.name == "retrain.ingest" and r.levelno >= logging.WARNING
    ]
    assert line.startswith(
        "quarantined 3 partition(s) (2024-01-01 to 2024-01-03, 36 rows): numeric feature 'x' "
        "has non-numeric values; fix the data or list 'x' under features.categorical "
        "(partition 2024-01-01: numeric feature 'x' has 1 non-numeric value(s), e.g. ['bad0']"
    )
    assert [p.key for p in result.partitions] == ["2024-01-04", "2024-01-05"]


def test_several_reasons_for_no_usable_partition_are_each_named_with_their_count(tmp_path):
    frame = updown(days=3).assign(x=lambda f: f["x"].astype(object))
    frame.loc[0, "x"] = "missing"  # day 1: a text feature
    frame.loc[12:, "move"] = "FLAT"  # days 2-3: a value labels does not map
    spec = spec_for(tmp_path, frame, labels={"UP": 1, "DOWN": 0})
    result = ingest(spec, now=pd.Timestamp("2025-01-01"))

    with pytest.raises(EmptyWindowError) as info:
        plan_windows(result.partitions, spec, quarantined=result.quarantined)
    message = str(info.value)
    assert message.startswith(
        "no usable partition: all 3 partition(s) (2024-01-01 to 2024-01-03) were quarantined "
        "for 2 reasons: 2 partition(s): label 'move' has 12 row(s) with values that labels does "
        "not map: FLAT"
    )
    assert "; 1 partition(s): numeric feature 'x' has 1 non-numeric value(s)" in message


def test_a_model_trained_on_up_down_predicts_the_probability_of_up_and_says_so(tmp_path):
    from retrain.families.lightgbm import evaluate, fit
    from retrain.families.lineage import Tag, lineage_tags
    from retrain.families.spine import prepare

    spec = spec_for(
        tmp_path,
        updown(days=40, per_day=24),
        positive="UP",
        windows={"train": "25D", "holdout": "10D"},
        gate={"bootstrap_samples": 100, "refit": False},
        lightgbm={"num_boost_round": 20, "params": {"min_data_in_leaf": 5}},
    )
    prepared = prepare(spec, pd.Timestamp("2024-02-05"))
    trained = fit(spec, prepared)
    evaluated = evaluate(spec, trained, prepared.holdout, None)

    assert evaluated.result.candidate < evaluated.result.baseline  # logloss: it learned UP
    rows = pd.DataFrame({"x": [-2.0, 2.0]})
    low, high = trained.model.predict(rows)
    assert low < 0.5 < high
    tags = lineage_tags(spec, "manual", "test", trained, prepared, evaluated, None, "me")
    assert tags[Tag.LABEL_MAPPING] == "UP = 1, other values = 0"


def test_prepare_fails_with_the_one_reason_when_every_partition_is_quarantined(tmp_path):
    from retrain.families.spine import prepare

    with pytest.raises(
        EmptyWindowError, match=r"all 4 partition\(s\) .* set positive = 'DOWN' or 'UP'"
    ):
        prepare(spec_for(tmp_path, updown()))


def test_a_positive_the_label_never_holds_is_a_data_error_naming_the_values(tmp_path):
    frame = updown().assign(move=lambda f: np.where(f["x"] > 0, "yes", "no"))
    spec = spec_for(tmp_path, frame, positive=True)  # YAML's reading of positive: yes

    with pytest.raises(
        DataError,
        match="positive = True matches no value of label 'move', "
        "which holds no, yes: set positive to the value that means 1",
    ):
        ingest(spec, now=pd.Timestamp("2025-01-01"))
