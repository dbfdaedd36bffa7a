"""gate.prefer_fresh: a candidate the paired bootstrap cannot tell from the champion wins the
tie as the fresher model, if it beats the baseline significantly; a candidate significantly
worse than the champion, or one that learned nothing (shuffled labels), is refused."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pandas as pd
import pytest

from retrain.backtest import GateSettings, backtest
from retrain.config import GateSpec, parse_spec
from retrain.demo import synth
from retrain.families.lightgbm import evaluate, fit
from retrain.families.spine import Champion, prepare
from retrain.stateful import scratch
from retrain.trainers import LightGBMTrainer
from tests.conftest import spec_dict

START = pd.Timestamp("2024-03-01")
END = pd.Timestamp("2024-03-08")


GATE_FIELDS = {f.name for f in fields(GateSettings)}


def gated(**kwargs):
    """``backtest`` with the gate's settings and the holdout's data given as one set of keywords."""
    settings = {key: kwargs.pop(key) for key in list(kwargs) if key in GATE_FIELDS}
    return backtest(GateSettings(**settings), **kwargs)


def gate(y, candidate, champion, y_train, prefer_fresh, metric="mae", task="regression"):
    return gated(
        metric=metric,
        task=task,
        y_holdout=y,
        candidate_pred=candidate,
        y_train=y_train,
        holdout_start=START,
        holdout_end=END,
        tolerance=0.0,
        champion_pred=champion,
        champion_version="3",
        bootstrap_samples=500,
        seed=0,
        prefer_fresh=prefer_fresh,
    )


def noisy(seed: int, n: int = 200, scale: float = 1.0):
    """A holdout whose mean (the baseline) is far from most rows, and two models of the same
    quality: independent errors of the same spread."""
    rng = np.random.default_rng(seed)
    y = rng.uniform(0, 100, n)
    return y, y + rng.normal(0, 5, n), y + rng.normal(0, 5 * scale, n), np.full(50, 50.0)


def test_the_default_is_off():
    assert GateSpec().prefer_fresh is False


def test_a_tie_promotes_the_fresher_candidate():
    y, candidate, champion, y_train = noisy(1)
    result = gate(y, candidate, champion, y_train, prefer_fresh=True)
    assert result.ci_low < 0 < result.ci_high  # a tie: the interval holds zero
    assert result.passed
    assert "the fresher candidate wins the tie (gate.prefer_fresh)" in result.reasons[-1]
    # without the rule a tie keeps the champion
    strict = gate(y, candidate, champion, y_train, prefer_fresh=False)
    assert not strict.passed
    assert "may be worse than the champion" in strict.reasons[-1]


def test_a_tie_with_a_worse_point_estimate_still_promotes():
    # non-inferiority: only evidence against the candidate refuses it
    for seed in range(20):
        y, candidate, champion, y_train = noisy(seed)
        result = gate(y, candidate, champion, y_train, prefer_fresh=True)
        if result.improvement < 0 and result.ci_high > 0:
            assert result.passed
            return
    pytest.fail("no seed gave a tie with a worse point estimate")


def test_a_significantly_worse_candidate_is_refused():
    y, champion, candidate, y_train = noisy(2, scale=2.0)  # twice the champion's errors
    result = gate(y, candidate, champion, y_train, prefer_fresh=True)
    assert result.ci_high < 0
    assert not result.passed
    assert "the whole 95% CI of the improvement" in result.reasons[-1]
    assert "the champion stays" in result.reasons[-1]


def test_a_tie_without_significant_gain_over_the_baseline_keeps_the_champion():
    # both models are no better than the mean: a stale champion and a candidate that learned
    # nothing tie, and the tie does not go to the candidate
    rng = np.random.default_rng(3)
    y = rng.normal(50, 10, 200)
    y_train = np.full(50, 50.0)
    candidate = 50 + rng.normal(0, 1, 200)
    champion = 50 + rng.normal(0, 1, 200)
    result = gate(y, candidate, champion, y_train, prefer_fresh=True)
    assert result.ci_low < 0 < result.ci_high
    assert not result.passed
    assert "does not beat the trivial baseline significantly" in result.reasons[0]


def test_a_first_model_must_beat_the_baseline_significantly():
    # no champion: a point estimate better than the baseline is not enough with the rule
    rng = np.random.default_rng(4)
    y = rng.normal(50, 10, 200)
    y_train = np.full(50, 50.0)
    for seed in range(20):
        candidate = 50 + np.random.default_rng(seed).normal(0, 1, 200)
        options = {
            "metric": "mae",
            "task": "regression",
            "y_holdout": y,
            "candidate_pred": candidate,
            "y_train": y_train,
            "holdout_start": START,
            "holdout_end": END,
            "tolerance": 0.0,
            "bootstrap_samples": 500,
            "seed": 0,
        }
        strict = gated(**options, prefer_fresh=False)
        if strict.passed:  # beat the baseline's point estimate by chance
            fresh = gated(**options, prefer_fresh=True)
            assert not fresh.passed
            assert "does not beat the trivial baseline significantly" in fresh.reasons[0]
            return
    pytest.fail("no seed beat the baseline's point estimate")


def test_the_window_check_still_refuses_a_tie():
    for seed in range(20):
        y, candidate, champion, y_train = noisy(seed)
        result = gated(
            metric="mae",
            task="regression",
            y_holdout=y,
            candidate_pred=candidate,
            y_train=y_train,
            holdout_start=START,
            holdout_end=END,
            tolerance=0.0,
            champion_pred=champion,
            champion_version="3",
            bootstrap_samples=500,
            seed=0,
            window_ids=np.arange(y.size) % 4,
            window_bounds=[(START, END)] * 4,
            max_windows_lost=0,
            prefer_fresh=True,
        )
        if result.ci_low < 0 < result.ci_high and result.windows_lost:
            assert not result.passed
            assert "backtest windows to the champion" in " ".join(result.reasons)
            return
    pytest.fail("no seed gave a tie that loses a window")


def _fit(task, X, y, seed):
    return LightGBMTrainer(
        task=task,
        params={"learning_rate": 0.05, "num_leaves": 31, "min_data_in_leaf": 20},
        num_boost_round=100,
        categorical=("channel",),
        random_state=seed,
    ).fit(X, y)


def test_a_shuffled_label_classifier_is_refused_every_time():
    """Over 12 seeds of the generated drifting stream (docs/streams.md): a candidate trained on
    the training window with shuffled labels never passes against a champion trained on the
    same window with the true labels (concept A, judged on the next week), nor as a first model
    (no champion: it must beat the baseline significantly)."""
    columns = [*synth.FEATURES, "channel"]
    refused = first_refused = 0
    for seed in range(12):
        frame = synth.generate(seed=seed, days=100, rows_per_day=100)
        frame["channel"] = frame["channel"].astype("category")
        train = frame[frame["day"].between(33, 92)]
        holdout = frame[frame["day"] >= 93]
        y_train = train["y"].to_numpy("float64")
        champion = _fit("binary", train[columns], y_train, seed)
        shuffled = np.random.default_rng(seed).permutation(y_train)
        bad = _fit("binary", train[columns], shuffled, seed)
        result = gate(
            holdout["y"].to_numpy("float64"),
            bad.predict(holdout[columns]),
            champion.predict(holdout[columns]),
            shuffled,
            prefer_fresh=True,
            metric="accuracy",
            task="binary",
        )
        refused += not result.passed
        first = gate(
            holdout["y"].to_numpy("float64"),
            bad.predict(holdout[columns]),
            None,
            shuffled,
            prefer_fresh=True,
            metric="accuracy",
            task="binary",
        )
        first_refused += not first.passed
    assert (refused, first_refused) == (12, 12)


def test_a_shuffled_label_regressor_is_refused_every_time():
    refused = 0
    for seed in range(12):
        rng = np.random.default_rng(seed)
        X = pd.DataFrame(rng.normal(size=(1500, 4)), columns=["a", "b", "c", "d"])
        X["channel"] = pd.Categorical(rng.choice(["web", "app"], 1500))
        y = 10 * X["a"].to_numpy() + 5 * X["b"].to_numpy() ** 2 + rng.normal(0, 2, 1500)
        train, hold = slice(0, 1300), slice(1300, 1500)
        champion = _fit("regression", X.iloc[train], y[train], seed)
        shuffled = rng.permutation(y[train])
        bad = _fit("regression", X.iloc[train], shuffled, seed)
        result = gate(
            y[hold],
            bad.predict(X.iloc[hold]),
            champion.predict(X.iloc[hold]),
            shuffled,
            prefer_fresh=True,
        )
        refused += not result.passed
    assert refused == 12


class Jittered:
    """A champion as good as the candidate: its predictions with small seeded noise."""

    def __init__(self, model, scale: float) -> None:
        self.model, self.scale = model, scale

    def predict(self, X):
        pred = self.model.predict(X)
        return pred + np.random.default_rng(0).normal(0, self.scale, len(pred))


def test_the_lightgbm_gate_reads_gate_prefer_fresh_from_the_spec(tmp_path, bike_dir):
    """The family's evaluate passes the spec's key to the verdict: the same tie passes with
    gate.prefer_fresh and is refused without it."""
    verdicts = {}
    for prefer_fresh in (True, False):
        overrides = {"gate.prefer_fresh": prefer_fresh}
        spec = parse_spec(spec_dict(bike_dir, tmp_path / f"state-{prefer_fresh}", **overrides))
        prepared = prepare(spec, pd.Timestamp("2011-04-29"))
        candidate = fit(spec, prepared, scratch("candidate"))
        champion = Champion(
            "1", Jittered(candidate.model, 5.0), candidate.window.end, candidate.data_versions
        )
        verdicts[prefer_fresh] = evaluate(spec, candidate, prepared.holdout, champion).result
    on, off = verdicts[True], verdicts[False]
    assert on.ci_low < 0 < on.ci_high  # a tie
    assert on.passed and "wins the tie" in " ".join(on.reasons)
    assert not off.passed
