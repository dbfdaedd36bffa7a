"""gate.promote_baseline: the rule (retrain.promotion.baseline_promotion), the baseline's own
verdict (retrain.families.baseline.baseline_verdict) and the baseline as a saved model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retrain import servable
from retrain.backtest import GateSettings, backtest
from retrain.config import parse_spec
from retrain.families import family_of
from retrain.families.baseline import (
    BaselineModel,
    baseline_verdict,
    fresh_baseline,
    is_baseline,
    load_baseline,
)
from retrain.families.spine import Champion, prepare
from retrain.promotion import baseline_promotion, lost_to_baseline
from retrain.stateful import TrainingPlan
from retrain.trainers.popularity import PopularityRecommender
from tests.conftest import bike_slice, spec_dict

T0, T1 = pd.Timestamp("2011-04-01"), pd.Timestamp("2011-04-08")
RNG = np.random.default_rng(0)
Y = RNG.normal(10.0, 1.0, 400)
MEAN = np.full(Y.size, float(Y.mean()))
NOISE = Y.mean() + RNG.normal(0.0, 3.0, Y.size)  # a candidate worse than the mean
GOOD = Y + RNG.normal(0.0, 0.1, Y.size)  # a model far better than the mean


SETTINGS = GateSettings(metric="mae", task="regression", tolerance=0.0, bootstrap_samples=200)


def gate(champion: np.ndarray | None = None) -> dict:
    return dict(
        y_holdout=Y,
        y_train=Y,
        holdout_start=T0,
        holdout_end=T1,
        champion_pred=champion,
        champion_version=None if champion is None else "3",
    )


def judged(candidate: np.ndarray, champion: np.ndarray | None = None):
    result = backtest(SETTINGS, candidate_pred=candidate, baseline_pred=MEAN, **gate(champion))
    verdict = (
        baseline_verdict(SETTINGS, candidate, MEAN, **gate(champion))
        if lost_to_baseline(result)
        else None
    )
    return result, verdict


def test_no_champion_and_the_candidate_loses_to_the_baseline_promotes_the_baseline():
    result, verdict = judged(NOISE)

    choice = baseline_promotion(True, result, verdict)

    assert not result.passed and verdict is not None and verdict.passed
    assert choice.promote
    assert "candidate lost to the baseline" in choice.reason
    assert choice.reason.endswith("baseline promoted")
    assert "no champion" in choice.reason
    # the version's evidence: its own metric in both places, the refused candidate's in a reason
    assert verdict.candidate == verdict.baseline == pytest.approx(float(np.abs(Y - MEAN).mean()))
    assert verdict.reasons[0].startswith("the baseline beats the refused candidate")


def test_the_baseline_is_promoted_when_it_also_beats_the_champion_on_the_same_holdout():
    bad_champion = Y.mean() + RNG.normal(0.0, 5.0, Y.size)
    result, verdict = judged(NOISE, bad_champion)

    choice = baseline_promotion(True, result, verdict)

    assert choice.promote, choice.reason
    assert verdict is not None and verdict.champion is not None
    assert verdict.candidate < verdict.champion  # MAE: the baseline beats the champion
    assert "champion v3" in choice.reason


def test_the_baseline_is_not_promoted_when_the_champion_beats_it():
    result, verdict = judged(NOISE, GOOD)

    choice = baseline_promotion(True, result, verdict)

    assert lost_to_baseline(result)
    assert verdict is not None and not verdict.passed
    assert not choice.promote
    assert "the champion stays" in choice.reason


def test_flag_off_keeps_the_old_behaviour_and_a_candidate_that_beat_the_baseline_is_no_case():
    result, verdict = judged(NOISE)
    assert not baseline_promotion(False, result, verdict).promote
    # a candidate refused by the champion, not by the baseline: the baseline is not asked
    better_than_mean = Y + RNG.normal(0.0, 0.5, Y.size)
    refused, none = judged(better_than_mean, GOOD)
    assert not refused.passed and none is None
    choice = baseline_promotion(True, refused, none)
    assert not choice.promote and "beat the baseline" in choice.reason


def test_a_tie_with_the_candidate_does_not_replace_a_champion_by_the_baseline():
    bad_champion = Y.mean() + RNG.normal(0.0, 5.0, Y.size)
    result, verdict = judged(MEAN.copy(), bad_champion)  # the candidate predicts the mean too

    assert lost_to_baseline(result)
    assert verdict is not None and not verdict.passed  # it must beat the candidate, strictly
    assert not baseline_promotion(True, result, verdict).promote


def test_with_no_champion_a_tie_promotes_the_baseline_rather_than_nothing():
    result, verdict = judged(MEAN.copy())

    choice = baseline_promotion(True, result, verdict)

    assert verdict is not None and verdict.passed
    assert "the baseline serves rather than nothing" in verdict.reasons[-1]
    assert choice.promote and "there is no champion" in choice.reason


def test_a_first_model_refused_for_no_significant_gain_gives_way_to_the_baseline():
    # better than the mean by its point estimate, but not significantly (gate.significant_baseline)
    settings = replace(SETTINGS, significant_baseline="no_champion")
    # exact on every other row, 0.9 times the mean's error the wrong way on the others
    slightly = np.where(np.arange(Y.size) % 2 == 0, Y, MEAN - 0.9 * (Y - MEAN))
    result = backtest(settings, candidate_pred=slightly, baseline_pred=MEAN, **gate())
    verdict = baseline_verdict(settings, slightly, MEAN, **gate())

    choice = baseline_promotion(True, result, verdict)

    assert not result.passed and not lost_to_baseline(result), result.reasons
    assert "significantly" in result.reasons[0]
    assert choice.promote, choice.reason
    assert "was refused with no champion to keep serving" in choice.reason


# -- the baseline as a model ------------------------------------------------------------------
def test_a_tabular_baseline_saves_loads_and_serves_raw_rows(tmp_path: Path):
    model = BaselineModel("binary", "logloss").fit(pd.DataFrame(), np.array([1.0, 0.0, 0.0, 1.0]))
    model.save(tmp_path / "m")
    inputs = servable.TabularInputs(numeric=("temp",), categorical=())
    (tmp_path / "inputs.json").write_text(__import__("json").dumps(servable.inputs_to_json(inputs)))

    loaded = load_baseline(tmp_path / "m")
    served = servable.load_baseline(tmp_path / "m", tmp_path / "inputs.json")

    assert is_baseline(loaded) and loaded.kind == "positive_rate"
    rows = pd.DataFrame({"temp": [0.1, 0.2, 0.3]})
    assert served.predict(rows).tolist() == [0.5, 0.5, 0.5]
    assert loaded.predict(rows).tolist() == [0.5, 0.5, 0.5]
    with pytest.raises(servable.ServableError, match="temp"):
        served.predict(pd.DataFrame({"hum": [1.0]}))


def test_a_popularity_baseline_serves_what_the_backtest_scored(tmp_path: Path):
    frame = pd.DataFrame(
        {
            "user": ["a", "a", "b", "c", "c", "d"],
            "item": ["x", "y", "x", "x", "z", "y"],
            "weight": [5.0, 4.0, 5.0, 4.0, 5.0, 5.0],
            "ts": pd.date_range("2011-01-01", periods=6, freq="D"),
        }
    )
    model = PopularityRecommender("30D", 3.0).fit(frame)
    model.save(tmp_path / "p")

    served = servable.load_baseline(tmp_path / "p")
    loaded = load_baseline(tmp_path / "p")

    users = ["a", "c", "stranger"]
    expected = model.recommend(users, k=2)
    pd.testing.assert_frame_equal(served.predict(pd.DataFrame({"user": users}), k=2), expected)
    pd.testing.assert_frame_equal(loaded.recommend(users, k=2), expected)
    assert set(expected["source"]) == {"popularity"}
    # a's seen items are left out, as in the backtest
    assert set(expected.loc[expected["user"] == "a", "item"]) == {"z"}


# -- on real rows ---------------------------------------------------------------------------
@pytest.fixture
def shuffled_dir(tmp_path: Path, bike_hourly: pd.DataFrame) -> Path:
    """Two months of bike data whose label is shuffled: no feature says anything about it."""
    folder = tmp_path / "shuffled"
    folder.mkdir()
    rng = np.random.default_rng(7)
    for month, (start, end) in {
        "2011-03": ("2011-03-01", "2011-04-01"),
        "2011-04": ("2011-04-01", "2011-05-01"),
    }.items():
        part = bike_slice(bike_hourly, start, end)
        part["cnt"] = rng.permutation(part["cnt"].to_numpy())
        part.to_csv(folder / f"{month}.csv", index=False)
    return folder


def test_on_shuffled_labels_the_family_judges_the_baseline_and_the_fresh_one_reaches_the_as_of(
    tmp_path: Path, shuffled_dir: Path
):
    spec = parse_spec(
        spec_dict(
            shuffled_dir,
            tmp_path / "state",
            **{"gate.promote_baseline": True, "gate.refit": True},
        )
    )
    family = family_of(spec)
    prepared = prepare(spec, as_of=pd.Timestamp("2011-04-22"))
    trained = family.fit(spec, prepared, TrainingPlan("scratch", "test", None, 0), None)

    evaluated = family.evaluate(spec, trained, prepared.holdout, None)
    choice = baseline_promotion(True, evaluated.result, evaluated.baseline_result)
    fresh = fresh_baseline(spec, family, prepared, choice.reason)

    assert not evaluated.result.passed
    assert choice.promote, choice.reason
    assert fresh.window.end == pd.Timestamp("2011-04-22")  # learned up to the as-of
    assert fresh.plan.strategy == "baseline" and is_baseline(fresh.model)
    # the next retrain against a baseline champion trains from scratch
    champion = Champion("4", fresh.model, fresh.window.end, fresh.data_versions)
    plan = family.plan("stateful", spec, champion)
    assert plan.strategy == "scratch" and "baseline" in plan.reason


def test_a_baseline_champion_is_refreshed_by_the_fresh_baseline_without_a_comparison():
    stale = MEAN + 0.01  # an older baseline: about as good as the fresh one, not significantly
    result = backtest(SETTINGS, candidate_pred=NOISE, baseline_pred=MEAN, **gate(stale))
    strict = baseline_verdict(SETTINGS, NOISE, MEAN, False, **gate(stale))
    refresh = baseline_verdict(SETTINGS, NOISE, MEAN, True, **gate(stale))
    # judged on a holdout the champion trained closer to: it looks better, it is older
    older = baseline_verdict(SETTINGS, NOISE, MEAN + 0.5, True, **gate(MEAN))

    assert not strict.passed  # a non-baseline champion must be beaten significantly
    assert refresh.passed and "trivial baseline too" in refresh.reasons[1]
    assert baseline_promotion(True, result, refresh).promote
    assert older.passed and older.champion is not None  # its metric stays in the evidence


def test_a_candidate_refused_by_a_baseline_champion_lets_the_fresh_baseline_refresh_it():
    stale = MEAN + 0.02  # an older baseline champion, a little worse than the fresh mean
    near = MEAN + 0.02 * (Y - MEAN)  # better than the mean on every row
    passed = backtest(SETTINGS, candidate_pred=near, baseline_pred=MEAN, **gate(stale))
    # refused by the champion (e.g. a slice or a window it lost): the rule only reads the verdict
    result = replace(passed, passed=False, reasons=("candidate loses 1 of 2 windows",))
    verdict = baseline_verdict(SETTINGS, near, MEAN, True, **gate(stale))

    assert not lost_to_baseline(result) and verdict.passed
    assert not baseline_promotion(True, result, verdict, refresh=False).promote
    choice = baseline_promotion(True, result, verdict, refresh=True)
    assert choice.promote and "was refused" in choice.reason


def test_an_incremental_run_after_a_baseline_champion_skips_as_a_scheduled_one_does():
    from retrain.stateful import ChampionState, skip_reason

    end = pd.Timestamp("2011-04-22")
    model = ChampionState("4", 0, end, (), ())
    baseline = ChampionState("4", 0, end, (), (), baseline=True)

    # a refitted champion trained past the holdout's start: no increment to learn from
    assert skip_reason("stateful", model, "dv-1", "dv-2", T1) is not None
    # a baseline champion: the run recomputes from scratch, judged on the unseen rows
    assert skip_reason("stateful", baseline, "dv-1", "dv-2", T1) is None
    assert skip_reason("continual", baseline, "dv-2", "dv-2", T1) is not None  # no new data
