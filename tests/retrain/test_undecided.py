"""gate.undecided: a candidate the holdout cannot decide (a first model above the baseline but
not significantly; a refit of the champion's recipe that the holdout favours but not
significantly, or that loses to the baseline like the champion) is judged on the forward fold,
its recipe refitted on the older part of its own training window with its own labels; shuffled
labels fail it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retrain.backtest import (
    FoldEvidence,
    GateSettings,
    backtest,
    fold_evidence,
    paired_bootstrap,
)
from retrain.config import GateSpec, parse_spec
from retrain.demo import synth
from retrain.errors import SpecError
from retrain.families.lightgbm import evaluate, fit, forward_fold, interleaved_fold, own_fold
from retrain.families.spine import (
    Champion,
    Comparison,
    Trained,
    interleaved_partitions,
    prepare,
    same_recipe,
    shift_served,
)
from retrain.stateful import TrainingPlan, scratch
from tests.conftest import spec_dict

T = pd.Timestamp("2024-01-01")
AS_OF = pd.Timestamp("2011-04-29")  # bike: 21-day training window, 7-day holdout


class Fold:
    """A stand-in for the family's forward fold: its verdict, and how often it was fitted."""

    def __init__(self, passed: bool) -> None:
        self.passed = passed
        self.calls = 0

    def __call__(self) -> FoldEvidence:
        self.calls += 1
        verdict = "beats" if self.passed else "does not beat"
        return FoldEvidence(self.passed, f"forward fold: {verdict}", 100, 0.8, 0.5, 0.1, 0.2)


def settings(undecided: str = "interleaved_fold", **kwargs) -> GateSettings:
    return GateSettings(
        metric="mae",
        task="regression",
        bootstrap_samples=500,
        significant_baseline="no_champion",
        undecided=undecided,
        **kwargs,
    )


def tie(seed: int = 0, shift: float = 0.2):
    """A holdout on which the candidate's MAE is the champion's minus ``shift`` (its point
    estimate better for a positive shift), far too little for the interval to show it, and
    both far better than the training mean (the baseline)."""
    rng = np.random.default_rng(seed)
    y = rng.uniform(0, 100, 300)
    champion = y + rng.normal(0, 5, 300)
    errors = rng.normal(0, 5, 300)  # independent of the champion's: a wide paired interval
    target = np.mean(np.abs(champion - y)) - shift
    candidate = y + errors * target / np.mean(np.abs(errors))
    return dict(
        y_holdout=y,
        candidate_pred=candidate,
        y_train=np.full(50, 50.0),
        holdout_start=T,
        holdout_end=T,
        champion_pred=champion,
        champion_version="3",
    )


def test_the_default_judges_undecided_candidates_on_the_interleaved_fold(tmp_path: Path):
    assert GateSpec().undecided == "interleaved_fold"
    for mode in ("interleaved_fold", "forward_fold", "refuse"):
        spec = parse_spec(spec_dict(tmp_path, tmp_path / "s", **{"gate.undecided": mode}))
        assert GateSettings.from_spec(spec).undecided == mode
    with pytest.raises(SpecError, match="undecided"):
        parse_spec(spec_dict(tmp_path, tmp_path / "s", **{"gate.undecided": "toss"}))


def test_a_refit_of_the_champions_recipe_that_the_holdout_favours_wins_the_tie_on_the_fold():
    held = tie()
    fold = Fold(True)
    result = backtest(settings(), same_recipe=True, fold=fold, **held)
    assert result.improvement > 0 and result.ci_low < 0  # the holdout favours it, not significantly
    assert result.passed
    assert "the fresher fit wins the tie (gate.undecided)" in result.reasons[-1]
    assert fold.calls == 1
    # the strict rule before: the champion stays
    strict = backtest(settings("refuse"), same_recipe=True, fold=fold, **held)
    assert not strict.passed
    assert "may be worse than the champion" in strict.reasons[-1]
    assert fold.calls == 1  # "refuse" fits no fold


def test_a_tie_whose_fold_fails_keeps_the_champion():
    result = backtest(settings(), same_recipe=True, fold=Fold(False), **tie())
    assert not result.passed
    assert "the champion stays (gate.undecided)" in result.reasons[-1]
    assert "no evidence that it learned something" in result.reasons[-1]


def test_a_tie_with_another_recipe_keeps_the_champion_and_fits_no_fold():
    fold = Fold(True)
    result = backtest(settings(), same_recipe=False, fold=fold, **tie())
    assert not result.passed
    assert fold.calls == 0


def test_a_refit_slightly_worse_by_its_point_estimate_still_wins_the_tie_on_the_fold():
    # non-inferiority: which validated fit the holdout favours is mostly their luck, which
    # the served refits do not share
    held = tie(shift=-0.2)
    result = backtest(settings(), same_recipe=True, fold=Fold(True), **held)
    assert result.improvement < 0 < result.ci_high
    assert result.passed
    assert "the fresher fit wins the tie (gate.undecided)" in result.reasons[-1]
    # another recipe is refused for it, as before
    other = backtest(settings(), same_recipe=False, fold=Fold(True), **held)
    assert not other.passed
    assert "is worse than the champion" in other.reasons[-1]


def test_a_refit_significantly_worse_over_the_partitions_is_refused_and_fits_no_fold():
    held = tie(shift=-2.0)
    fold = Fold(True)
    result = backtest(settings(), same_recipe=True, fold=fold, blocks=np.arange(300) // 10, **held)
    assert not result.passed
    assert "significantly worse" in result.reasons[-1]
    assert fold.calls == 0


def test_the_partition_interval_keeps_the_rows_of_a_partition_together():
    """Rows of one partition that share an error (one day's weather) are one piece of
    evidence, not many: resampled by partition, the interval holds zero; by row it does not."""
    rng = np.random.default_rng(5)
    days = np.repeat(np.arange(14), 24)
    y = rng.uniform(0, 100, days.size)
    champion = y + rng.normal(0, 1, days.size)
    # the candidate's error: a little better on most days, much worse on a few, the same
    # for every hour of a day
    shift = np.where(rng.random(14) < 0.7, -0.5, 1.5)[days]
    candidate = champion + np.sign(champion - y) * shift
    rows = paired_bootstrap("mae", y, candidate, champion, 1000, 0, False)
    by_day = paired_bootstrap("mae", y, candidate, champion, 1000, 0, False, blocks=days)
    assert by_day[0] < rows[0] and by_day[1] > rows[1]  # wider
    assert not rows[0] <= 0 <= rows[1]
    assert by_day[0] <= 0 <= by_day[1]


def test_a_tie_that_loses_more_windows_than_allowed_is_still_refused():
    held = tie()
    windows = np.arange(300) % 2
    bounds = [(T, T), (T, T)]
    held["candidate_pred"] = held["candidate_pred"].copy()
    held["candidate_pred"][windows == 1] = held["champion_pred"][windows == 1] + 3.0
    result = backtest(
        settings(max_windows_lost=0),
        same_recipe=True,
        fold=Fold(True),
        window_ids=windows,
        window_bounds=bounds,
        **held,
    )
    assert not result.passed
    assert any("backtest windows to the champion" in r for r in result.reasons)


def first_model(seed: int, right: float):
    """A binary holdout, a candidate right on ``right`` of the rows (against a balanced label's
    majority class at about half), and no champion."""
    rng = np.random.default_rng(seed)
    y = (rng.random(400) < 0.5).astype(float)
    pred = np.where(rng.random(400) < right, y, 1 - y)
    return dict(y_holdout=y, candidate_pred=pred, y_train=y[:200], holdout_start=T, holdout_end=T)


def binary(undecided: str = "interleaved_fold") -> GateSettings:
    return replace(settings(undecided), metric="accuracy", task="binary")


def test_a_first_model_not_significant_over_the_baseline_serves_on_the_folds_evidence():
    held = first_model(3, 0.53)
    refused = backtest(binary(), fold=Fold(False), **held)
    assert refused.candidate > refused.baseline
    assert not refused.passed
    assert "does not beat the trivial baseline significantly" in refused.reasons[0]
    assert "nor on its own training data" in refused.reasons[0]
    passed = backtest(binary(), fold=Fold(True), **held)
    assert passed.passed
    assert "it learned something (gate.undecided)" in passed.reasons[0]
    assert not backtest(binary("refuse"), fold=Fold(True), **held).passed


def test_a_first_model_below_the_baseline_or_significant_over_it_fits_no_fold():
    below, significant = Fold(True), Fold(True)
    assert not backtest(binary(), fold=below, **first_model(3, 0.40)).passed
    assert backtest(binary(), fold=significant, **first_model(3, 0.80)).passed
    assert below.calls == significant.calls == 0


def stale_pair():
    """A holdout on which a concept came back: the training mean (the baseline) is right, the
    champion and the candidate (two fits of the same recipe) are both off, the candidate a
    little less."""
    held = tie()
    y = held["y_holdout"]
    held["y_train"] = np.full(50, float(np.mean(y)))
    held["champion_pred"] = y + 60 + np.random.default_rng(1).normal(0, 5, y.size)
    held["candidate_pred"] = y + 59.5 + np.random.default_rng(2).normal(0, 5, y.size)
    return held


def test_a_refit_that_loses_to_the_baseline_like_its_champion_is_judged_against_the_champion():
    held = stale_pair()
    fold = Fold(True)
    result = backtest(settings(), same_recipe=True, fold=fold, **held)
    assert result.baseline < result.candidate < result.champion  # mae: lower is better
    assert result.passed
    assert "both are stale here" in result.reasons[0]
    assert fold.calls == 1  # fitted once for the baseline check and the tie
    for refused in (
        backtest(settings(), same_recipe=True, fold=Fold(False), **held),
        backtest(settings(), same_recipe=False, fold=Fold(True), **held),
        backtest(settings("refuse"), same_recipe=True, fold=Fold(True), **held),
    ):
        assert not refused.passed
        assert "does not beat the trivial baseline" in refused.reasons[0]


def test_the_fold_passes_labels_that_carry_signal_and_refuses_shuffled_ones():
    rng = np.random.default_rng(0)
    x = rng.normal(size=600)
    y = (x + rng.normal(0, 0.5, 600) > 0).astype(float)
    learned = (x > 0).astype(float)  # what a model fitted on the older rows would say
    good = fold_evidence("accuracy", "binary", y[:400], y[400:], learned[400:], 500, 0)
    assert good.passed and good.ci_low > 0 and good.rows == 200
    refused = 0
    for seed in range(12):
        shuffled = np.random.default_rng(seed).permutation(y)
        # any function of the features is at chance on labels that carry no signal
        bad = fold_evidence(
            "accuracy", "binary", shuffled[:400], shuffled[400:], learned[400:], 500, 0
        )
        refused += not bad.passed
    assert refused == 12


@pytest.fixture
def bike(tmp_path: Path, bike_dir: Path):
    spec = parse_spec(spec_dict(bike_dir, tmp_path / "state", **{"gate.undecided": "forward_fold"}))
    return spec, prepare(spec, AS_OF)


def test_the_lightgbm_fold_learns_from_the_candidates_own_labels(bike):
    spec, prepared = bike
    trained = fit(spec, prepared, scratch("candidate"))
    evidence = forward_fold(spec, trained)
    assert evidence is not None and evidence.passed
    assert evidence.rows == 7 * 24  # the newest windows.holdout of the training window
    refused = 0
    for seed in range(6):
        shuffled = np.random.default_rng(seed).permutation(trained.y_train)
        bad = forward_fold(spec, replace(trained, y_train=shuffled))
        assert bad is not None
        refused += not bad.passed
    assert refused == 6
    # an increment has no fold of its own
    warm = replace(trained, plan=TrainingPlan("warm", "increment", "1", 1))
    assert forward_fold(spec, warm) is None


def champion_of(trained, model=None) -> Champion:
    return Champion(
        "1",
        model if model is not None else trained.model,
        trained.window.end,
        trained.data_versions,
        {
            "retrain.window_start": str(trained.window.start),
            "retrain.window_end": str(trained.window.end),
        },
    )


def test_a_refit_of_the_same_recipe_is_recognised_and_another_recipe_is_not(bike, tmp_path):
    spec, prepared = bike
    earlier = prepare(spec, AS_OF - pd.Timedelta(days=1))
    old = fit(spec, earlier, scratch("champion"))
    new = fit(spec, prepared, scratch("candidate"))
    champ = champion_of(old)
    served = Comparison(prepared.holdout, "served", champ.model)
    assert same_recipe(new, served, champ)
    # other parameters, another window length, an increment, a baseline champion: not the same
    other = spec.model_copy(
        update={"lightgbm": spec.lightgbm.model_copy(update={"num_boost_round": 7})}
    )
    rounds = fit(other, earlier, scratch("champion"))
    assert not same_recipe(new, replace(served, model=rounds.model), champion_of(rounds))
    shorter = replace(champ, tags={**champ.tags, "retrain.window_start": str(AS_OF)})
    assert not same_recipe(new, served, shorter)
    warm = replace(new, plan=TrainingPlan("warm", "increment", "1", 1))
    assert not same_recipe(warm, served, champ)
    assert not same_recipe(new, Comparison(prepared.holdout, "none"), None)


def test_the_lightgbm_gate_asks_the_fold_only_of_an_undecided_candidate(bike, monkeypatch):
    spec, prepared = bike
    candidate = fit(spec, prepared, scratch("candidate"))
    calls: list[int] = []

    import retrain.families.lightgbm as family

    real = family.forward_fold

    def counted(spec, trained):
        calls.append(1)
        return real(spec, trained)

    monkeypatch.setattr(family, "forward_fold", counted)
    # the candidate as its own champion: the same recipe, an exact tie (interval 0 to 0), which
    # the strict rule already passes within tolerance: no fold
    result = evaluate(spec, candidate, prepared.holdout, champion_of(candidate)).result
    assert result.passed and result.improvement == 0
    assert calls == []


def test_the_interleaved_fold_holds_out_every_kth_partition_counted_back_from_the_newest():
    from retrain.features import Window
    from retrain.ingest import Partition

    day = pd.Timedelta(days=1)

    def window(n: int) -> Window:
        parts = tuple(
            Partition(f"{i}", T + i * day, T + (i + 1) * day, "f", pd.DataFrame()) for i in range(n)
        )
        return Window("train", T, T + n * day, parts, "v")

    every, held = interleaved_partitions(window(21), 7 * day)
    assert every == 3 and held.nonzero()[0].tolist() == [2, 5, 8, 11, 14, 17, 20]
    every, held = interleaved_partitions(window(90), 14 * day)  # bike.toml: 90 and 14 days
    assert every == 7 and held.sum() == 13 and held[-1]  # at most the holdout's 14, the newest
    every, held = interleaved_partitions(window(3), 7 * day)  # a holdout as long as the window
    assert every == 2 and held.tolist() == [True, False, True]
    assert interleaved_partitions(window(1), 7 * day) is None


def drift_spec(tmp_path: Path, seed: int, **overrides):
    """The generated drifting stream (retrain/demo/synth.py), 35 days of 100 rows: concept A
    for 21 days, then abruptly B. At the as-of (day 35) the 21-day training window holds 14
    days of A and its newest 7 days are B: the concept changes inside the window."""
    data = tmp_path / f"drift{seed}"
    synth.write_stream(
        data,
        seed=seed,
        days=35,
        rows_per_day=100,
        schedule=[synth.Segment(0, 21, "A"), synth.Segment(21, 35, "B")],
    )
    spec = {
        "name": "drift-test",
        "task": "binary",
        "label": "y",
        "metric": "accuracy",
        "source": {"kind": "files", "path": str(data), "format": "parquet"},
        "timestamp": {"column": "ts"},
        "features": {
            "numeric": list(synth.FEATURES),
            "categorical": ["channel"],
            "leakage": ["concept"],
        },
        "partitions": {"freq": "D"},
        "windows": {"train": "21D", "holdout": "7D"},
        "gate": {"bootstrap_samples": 500, "require_approval": False, **overrides},
        "lightgbm": {"num_boost_round": 50, "params": {"num_leaves": 15}},
        "state": {"dir": str(tmp_path / f"state{seed}")},
    }
    parsed = parse_spec(spec)
    return parsed, prepare(parsed, pd.Timestamp("2024-02-05"))  # day 35


def test_the_interleaved_fold_passes_a_recipe_across_a_concept_change_the_forward_fold_fails(
    tmp_path: Path,
):
    """A concept change inside the window: the forward fold fits on the old concept and scores
    the new one, at chance; the interleaved fold holds out partitions of both concepts and
    fits on both, so a recipe that learns passes it."""
    forward_failed = 0
    for seed in range(3):
        spec, prepared = drift_spec(tmp_path, seed)
        trained = fit(spec, prepared, scratch("candidate"))
        assert trained.window.end == pd.Timestamp("2024-01-29")  # days 7 .. 27, B from day 21
        interleaved = interleaved_fold(spec, trained)
        assert interleaved is not None and interleaved.kind == "interleaved"
        assert interleaved.passed, interleaved.reason
        assert "without every 3-th partition" in interleaved.reason
        forward = forward_fold(spec, trained)
        assert forward is not None and forward.kind == "forward"
        forward_failed += not forward.passed
        # the spec's key chooses the fold the gate fits
        assert own_fold(spec, trained) == interleaved
        as_forward = spec.model_copy(
            update={"gate": spec.gate.model_copy(update={"undecided": "forward_fold"})}
        )
        assert own_fold(as_forward, trained) == forward
        as_strict = spec.model_copy(
            update={"gate": spec.gate.model_copy(update={"undecided": "refuse"})}
        )
        assert own_fold(as_strict, trained) is None
    assert forward_failed == 3


def test_the_interleaved_fold_refuses_shuffled_labels(tmp_path: Path, bike):
    spec, prepared = drift_spec(tmp_path, 0)
    trained = fit(spec, prepared, scratch("candidate"))
    bike_spec, bike_prepared = bike
    bike_trained = fit(bike_spec, bike_prepared, scratch("candidate"))
    assert interleaved_fold(bike_spec, bike_trained).passed  # real labels: it learns
    refused = 0
    for seed in range(6):
        for s, t in ((spec, trained), (bike_spec, bike_trained)):
            shuffled = np.random.default_rng(seed).permutation(t.y_train)
            bad = interleaved_fold(s, replace(t, y_train=shuffled))
            assert bad is not None
            refused += not bad.passed
    assert refused == 12


def served_tie(seed: int = 0):
    """A holdout of 30 partitions of 10 rows on which the candidate is significantly worse
    than the champion's validated fit over the partitions (2 more MAE on every row), and
    both far better than the training mean."""
    held = tie(seed, shift=-2.0)
    held["blocks"] = np.arange(300) // 10
    return held


def test_a_refit_worse_than_a_validated_fit_the_served_champion_learned_from_serves():
    """The served champion already trained on every row the candidate's window added over
    the champion's validated fit, and on none of those it dropped: refusing the candidate
    would keep serving the very change of data the holdout judged, so the fresher fit serves
    when it keeps at least half of the champion's improvement over the baseline (over the
    partitions) and its fold passes."""
    fold = Fold(True)
    result = backtest(settings(), same_recipe=True, fold=fold, shift_served=True, **served_tie())
    assert result.improvement < 0 and result.ci_high < 0  # significantly worse
    assert result.passed
    assert "would not undo the change of data the holdout judged" in result.reasons[-1]
    assert "it keeps at least half of the champion's" in result.reasons[-1]
    assert "95% CI of the improvement over partitions" in result.reasons[-1]
    assert "forward fold: beats" in result.reasons[-1]
    assert fold.calls == 1
    # a champion whose served fit is the fit judged (or a tail): refused as before, no fold
    before = Fold(True)
    kept = backtest(settings(), same_recipe=True, fold=before, shift_served=False, **served_tie())
    assert not kept.passed and "significantly worse" in kept.reasons[-1]
    assert before.calls == 0
    # the strict rule and another recipe: refused
    for refused in (
        backtest(
            settings("refuse"), same_recipe=True, fold=Fold(True), shift_served=True, **served_tie()
        ),
        backtest(settings(), same_recipe=False, fold=Fold(True), shift_served=True, **served_tie()),
    ):
        assert not refused.passed


def test_such_a_refit_is_refused_when_its_fold_fails_or_it_loses_half_the_champions_skill():
    failed = backtest(
        settings(), same_recipe=True, fold=Fold(False), shift_served=True, **served_tie()
    )
    assert not failed.passed
    assert "no evidence that it is the same recipe's fit of those rows" in failed.reasons[-1]
    assert "forward fold: does not beat" in failed.reasons[-1]
    # barely better than the baseline (a fit of labels without signal looks like this next to
    # a real champion): it lost more than half the champion's skill; refused, no fold fitted
    held = served_tie()
    y = held["y_holdout"]
    held["y_train"] = np.full(50, float(np.mean(y)))
    mean = float(np.mean(y))
    noise = np.random.default_rng(3).normal(0, 10, y.size)
    held["candidate_pred"] = mean + 0.05 * (y - mean) + noise  # a little better than the mean
    fold = Fold(True)
    weak = backtest(settings(), same_recipe=True, fold=fold, shift_served=True, **held)
    assert weak.baseline > weak.candidate  # better than the baseline by its point estimate only
    assert not weak.passed
    assert fold.calls == 0
    assert "it loses more than half of the champion's" in weak.reasons[-1]


def test_shift_served_holds_when_the_served_refit_covers_the_rows_the_candidate_added():
    from retrain.features import Window

    day = pd.Timedelta(days=1)
    t = pd.Timestamp("2011-06-10")  # the as-of; bike.toml: 90-day window, 14-day holdout
    window = Window("train", t - 104 * day, t - 14 * day, (), "v")  # the candidate's
    cand = Trained(None, window, 1, {}, TrainingPlan("scratch", "", None, 0), (), np.empty(0))

    def champion(served_end: pd.Timestamp, validated_end: pd.Timestamp) -> Champion:
        tags = {
            "retrain.window_start": str(served_end - 90 * day),
            "retrain.window_end": str(served_end),
        }
        return Champion("8", object(), served_end, (), tags, object(), validated_end)

    weekly = champion(t - 7 * day, t - 21 * day)  # served to 06-03, validated to 05-20
    validated = Comparison(window, "validated", weekly.validated, weekly.validated_end)
    assert shift_served(cand, validated, weekly)
    served = Comparison(window, "served", weekly.model, weekly.train_end)
    assert not shift_served(cand, served, weekly)  # the fit judged is the fit that serves
    assert not shift_served(cand, validated, None)
    # a served refit that ends before the candidate's window (not past the holdout's start)
    early = champion(t - 15 * day, t - 29 * day)
    assert not shift_served(cand, replace(validated, train_end=early.validated_end), early)
    # a served window that starts after the validated fit's end (a holdout longer than the
    # window): rows the candidate added are missing from it
    gap = champion(t - 7 * day, t - 200 * day)
    assert not shift_served(cand, replace(validated, train_end=gap.validated_end), gap)


def test_the_lightgbm_gate_lets_the_served_refit_rule_refuse_shuffled_labels(tmp_path, bike_dir):
    """The family's gate tells the backtest when the served champion learned the change; a
    shuffled-label refit in that position is still refused (6 seeds)."""
    spec = parse_spec(
        spec_dict(
            bike_dir,
            tmp_path / "state",
            **{"gate.undecided": "interleaved_fold", "gate.refit": True},
        )
    )
    prepared = prepare(spec, AS_OF)
    earlier = prepare(spec, AS_OF - pd.Timedelta(days=1))
    validated = fit(spec, earlier, scratch("champion's validated fit"))
    served_end = AS_OF - pd.Timedelta(days=1)
    tags = {
        "retrain.window_start": str(served_end - spec.windows.train_delta),
        "retrain.window_end": str(served_end),
        "retrain.validated.window_end": str(validated.window.end),
    }
    champ = Champion.registered("2", validated.model, tags, validated=validated.model)
    candidate = fit(spec, prepared, scratch("candidate"))
    seen: list[bool] = []

    import retrain.families.lightgbm as family

    real = family.backtest

    def recorded(settings, **kwargs):
        seen.append(kwargs["shift_served"])
        return real(settings, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(family, "backtest", recorded)
        evaluate(spec, candidate, prepared.holdout, champ)
    assert seen == [True]
    refused = 0
    for seed in range(6):
        shuffled = np.random.default_rng(seed).permutation(candidate.y_train)
        X = family.FeatureCache(spec.state.features, spec).load(candidate.window.partitions)
        bad_model = family.make_trainer(spec).fit(X[list(spec.features.columns)], shuffled)
        bad = replace(candidate, model=bad_model, y_train=shuffled)
        refused += not evaluate(spec, bad, prepared.holdout, champ).result.passed
    assert refused == 6


def test_a_fit_significantly_above_the_baseline_but_far_below_the_champion_is_refused():
    """The 2024-11-19 case of the drift stream's replay: a shuffled-label candidate beat the
    majority class over the partitions and its fold passed (each test's own 2.5%), but it was
    far below the champion's validated fit; it keeps less than half of the champion's skill."""
    held = served_tie()
    y = held["y_holdout"]
    mean = float(np.mean(y))
    held["y_train"] = np.full(50, mean)
    held["candidate_pred"] = mean + 0.3 * (y - mean)  # better than the mean on every row
    fold = Fold(True)
    result = backtest(settings(), same_recipe=True, fold=fold, shift_served=True, **held)
    over_baseline = paired_bootstrap(
        "mae", y, held["candidate_pred"], held["y_train"][:1].repeat(y.size), 500, 0, False
    )
    assert over_baseline[0] > 0  # significantly better than the baseline
    assert not result.passed
    assert "it loses more than half of the champion's" in result.reasons[-1]
    assert fold.calls == 0
