"""Signals on a real season change of the Bike Sharing data, and the trigger policy."""

from __future__ import annotations

import doctest

import numpy as np
import pandas as pd
import pytest

from retrain import monitor
from retrain.config import MonitorSpec, parse_spec
from retrain.errors import SpecError
from retrain.monitor import (
    Signal,
    compute_signals,
    holm,
    psi,
    quarantine_problem,
    two_sample_p,
)
from retrain.triggers import decide_trigger
from tests.conftest import spec_dict

NUMERIC = ["temp", "hum", "windspeed", "hr", "workingday"]
CATEGORICAL = ["weathersit", "weekday"]


def days(frame: pd.DataFrame, start: str, end: str) -> pd.DataFrame:
    day = pd.to_datetime(frame["dteday"])
    return frame[(day >= start) & (day < end)]


def signals_for(bike_hourly, fresh_start, fresh_end, **config):
    return compute_signals(
        config=MonitorSpec(**config),
        numeric=NUMERIC,
        categorical=CATEGORICAL,
        reference=days(bike_hourly, "2011-06-01", "2011-08-01"),
        fresh=days(bike_hourly, fresh_start, fresh_end),
        champion_train_end=pd.Timestamp("2011-08-01"),
        now=pd.Timestamp(fresh_end),
        partition_rows={},
    )


def drifted(signals):
    return sorted(s.feature for s in signals if s.name == "drift" and s.fired)


def test_a_season_change_drifts_the_temperature_but_not_the_hours(bike_hourly):
    signals = signals_for(bike_hourly, "2011-12-01", "2011-12-15")
    assert "temp" in drifted(signals)
    assert "hr" not in drifted(signals)  # the hours of the day do not change with the season
    temp = next(s for s in signals if s.feature == "temp")
    assert temp.value > 1.0 and temp.p_value < 1e-6
    assert "Holm-adjusted" in temp.detail


def test_the_next_weeks_of_the_same_season_do_not_drift(bike_hourly):
    assert drifted(signals_for(bike_hourly, "2011-08-01", "2011-08-15")) == []


def test_small_samples_are_not_tested_for_drift(bike_hourly):
    signals = signals_for(bike_hourly, "2011-12-01", "2011-12-03", min_rows=100)
    assert drifted(signals) == []
    [note] = [s for s in signals if s.name == "drift"]
    assert "not tested" in note.detail and "monitor.min_rows = 100" in note.detail


def test_significance_alone_is_not_drift_on_a_big_sample():
    rng = np.random.default_rng(0)
    reference = rng.normal(0.0, 1.0, 200_000)
    fresh = rng.normal(0.02, 1.0, 200_000)  # a meaningless shift, but "significant"
    assert two_sample_p(reference, fresh, categorical=False) < 1e-4
    assert psi(reference, fresh, categorical=False) < 0.01


def test_holm_correction_is_monotone_and_capped():
    assert holm([0.01, 0.04, 0.03]) == [0.03, 0.06, 0.06]
    assert holm([0.5, 0.9]) == [1.0, 1.0]


def test_age_and_volume_fire_at_their_thresholds(bike_hourly):
    signals = signals_for(bike_hourly, "2011-08-01", "2011-08-15", max_age="14D", min_new_rows=300)
    by_name = {s.name: s for s in signals}
    assert by_name["age"].fired and by_name["age"].value == pytest.approx(14.0)
    assert by_name["volume"].fired and by_name["volume"].value == 336


def test_quality_decay_compares_the_champion_with_its_backtest_metric():
    y = np.full(300, 10.0)
    signals = compute_signals(
        config=MonitorSpec(quality_decay=0.2),
        numeric=["x"],
        categorical=[],
        reference=pd.DataFrame({"x": np.arange(300.0)}),
        fresh=pd.DataFrame({"x": np.arange(300.0)}),
        champion_train_end=pd.Timestamp("2012-01-01"),
        now=pd.Timestamp("2012-01-02"),
        partition_rows={},
        labelled=(y, y + 3.0),  # MAE 3.0 now
        metric="mae",
        backtest_metric=2.0,
    )
    [quality] = [s for s in signals if s.name == "quality"]
    assert quality.fired and quality.value == pytest.approx(0.5)
    assert "mae 3.0000 on 300 newly labelled rows vs 2.0000" in quality.detail


@pytest.mark.parametrize(
    ("fresh", "rows", "expected"),
    [
        (pd.DataFrame({"temp": [0.1] * 300}), {}, "feature 'hum' is missing from the fresh data"),
        (
            pd.DataFrame({"temp": [0.1] * 300, "hum": [None] * 300}),
            {},
            "feature 'hum' is null in every fresh row",
        ),
        (
            pd.DataFrame({"temp": [0.1] * 300, "hum": [0.5] * 300}),
            {"2011-12-03": 0},
            "partition 2011-12-03 has zero rows",
        ),
    ],
)
def test_garbage_is_a_data_problem_that_blocks_any_retrain(fresh, rows, expected):
    signals = compute_signals(
        config=MonitorSpec(),
        numeric=["temp", "hum"],
        categorical=[],
        reference=pd.DataFrame({"temp": np.linspace(0, 1, 300), "hum": np.linspace(0, 1, 300)}),
        fresh=fresh,
        champion_train_end=pd.Timestamp("2011-11-01"),
        now=pd.Timestamp("2012-06-01"),  # old champion: age fires too
        partition_rows=rows,
    )
    decision = decide_trigger(signals, [], None, pd.Timestamp("2012-06-01"), MonitorSpec())

    assert expected in decision.blocked_by
    assert not decision.retrain
    assert decision.reasons == ("data problems: never retrain on garbage",)


def drift(fired: bool = True) -> list[Signal]:
    return [Signal("drift", 0.5 if fired else 0.0, 0.2, fired, feature="temp")]


def test_all_rules_need_every_named_signal_at_once():
    cfg = MonitorSpec(any=(), all=("drift", "volume"))
    now = pd.Timestamp("2012-01-10")
    volume = Signal("volume", 5000, 1000, True)
    assert not decide_trigger(drift(), [], None, now, cfg).retrain
    decision = decide_trigger([*drift(), volume], [], None, now, cfg)
    assert decision.retrain
    assert decision.reasons[0].startswith("drift: drift in temp")


def test_debounce_needs_consecutive_checks_and_a_gap_resets_it():
    cfg = MonitorSpec(any=("drift",), debounce=3)
    now = pd.Timestamp("2012-01-10")
    assert decide_trigger(drift(), [{"drift"}, {"drift"}], None, now, cfg).retrain
    gap = decide_trigger(drift(), [{"drift"}, set()], None, now, cfg)
    assert not gap.retrain
    assert gap.reasons == ("drift fired 1 of the 3 checks in a row monitor.debounce asks for",)


def test_cooldown_blocks_a_retrain_too_soon_after_the_last_one():
    cfg = MonitorSpec(any=("drift",), cooldown="2D")
    now = pd.Timestamp("2012-01-10")
    soon = decide_trigger(drift(), [], pd.Timestamp("2012-01-09"), now, cfg)
    assert not soon.retrain and "cooling down" in soon.reasons[0]
    assert decide_trigger(drift(), [], pd.Timestamp("2012-01-07"), now, cfg).retrain


def test_min_drifted_features_counts_features():
    cfg = MonitorSpec(any=("drift",), min_drifted_features=2)
    now = pd.Timestamp("2012-01-10")
    assert not decide_trigger(drift(), [], None, now, cfg).retrain
    two = [*drift(), Signal("drift", 0.4, 0.2, True, feature="hum")]
    assert decide_trigger(two, [], None, now, cfg).retrain


def test_an_unknown_signal_name_in_the_rules_is_a_spec_error(tmp_path):
    data = spec_dict(tmp_path, tmp_path / "state", **{"monitor.any": ["drfit"]})
    with pytest.raises(SpecError, match=r"monitor.any: unknown signal\(s\) \['drfit'\]"):
        parse_spec(data)


def test_quarantined_fresh_partitions_are_one_blocking_data_problem_naming_them():
    [problem] = quarantine_problem({f"2011-08-{d:02d}": f"reason {d}" for d in range(15, 20)})

    assert problem.name == "data_problem" and problem.fired and problem.value == 5
    assert problem.detail == (
        "5 fresh partition(s) quarantined (2011-08-15, 2011-08-16, 2011-08-17 and 2 more): "
        "reason 15"
    )
    assert quarantine_problem({}) == []
    decision = decide_trigger(
        [Signal("volume", 500, 100, True), problem],
        [],
        None,
        pd.Timestamp("2011-08-29"),
        MonitorSpec(),
    )
    assert not decision.retrain and decision.blocked_by


def test_the_doctests_of_the_monitor_hold():
    result = doctest.testmod(monitor, verbose=False)

    assert result.attempted > 0 and result.failed == 0


def test_a_drift_reference_computed_once_gives_the_same_verdict_as_the_raw_window(bike_hourly):
    reference = days(bike_hourly, "2011-06-01", "2011-08-01")
    summary = monitor.drift_reference(reference, NUMERIC, CATEGORICAL, max_rows=5000)
    fresh = days(bike_hourly, "2011-12-01", "2011-12-15")
    common = {
        "config": MonitorSpec(),
        "numeric": NUMERIC,
        "categorical": CATEGORICAL,
        "fresh": fresh,
        "champion_train_end": pd.Timestamp("2011-08-01"),
        "now": pd.Timestamp("2011-12-15"),
        "partition_rows": {},
    }

    raw = compute_signals(reference=reference, **common)
    cached = compute_signals(reference=summary, **common)

    assert [(s.feature, s.fired) for s in raw] == [(s.feature, s.fired) for s in cached]
    assert [s.value for s in raw] == pytest.approx([s.value for s in cached])


def test_drift_tests_run_on_a_capped_seeded_sample_and_still_see_the_season_change(bike_hourly):
    reference = days(bike_hourly, "2011-01-01", "2011-08-01")  # 5,000+ rows
    fresh = days(bike_hourly, "2011-12-01", "2012-02-01")
    config = MonitorSpec(max_sample_rows=300)
    kwargs = {
        "config": config,
        "numeric": NUMERIC,
        "categorical": CATEGORICAL,
        "reference": reference,
        "fresh": fresh,
        "champion_train_end": pd.Timestamp("2011-08-01"),
        "now": pd.Timestamp("2012-02-01"),
        "partition_rows": {},
    }

    first, again = compute_signals(**kwargs), compute_signals(**kwargs)

    assert [s.value for s in first] == [s.value for s in again]  # seeded
    summary = monitor.drift_reference(reference, NUMERIC, CATEGORICAL, max_rows=300)
    assert all(v.size <= 300 for v in summary.numeric.values())
    assert "temp" in drifted(first)


def test_the_age_signal_is_the_data_age_of_the_champions_last_training_row():
    signals = compute_signals(
        config=MonitorSpec(max_age="10D"),
        numeric=[],
        categorical=[],
        reference=pd.DataFrame(),
        fresh=pd.DataFrame(),
        champion_train_end=pd.Timestamp("2011-08-05"),
        now=pd.Timestamp("2011-08-12"),
        partition_rows={},
        data_end=pd.Timestamp("2011-08-01 23:00"),
    )

    age = next(s for s in signals if s.name == "age")
    # counted from the last training row, not from the window's end: 10.04 days, so it fires
    assert age.value == pytest.approx(10 + 1 / 24)
    assert age.fired
    assert "data age 10.0 days" in age.detail
