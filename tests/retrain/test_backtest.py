from __future__ import annotations

import math
from dataclasses import fields

import numpy as np
import pandas as pd
import pytest

from retrain.backtest import GateSettings, backtest, baseline_predictions, paired_bootstrap, score
from retrain.config import parse_spec
from retrain.errors import BacktestError
from tests.conftest import spec_dict

HOLDOUT_START = pd.Timestamp("2011-04-01")
HOLDOUT_END = pd.Timestamp("2011-04-08")
# A holdout of 40 rows; a training window whose mean (the baseline) is 20.5, far from most rows.
Y = np.arange(1.0, 41.0)
Y_TRAIN = np.full(10, 20.5)
GATE_FIELDS = {f.name for f in fields(GateSettings)}


def run(candidate_offset: float, champion_offset: float | None = None, **kwargs):
    settings = {"metric": "mae", "task": "regression", "bootstrap_samples": 200}
    options = {
        "y_holdout": Y,
        "candidate_pred": Y + candidate_offset,
        "y_train": Y_TRAIN,
        "holdout_start": HOLDOUT_START,
        "holdout_end": HOLDOUT_END,
    }
    if champion_offset is not None:
        options.update(champion_pred=Y + champion_offset, champion_version="3")
    for key, value in kwargs.items():
        (settings if key in GATE_FIELDS else options)[key] = value
    return backtest(GateSettings(**settings), **options)


@pytest.mark.parametrize(
    ("metric", "y", "pred", "expected"),
    [
        ("mae", [1, 2, 3, 4], [2, 2, 2, 2], 1.0),
        ("rmse", [1, 2, 3, 4], [2, 2, 2, 2], math.sqrt(1.5)),
        # rows with y == 0 are left out: (1/2 + 1/4) / 2
        ("mape", [0, 2, 4], [1, 1, 5], 0.375),
        # 3 of the 4 (positive, negative) pairs are ordered right
        ("auc", [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.75),
        ("auc", [0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3], 0.5),
        ("logloss", [1, 0], [0.8, 0.2], -math.log(0.8)),
        ("accuracy", [1, 0, 1, 0], [0.9, 0.6, 0.4, 0.1], 0.5),
    ],
)
def test_score_on_hand_computed_examples(metric, y, pred, expected):
    assert score(metric, np.array(y), np.array(pred)) == pytest.approx(expected)


def test_auc_of_a_holdout_with_one_class_is_undefined():
    assert math.isnan(score("auc", np.array([1, 1, 1]), np.array([0.2, 0.5, 0.9])))


def test_an_unknown_metric_is_an_error_listing_the_known_ones():
    with pytest.raises(BacktestError, match=r"unknown metric 'r2'; choose one of \['accuracy'"):
        score("r2", np.array([1.0]), np.array([1.0]))


def test_the_regression_baseline_is_the_training_mean():
    assert baseline_predictions("regression", np.array([1.0, 2.0, 6.0]), 2).tolist() == [3.0, 3.0]


@pytest.mark.parametrize(("y_train", "expected"), [([1, 1, 0], 1.0), ([0, 0, 1], 0.0)])
def test_the_binary_baseline_is_the_majority_class(y_train, expected):
    assert baseline_predictions("binary", np.array(y_train), 3).tolist() == [expected] * 3


def test_a_candidate_that_does_not_beat_the_baseline_fails_saying_so():
    # Always predicting 30 is worse than the training mean 20.5 on 1..40.
    result = run(0.0, candidate_pred=np.full(40, 30.0))

    assert not result.passed
    assert result.candidate > result.baseline
    assert any("does not beat the trivial baseline" in reason for reason in result.reasons)


def test_without_a_champion_beating_the_baseline_is_enough():
    result = run(1.0)

    assert result.passed
    assert result.champion is None and result.improvement is None
    assert result.candidate == pytest.approx(1.0)
    assert result.baseline == pytest.approx(np.mean(np.abs(Y - 20.5)))
    assert result.reasons[-1] == "no champion yet: the candidate only has to beat the baseline"


def test_a_candidate_better_than_the_champion_passes():
    result = run(1.0, champion_offset=2.0)

    assert result.passed
    assert result.improvement == pytest.approx(1.0)
    assert "candidate beats the champion v3" in result.reasons[-1]


def test_a_candidate_worse_than_the_champion_beyond_tolerance_fails():
    # MAE 2.5 vs 2.0: 25% worse, the tolerance is 10%.
    result = run(2.5, champion_offset=2.0, tolerance=0.1)

    assert not result.passed
    assert result.improvement == pytest.approx(-0.5)
    assert "worse than the champion v3" in result.reasons[-1]
    assert "the champion stays" in result.reasons[-1]


def test_a_candidate_worse_than_the_champion_within_tolerance_passes():
    # MAE 2.1 vs 2.0: 5% worse, the tolerance is 10%.
    result = run(2.1, champion_offset=2.0, tolerance=0.1)

    assert result.passed
    assert "within tolerance of the champion v3" in result.reasons[-1]


def test_with_a_greater_is_better_metric_a_higher_candidate_is_the_improvement():
    y = np.array([0, 0, 1, 1] * 10, dtype=float)
    candidate = np.array([0.1, 0.2, 0.8, 0.9] * 10)
    champion = np.array([0.1, 0.4, 0.35, 0.8] * 10)

    result = backtest(
        GateSettings(metric="auc", task="binary", tolerance=0.0, bootstrap_samples=200),
        y_holdout=y,
        candidate_pred=candidate,
        y_train=np.array([0, 1, 1]),
        holdout_start=HOLDOUT_START,
        holdout_end=HOLDOUT_END,
        champion_pred=champion,
        champion_version="3",
    )

    assert result.greater_is_better
    assert result.passed
    assert result.improvement == pytest.approx(1.0 - 0.75)


def test_a_champion_trained_into_the_holdout_cannot_be_compared():
    with pytest.raises(BacktestError, match=r"champion \(3\) trained on data up to .*--as-of"):
        run(1.0, champion_offset=2.0, champion_train_end=HOLDOUT_START + pd.Timedelta("1h"))


def test_a_champion_trained_up_to_the_holdout_start_is_compared():
    result = run(1.0, champion_offset=2.0, champion_train_end=HOLDOUT_START)

    assert result.champion == pytest.approx(2.0)


def test_an_empty_holdout_is_an_error_saying_to_widen_it():
    with pytest.raises(BacktestError, match=r"holdout holds no row: widen windows.holdout"):
        run(1.0, y_holdout=np.array([]), candidate_pred=np.array([]))


def test_paired_bootstrap_is_reproducible_with_the_same_seed():
    rng = np.random.default_rng(0)
    candidate, reference = Y + rng.normal(0, 1, 40), Y + rng.normal(0, 2, 40)

    first = paired_bootstrap("mae", Y, candidate, reference, 200, seed=5, greater_is_better=False)
    again = paired_bootstrap("mae", Y, candidate, reference, 200, seed=5, greater_is_better=False)
    other = paired_bootstrap("mae", Y, candidate, reference, 200, seed=6, greater_is_better=False)

    assert first == again
    assert other != first


def test_paired_bootstrap_interval_holds_a_clear_improvement():
    rng = np.random.default_rng(1)
    candidate, reference = Y + rng.normal(0, 0.5, 40), Y + rng.normal(0, 5, 40)
    point = score("mae", Y, reference) - score("mae", Y, candidate)

    low, high = paired_bootstrap("mae", Y, candidate, reference, 500, 0, greater_is_better=False)

    assert 0 < low < point < high


def test_the_backtest_result_carries_the_bootstrap_interval_of_the_improvement():
    result = run(1.0, champion_offset=3.0)

    # Every row improves by exactly 2, so every resample does too.
    assert (result.ci_low, result.ci_high) == pytest.approx((2.0, 2.0))


def test_markdown_holds_the_table_rows_and_the_verdict():
    result = run(1.0, champion_offset=2.0)

    text = result.markdown()

    assert "## Backtest PASSED" in text
    assert "| model | version | mae |" in text
    assert "| candidate | (new) | 1.0000 |" in text
    assert "| champion | 3 | 2.0000 |" in text
    assert f"| baseline | - | {result.baseline:.4f} |" in text
    assert "- candidate beats the champion v3" in text


def test_markdown_of_a_failed_backtest_says_failed_and_why():
    text = run(2.5, champion_offset=2.0).markdown()

    assert "## Backtest FAILED" in text
    assert "the champion stays" in text


# -- rolling windows, slices and the confidence-bound gate ------------------------------------

WINDOW_BOUNDS = [
    (pd.Timestamp("2011-04-01"), pd.Timestamp("2011-04-03")),
    (pd.Timestamp("2011-04-03"), pd.Timestamp("2011-04-05")),
    (pd.Timestamp("2011-04-05"), pd.Timestamp("2011-04-08")),
]
WINDOW_IDS = np.repeat([0, 1, 2], [10, 10, 20])


def test_each_window_is_scored_for_both_models_and_lost_windows_are_counted():
    # the candidate is better (error 1 vs 2) except in the first window (error 3 vs 2)
    candidate = Y + np.where(WINDOW_IDS == 0, 3.0, 1.0)
    result = backtest(
        GateSettings(
            metric="mae",
            task="regression",
            tolerance=0.0,
            max_windows_lost=0,
            bootstrap_samples=200,
        ),
        y_holdout=Y,
        candidate_pred=candidate,
        y_train=Y_TRAIN,
        holdout_start=HOLDOUT_START,
        holdout_end=HOLDOUT_END,
        champion_pred=Y + 2.0,
        champion_version="3",
        window_ids=WINDOW_IDS,
        window_bounds=WINDOW_BOUNDS,
    )

    assert [w.rows for w in result.windows] == [10, 10, 20]
    assert [w.improvement for w in result.windows] == pytest.approx([-1.0, 1.0, 1.0])
    assert result.windows_lost == 1
    assert not result.passed
    assert "loses 1 of 3 backtest windows to the champion (at most 0 allowed)" in " ".join(
        result.reasons
    )
    assert "| 2011-04-01 00:00 .. 2011-04-03 00:00 | 10 |" in result.markdown()


def test_allowing_a_lost_window_lets_an_overall_better_candidate_pass():
    candidate = Y + np.where(WINDOW_IDS == 0, 3.0, 1.0)
    result = backtest(
        GateSettings(
            metric="mae",
            task="regression",
            tolerance=0.0,
            max_windows_lost=1,
            bootstrap_samples=200,
        ),
        y_holdout=Y,
        candidate_pred=candidate,
        y_train=Y_TRAIN,
        holdout_start=HOLDOUT_START,
        holdout_end=HOLDOUT_END,
        champion_pred=Y + 2.0,
        champion_version="3",
        window_ids=WINDOW_IDS,
        window_bounds=WINDOW_BOUNDS,
    )
    assert result.passed, result.reasons


def test_a_slice_that_degrades_beyond_the_limit_fails_the_gate_and_is_named():
    weather = np.where(np.arange(40) < 30, "clear", "rain")
    # better on clear days (error 1 vs 2), much worse on rainy ones (error 4 vs 2)
    candidate = Y + np.where(weather == "clear", 1.0, 4.0)
    result = backtest(
        GateSettings(
            metric="mae",
            task="regression",
            tolerance=0.5,
            max_slice_degradation=0.2,
            min_slice_rows=5,
            bootstrap_samples=200,
        ),
        y_holdout=Y,
        candidate_pred=candidate,
        y_train=Y_TRAIN,
        holdout_start=HOLDOUT_START,
        holdout_end=HOLDOUT_END,
        champion_pred=Y + 2.0,
        champion_version="3",
        slices={"weathersit": weather},
    )

    by_value = {sl.value: sl for sl in result.slices}
    assert by_value["rain"].degradation == pytest.approx(1.0)  # error 4 vs 2: 100% worse
    assert by_value["clear"].degradation == pytest.approx(-0.5)
    assert not result.passed
    assert "worst weathersit=rain (+100.0%, 10 rows)" in " ".join(result.reasons)


def test_slices_smaller_than_the_minimum_are_not_judged():
    weather = np.where(np.arange(40) < 38, "clear", "snow")
    candidate = Y + np.where(weather == "clear", 1.0, 9.0)
    result = backtest(
        GateSettings(
            metric="mae",
            task="regression",
            tolerance=0.5,
            max_slice_degradation=0.2,
            min_slice_rows=5,
            bootstrap_samples=200,
        ),
        y_holdout=Y,
        candidate_pred=candidate,
        y_train=Y_TRAIN,
        holdout_start=HOLDOUT_START,
        holdout_end=HOLDOUT_END,
        champion_pred=Y + 2.0,
        champion_version="3",
        slices={"weathersit": weather},
    )
    assert [sl.value for sl in result.slices] == ["clear"]
    assert result.passed, result.reasons


def test_a_candidate_better_on_average_but_with_an_uncertain_gain_is_refused():
    rng = np.random.default_rng(1)
    y = rng.normal(100, 10, 60)
    errors = rng.normal(0, 10, 60)
    champion = y + errors
    # the same errors on other rows, 1% smaller: better on average by construction, but the
    # paired row differences are all noise, so the lower confidence bound is below zero
    candidate = y + np.roll(errors, 1) * 0.99
    result = backtest(
        GateSettings(metric="mae", task="regression", tolerance=0.0, bootstrap_samples=500),
        y_holdout=y,
        candidate_pred=candidate,
        y_train=np.full(10, 0.0),
        holdout_start=HOLDOUT_START,
        holdout_end=HOLDOUT_END,
        champion_pred=champion,
        champion_version="3",
    )
    assert result.ci_low < 0 < result.ci_high
    assert not result.passed
    assert (
        "may be worse than the champion v3: the 95% CI of the improvement" in (result.reasons[-1])
    )


def test_the_binary_baseline_for_logloss_is_the_training_positive_rate():
    pred = baseline_predictions("binary", np.array([1, 0, 0, 0]), 3, metric="logloss")
    assert pred.tolist() == [0.25, 0.25, 0.25]


def _loop_bootstrap(metric, y, candidate, reference, samples, seed, greater_is_better):
    """The gate's former bootstrap, one draw at a time: the reference the vectorised one must
    match statistically."""
    rng = np.random.default_rng(seed)
    sign = 1.0 if greater_is_better else -1.0
    diffs = []
    for _ in range(samples):
        idx = rng.integers(0, len(y), len(y))
        diffs.append(
            sign * (score(metric, y[idx], candidate[idx]) - score(metric, y[idx], reference[idx]))
        )
    d = np.array(diffs)
    d = d[~np.isnan(d)]
    return tuple(float(v) for v in np.quantile(d, [0.025, 0.975]))


@pytest.mark.parametrize("metric", ["mae", "rmse", "mape", "logloss", "accuracy", "auc", "ndcg"])
def test_vectorised_bootstrap_interval_matches_the_one_draw_at_a_time_loop(metric):
    rng = np.random.default_rng(3)
    n = 400
    if metric in {"logloss", "accuracy", "auc"}:
        y = rng.integers(0, 2, n).astype("float64")
        candidate = np.clip(0.5 * y + rng.uniform(0, 0.5, n), 0.01, 0.99)
        reference = np.clip(0.3 * y + rng.uniform(0, 0.7, n), 0.01, 0.99)
    elif metric == "ndcg":
        y = np.zeros(n)
        candidate, reference = rng.uniform(0, 0.4, n), rng.uniform(0, 0.3, n)
    else:
        y = rng.uniform(1, 100, n)
        candidate, reference = y + rng.normal(0, 5, n), y + rng.normal(0, 8, n)
    gib = metric in {"accuracy", "auc", "ndcg"}

    new = paired_bootstrap(metric, y, candidate, reference, 2000, 11, gib)
    old = _loop_bootstrap(metric, y, candidate, reference, 2000, 12, gib)

    # two independent bootstraps of the same statistic: the bounds agree within Monte Carlo
    # error (a few percent of the interval's width), not exactly
    width = old[1] - old[0]
    assert new[0] == pytest.approx(old[0], abs=0.1 * width)
    assert new[1] == pytest.approx(old[1], abs=0.1 * width)


def test_vectorised_bootstrap_is_paired_the_same_rows_for_both_models():
    rng = np.random.default_rng(4)
    y = rng.uniform(0, 100, 200)
    errors = np.abs(rng.standard_cauchy(200)) * 10
    reference = y + errors
    candidate = y + 0.95 * errors  # closer to the label on EVERY row, by 5% of a noisy error

    low, high = paired_bootstrap("mae", y, candidate, reference, 1000, 0, False)

    # every row improves: paired resamples always improve, however noisy the rows are; an
    # unpaired bootstrap (independent rows per model) would straddle zero on these errors
    assert 0 < low <= high
    point = score("mae", y, reference) - score("mae", y, candidate)
    assert low <= point <= high


@pytest.mark.parametrize("metric", ["rmse", "mae", "mape", "accuracy", "logloss", "auc", "ndcg"])
@pytest.mark.parametrize("rows", [300, 301, 7])
def test_vectorised_bootstrap_gives_the_same_interval_to_the_bit_whatever_the_block(
    monkeypatch, metric, rows
):
    import retrain.backtest as bt

    rng = np.random.default_rng(5)
    if metric in {"accuracy", "logloss", "auc"}:
        y = (rng.random(rows) < 0.4).astype("float64")
        candidate, reference = rng.random(rows), rng.random(rows)
    else:
        y = rng.uniform(0, 10, rows)
        y[::5] = 0.0  # mape: rows without a defined error
        candidate, reference = y + rng.normal(0, 1, rows), y + rng.normal(0, 2, rows)
    gib = metric in {"accuracy", "auc", "ndcg"}
    monkeypatch.setattr(bt, "_BOOTSTRAP_CELLS", 10**9)  # one matrix of every draw
    whole = paired_bootstrap(metric, y, candidate, reference, 500, 3, gib)
    # the indices of one rng.integers call, whatever the block (odd blocks and rows included)
    indices = np.random.default_rng(3).integers(0, rows, (500, rows))
    for cells in (rows * 7, rows * 13 + 1, rows, 1):
        monkeypatch.setattr(bt, "_BOOTSTRAP_CELLS", cells)
        drawn = np.concatenate(list(bt._bootstrap_indices(np.random.default_rng(3), 500, rows)))
        np.testing.assert_array_equal(drawn, indices)

        assert paired_bootstrap(metric, y, candidate, reference, 500, 3, gib) == whole


def test_gate_settings_come_from_the_spec_and_the_slice_limit_only_applies_with_slices(
    tmp_path,
):
    overrides = {
        "gate.tolerance": 0.05,
        "gate.max_windows_lost": 2,
        "gate.max_slice_degradation": 0.3,
        "gate.min_slice_rows": 7,
        "seed": 9,
    }
    plain = GateSettings.from_spec(parse_spec(spec_dict(tmp_path, tmp_path, **overrides)))
    sliced = GateSettings.from_spec(
        parse_spec(spec_dict(tmp_path, tmp_path, **overrides, **{"gate.slices": ["weathersit"]}))
    )

    assert plain == GateSettings(
        metric="mae",
        task="regression",
        tolerance=0.05,
        bootstrap_samples=200,
        seed=9,
        max_windows_lost=2,
        max_slice_degradation=None,
        min_slice_rows=7,
    )
    assert sliced.max_slice_degradation == 0.3
