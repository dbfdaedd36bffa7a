"""gate.equal_staleness and gate.significant_baseline: a refitted champion is judged by its own
validated fit on the whole holdout (candidate and champion both `windows.holdout` stale, neither
trained on a holdout row); every candidate must beat the baseline significantly; the monthly
policy retrains every calendar month."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retrain.backtest import GateSettings, backtest
from retrain.config import GateSpec, parse_spec
from retrain.demo import synth
from retrain.families.lightgbm import evaluate, fit, refit
from retrain.families.spine import Champion, champion_comparison, prepare
from retrain.features import FeatureCache, Window
from retrain.simulate.policies import PolicyState, make_policy
from retrain.stateful import scratch
from retrain.trainers import LightGBMTrainer
from tests.conftest import spec_dict

AS_OF = pd.Timestamp("2011-04-29")  # bike: 21-day training window, 7-day holdout
HOLDOUT = Window("holdout", pd.Timestamp("2024-03-08"), pd.Timestamp("2024-03-15"), (), "h")


def champion(train_end: str, validated_end: str | None = None) -> Champion:
    return Champion(
        "4",
        "served model",
        pd.Timestamp(train_end),
        ("d",),
        validated="validated model" if validated_end else None,
        validated_end=pd.Timestamp(validated_end) if validated_end else None,
    )


def test_both_keys_are_on_by_default():
    assert GateSpec().equal_staleness is True
    assert GateSpec().significant_baseline is True


def test_without_a_champion_there_is_no_counterpart():
    comparison = champion_comparison(HOLDOUT, None, True, True)
    assert (comparison.fit, comparison.model, comparison.holdout) == ("none", None, HOLDOUT)
    assert comparison.tags == {"retrain.gate.champion_fit": "none"}


def test_a_champion_that_trained_up_to_the_holdout_start_is_judged_as_served():
    comparison = champion_comparison(HOLDOUT, champion("2024-03-08", "2024-03-01"), True, True)
    assert (comparison.fit, comparison.model) == ("served", "served model")
    assert comparison.holdout == HOLDOUT
    assert comparison.note is None


def test_a_refitted_champion_inside_the_holdout_is_judged_by_its_validated_fit_on_all_of_it():
    comparison = champion_comparison(HOLDOUT, champion("2024-03-11", "2024-03-04"), True, True)
    assert (comparison.fit, comparison.model) == ("validated", "validated model")
    assert comparison.holdout == HOLDOUT  # the whole holdout: neither fit trained on it
    assert comparison.train_end == pd.Timestamp("2024-03-04") <= HOLDOUT.start
    assert "equal staleness" in (comparison.note or "")
    assert comparison.tags == {
        "retrain.gate.champion_fit": "validated",
        "retrain.gate.champion_train_end": "2024-03-04 00:00:00",
        "retrain.gate.judged_start": "2024-03-08 00:00:00",
        "retrain.gate.judged_end": "2024-03-15 00:00:00",
    }


@pytest.mark.parametrize(
    ("equal_staleness", "validated_end"),
    [(False, "2024-03-04"), (True, None), (True, "2024-03-09")],
    ids=["flag off", "no validated fit kept", "validated fit inside the holdout"],
)
def test_otherwise_the_served_champion_is_judged_on_the_rows_after_its_training_end(
    equal_staleness, validated_end
):
    comparison = champion_comparison(
        HOLDOUT, champion("2024-03-11", validated_end), True, equal_staleness
    )
    assert (comparison.fit, comparison.model) == ("served", "served model")
    assert comparison.holdout.start == comparison.train_end == pd.Timestamp("2024-03-11")
    assert "unseen by both models" in (comparison.note or "")


def test_the_lightgbm_gate_compares_the_validated_fits_on_the_whole_holdout(tmp_path, bike_dir):
    spec = parse_spec(
        spec_dict(bike_dir, tmp_path / "state", **{"gate.refit": True, "gate.tolerance": 1.0})
    )
    # v1 validated at 2011-04-25 (trained to 04-18), served refit trained to 04-25
    early = prepare(spec, pd.Timestamp("2011-04-25"))
    validated = fit(spec, early, scratch("v1"))
    served = refit(spec, early, validated, None)
    tags = {"retrain.validated.window_end": str(validated.window.end)}
    champ = Champion.registered("1", served.model, tags, validated.model)
    champ = replace(champ, train_end=served.window.end, data_versions=served.data_versions)
    prepared = prepare(spec, AS_OF)  # the holdout starts at 2011-04-22
    candidate = fit(spec, prepared, scratch("candidate"))

    evaluated = evaluate(spec, candidate, prepared.holdout, champ)

    result = evaluated.result
    assert champ.validated_end == pd.Timestamp("2011-04-18") <= prepared.holdout.start
    assert pd.Timestamp(result.holdout_start) == prepared.holdout.start
    assert result.rows == 7 * 24  # the whole holdout
    # the champion's answers are the validated fit's, not the served one's
    rows = FeatureCache(spec.state.features, spec).load(prepared.holdout.partitions)
    X = rows[list(spec.features.columns)]
    assert np.allclose(evaluated.champion, validated.model.predict(X))
    assert not np.allclose(evaluated.champion, served.model.predict(X))
    assert evaluated.comparison is not None and evaluated.comparison.fit == "validated"
    assert any("validated fit" in r and "equal staleness" in r for r in result.reasons)
    # with the flag off, the served fit on the rows after its training end (04-25)
    off = spec.model_copy(update={"gate": spec.gate.model_copy(update={"equal_staleness": False})})
    tail = evaluate(off, candidate, prepared.holdout, champ)
    assert pd.Timestamp(tail.result.holdout_start) == pd.Timestamp("2011-04-25")
    assert tail.comparison is not None and tail.comparison.fit == "served"


def test_a_registered_champion_keeps_its_validated_fit_only_with_its_window_tag():
    tagged = Champion.registered(
        "2", "served", {"retrain.validated.window_end": "2024-03-01"}, "validated"
    )
    assert (tagged.validated, tagged.validated_end) == ("validated", pd.Timestamp("2024-03-01"))
    untagged = Champion.registered("2", "served", {}, "validated")
    assert (untagged.validated, untagged.validated_end) == (None, None)


def settings(**kwargs) -> GateSettings:
    return GateSettings(metric="accuracy", task="binary", bootstrap_samples=500, **kwargs)


def test_a_first_model_that_beats_the_baseline_by_its_point_estimate_only_is_refused():
    rng = np.random.default_rng(3)
    y = (rng.random(400) < 0.5).astype(float)
    majority = float(np.mean(y[:200]) >= 0.5)
    # right on 52% of the rows, against the majority class's ~50%: no evidence
    pred = np.where(rng.random(400) < 0.52, y, 1 - y)
    t = pd.Timestamp("2024-01-01")
    kwargs = dict(y_holdout=y, candidate_pred=pred, y_train=y[:200], holdout_start=t, holdout_end=t)
    strict = backtest(settings(significant_baseline=True), **kwargs)
    loose = backtest(settings(), **kwargs)
    assert strict.candidate > strict.baseline and majority in (0.0, 1.0)
    assert not strict.passed
    assert "does not beat the trivial baseline significantly" in strict.reasons[0]
    assert loose.passed  # the old rule: the point estimate is enough


def test_a_model_that_learned_something_beats_the_baseline_significantly():
    rng = np.random.default_rng(4)
    y = (rng.random(400) < 0.5).astype(float)
    pred = np.where(rng.random(400) < 0.8, y, 1 - y)
    t = pd.Timestamp("2024-01-01")
    result = backtest(
        settings(significant_baseline=True),
        y_holdout=y,
        candidate_pred=pred,
        y_train=y[:200],
        holdout_start=t,
        holdout_end=t,
    )
    assert result.passed
    assert "candidate beats the baseline significantly" in result.reasons[0]


def test_the_spec_key_reaches_the_gate(tmp_path: Path):
    on = parse_spec(spec_dict(tmp_path, tmp_path / "s", **{"gate.significant_baseline": True}))
    off = parse_spec(spec_dict(tmp_path, tmp_path / "s", **{"gate.significant_baseline": False}))
    assert GateSettings.from_spec(on).significant_baseline is True
    assert GateSettings.from_spec(off).significant_baseline is False


def test_a_shuffled_label_first_model_is_refused_every_time_by_default():
    """The generated drifting stream (docs/streams.md), 12 seeds: a first model trained with
    shuffled labels has no champion to lose to; the significant baseline check refuses it."""
    columns = [*synth.FEATURES, "channel"]
    refused = 0
    for seed in range(12):
        frame = synth.generate(seed=seed, days=100, rows_per_day=100)
        frame["channel"] = frame["channel"].astype("category")
        train = frame[frame["day"].between(33, 92)]
        holdout = frame[frame["day"] >= 93]
        shuffled = np.random.default_rng(seed).permutation(train["y"].to_numpy("float64"))
        bad = LightGBMTrainer(
            task="binary", num_boost_round=100, categorical=("channel",), random_state=seed
        ).fit(train[columns], shuffled)
        t = pd.Timestamp("2024-01-01")
        result = backtest(
            settings(significant_baseline=True),
            y_holdout=holdout["y"].to_numpy("float64"),
            candidate_pred=bad.predict(holdout[columns]),
            y_train=shuffled,
            holdout_start=t,
            holdout_end=t,
        )
        refused += not result.passed
    assert refused == 12


class _History:
    def __init__(self, end: str) -> None:
        self.end = pd.Timestamp(end)


def test_the_monthly_policy_retrains_at_every_calendar_month_february_included(tmp_path):
    spec = parse_spec(spec_dict(tmp_path, tmp_path / "s"))
    monthly = make_policy("monthly", spec)
    trained = []
    last = pd.Timestamp("2011-01-01")
    for end in ["2011-02-01", "2011-03-01", "2011-04-01", "2011-05-01"]:
        decision = monthly.decide(_History(end), PolicyState(None, last))  # type: ignore[arg-type]
        if decision.train:
            trained.append(end)
            last = pd.Timestamp(end)
    # February has 28 days: a 30-day cadence skipped the month after it
    assert trained == ["2011-02-01", "2011-03-01", "2011-04-01", "2011-05-01"]
    early = monthly.decide(_History("2011-05-20"), PolicyState(None, last))  # type: ignore[arg-type]
    assert not early.train and "2011-06-01" in early.reason
