"""Multiclass LightGBM on a generated 3-class stream: the spec, ingest, metrics, baseline, gate,
trainer (warm start keeps the classes), servable answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score, log_loss

from retrain.backtest import (
    GateSettings,
    backtest,
    baseline_predictions,
    paired_bootstrap,
    score,
)
from retrain.config import ModelSpec, StatefulSpec, parse_spec
from retrain.errors import SchemaChangeError, SpecError, TrainingError
from retrain.ingest import ingest
from retrain.servable import TabularModel
from retrain.stateful import ChampionState, plan_training
from retrain.trainers import LightGBMTrainer

CLASSES = ["low", "mid", "high"]


def three_classes(days: int = 6, per_day: int = 48, seed: int = 0) -> pd.DataFrame:
    """Half-hourly rows whose text label (low/mid/high) follows x, with 10% noise."""
    rng = np.random.default_rng(seed)
    n = days * per_day
    x = rng.normal(size=n)
    z = rng.normal(size=n)
    label = np.select([x < -0.5, x < 0.5], ["low", "mid"], "high")
    flip = rng.random(n) < 0.1
    label[flip] = rng.choice(CLASSES, int(flip.sum()))
    return pd.DataFrame(
        {
            "ts": pd.date_range("2024-01-01", periods=n, freq=f"{24 * 60 // per_day}min"),
            "x": x,
            "z": z,
            "level": label,
        }
    )


def spec_for(tmp_path: Path, frame: pd.DataFrame | None = None, **top: Any) -> ModelSpec:
    folder = tmp_path / "src"
    folder.mkdir(exist_ok=True)
    (three_classes() if frame is None else frame).to_csv(folder / "rows.csv", index=False)
    data: dict[str, Any] = {
        "name": "levels",
        "task": "multiclass",
        "classes": CLASSES,
        "metric": "multi_logloss",
        "label": "level",
        "source": {"path": str(folder)},
        "timestamp": {"column": "ts"},
        "features": {"numeric": ["x", "z"]},
        "state": {"dir": str(tmp_path / "state")},
        **top,
    }
    return parse_spec(data)


# -- the spec --------------------------------------------------------------------------------------
def test_a_multiclass_spec_needs_its_classes_and_a_multiclass_metric(tmp_path):
    with pytest.raises(SpecError, match="task 'multiclass' needs classes: list every value"):
        spec_for(tmp_path, classes=None)
    with pytest.raises(SpecError, match=r"metric 'auc' does not fit task 'multiclass'.*macro_f1"):
        spec_for(tmp_path, metric="auc")
    with pytest.raises(SpecError, match="classes names \\['mid'\\] more than once"):
        spec_for(tmp_path, classes=["low", "mid", "mid"])
    with pytest.raises(SpecError, match="classes lists the classes of a multiclass task"):
        spec_for(tmp_path, task="binary", metric="logloss")
    with pytest.raises(SpecError, match="metric 'macro_f1' does not fit task 'binary'"):
        spec_for(tmp_path, task="binary", classes=None, metric="macro_f1")
    with pytest.raises(SpecError, match="map the label of a binary task"):
        spec_for(tmp_path, positive="high")
    spec = spec_for(tmp_path, classes=[3, 1, 2], metric="macro_f1")
    assert spec.class_labels == ("3", "1", "2") and spec.greater_is_better
    assert [spec.label_code(v) for v in (1, "2", 3.0, 4)] == [1.0, 2.0, 0.0, None]


# -- ingest ----------------------------------------------------------------------------------------
def test_ingest_codes_the_classes_and_quarantines_a_partition_with_an_unlisted_class(tmp_path):
    frame = three_classes()
    day3 = frame["ts"].dt.day == 3
    frame.loc[day3 & (frame.index % 7 == 0), "level"] = "extreme"
    spec = spec_for(tmp_path, frame)

    result = ingest(spec, now=pd.Timestamp("2025-01-01"))

    [bad] = result.quarantined
    assert bad.key == "2024-01-03"
    assert "label 'level' has 7 row(s) of class 'extreme'" in bad.reason
    assert "which classes (low, mid, high) does not list; add it to classes" in bad.reason
    rows = pd.concat([p.frame for p in result.partitions])
    assert sorted(rows["level"].unique()) == [0.0, 1.0, 2.0]
    kept = frame[~(frame["ts"].dt.day == 3)].reset_index(drop=True)
    assert (rows["level"].to_numpy() == kept["level"].map(CLASSES.index).to_numpy()).all()


# -- metrics, baseline, gate -----------------------------------------------------------------------
def probabilities(y: np.ndarray, skill: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    raw = rng.random((len(y), 3)) + skill * np.eye(3)[y]
    return raw / raw.sum(axis=1, keepdims=True)


def test_the_multiclass_metrics_agree_with_scikit_learn():
    y = np.random.default_rng(1).integers(0, 3, 500)
    p = probabilities(y, 1.0, 2)

    assert score("accuracy", y, p) == pytest.approx(accuracy_score(y, p.argmax(axis=1)))
    assert score("multi_logloss", y, p) == pytest.approx(log_loss(y, p, labels=[0, 1, 2]))
    assert score("macro_f1", y, p) == pytest.approx(f1_score(y, p.argmax(axis=1), average="macro"))


def test_the_baseline_is_the_majority_class_or_the_class_priors():
    y_train = np.array([0, 2, 2, 2, 1])
    majority = baseline_predictions("multiclass", y_train, 4, "accuracy", 3)
    assert majority.shape == (4, 3) and (majority.argmax(axis=1) == 2).all()
    priors = baseline_predictions("multiclass", y_train, 2, "multi_logloss", 3)
    assert priors[0].tolist() == [0.2, 0.2, 0.6]
    # a class the training window never saw still has its column
    assert baseline_predictions("multiclass", np.array([0, 0]), 1, "multi_logloss", 3).shape == (
        1,
        3,
    )


@pytest.mark.parametrize("metric", ["accuracy", "multi_logloss", "macro_f1"])
def test_the_paired_bootstrap_sees_a_better_and_an_equal_multiclass_model(metric):
    y = np.random.default_rng(3).integers(0, 3, 400)
    good, weak = probabilities(y, 2.0, 4), probabilities(y, 0.2, 5)
    gib = metric != "multi_logloss"

    low, high = paired_bootstrap(metric, y, good, weak, 200, 0, gib)
    assert 0 < low < high
    low, high = paired_bootstrap(metric, y, good, good, 200, 0, gib)
    assert low == high == 0


def test_the_gate_refuses_a_multiclass_candidate_worse_than_the_champion_or_the_baseline():
    rng = np.random.default_rng(6)
    y = rng.integers(0, 3, 300)
    y_train = rng.integers(0, 3, 600)
    settings = GateSettings(
        metric="multi_logloss", task="multiclass", tolerance=0.0, bootstrap_samples=200
    )
    common = {
        "y_holdout": y,
        "y_train": y_train,
        "holdout_start": pd.Timestamp("2024-02-01"),
        "holdout_end": pd.Timestamp("2024-02-08"),
        "slices": {"g": np.where(np.arange(300) % 2, "a", "b")},
    }
    passed = backtest(
        settings,
        candidate_pred=probabilities(y, 2.0, 7),
        champion_pred=probabilities(y, 0.5, 8),
        champion_version="1",
        **common,
    )
    assert passed.passed, passed.reasons
    assert passed.baseline == pytest.approx(
        score("multi_logloss", y, np.tile(np.bincount(y_train, minlength=3) / 600, (300, 1)))
    )
    assert {s.value for s in passed.slices} == {"a", "b"}

    worse = backtest(
        settings,
        candidate_pred=probabilities(y, 0.5, 8),
        champion_pred=probabilities(y, 2.0, 7),
        champion_version="1",
        **common,
    )
    assert not worse.passed
    assert any("worse than the champion v1" in r for r in worse.reasons)

    useless = backtest(settings, candidate_pred=np.full((300, 3), [0.9, 0.05, 0.05]), **common)
    assert not useless.passed
    assert "does not beat the trivial baseline" in useless.reasons[0]


# -- trainer and servable --------------------------------------------------------------------------
def xy(frame: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    return frame[["x", "z"]], frame["level"].map(CLASSES.index).to_numpy(dtype="float64")


def trainer(**kwargs: Any) -> LightGBMTrainer:
    return LightGBMTrainer(
        task="multiclass",
        classes=kwargs.pop("classes", CLASSES),
        num_boost_round=kwargs.pop("num_boost_round", 30),
        params={"num_leaves": 7, "min_data_in_leaf": 10},
        **kwargs,
    )


def test_the_trainer_learns_class_probabilities_and_a_warm_start_keeps_the_classes(tmp_path):
    frame = three_classes(days=8)
    first, later = frame.iloc[:200], frame.iloc[200:]
    X, y = xy(first)

    model = trainer().fit(X, y)
    proba = model.predict(later[["x", "z"]])
    assert proba.shape == (len(later), 3)
    assert np.allclose(proba.sum(axis=1), 1.0)
    truth = xy(later)[1]
    assert score("accuracy", truth, proba) > 0.7
    assert model.classes_ == CLASSES

    warm = trainer(strategy="warm", init_model=model, num_boost_round=5).fit(*xy(later))
    assert warm.classes_ == CLASSES
    assert warm.booster_.num_trees() == model.booster_.num_trees() + 5 * 3  # a tree per class
    with pytest.raises(SchemaChangeError, match="a warm start keeps the classes"):
        trainer(strategy="warm", init_model=model, classes=[*CLASSES, "extreme"]).fit(*xy(later))
    with pytest.raises(TrainingError, match=r"not class codes 0..2"):
        trainer().fit(X, y + 1)

    loaded = LightGBMTrainer.load(model.save(tmp_path / "m"))
    assert loaded.classes_ == CLASSES
    assert loaded.model_string() == model.model_string()
    served = TabularModel.load(tmp_path / "m")
    labels = served.predict(later[["x", "z"]])
    assert labels.tolist() == [CLASSES[i] for i in proba.argmax(axis=1)]
    answer = served.predict(later[["x", "z"]].head(3), probabilities=True)
    assert list(answer.columns) == [
        "class",
        "probability_low",
        "probability_mid",
        "probability_high",
    ]
    assert np.allclose(answer.iloc[:, 1:].to_numpy(), proba[:3])


def test_a_changed_class_list_is_a_schema_change_for_the_stateful_plan():
    champion = ChampionState("4", 1, pd.Timestamp("2024-01-05"), ("x", "z"), (), tuple(CLASSES))
    kept = plan_training("stateful", StatefulSpec(), champion, ("x", "z"), (), CLASSES)
    assert kept.strategy == "warm"
    with pytest.raises(SchemaChangeError, match=r"classes changed from \['low', 'mid', 'high'\]"):
        plan_training("stateful", StatefulSpec(), champion, ("x", "z"), (), [*CLASSES, "extreme"])
    again = plan_training(
        "stateful",
        StatefulSpec(on_schema_change="scratch"),
        champion,
        ("x", "z"),
        (),
        [*CLASSES, "extreme"],
    )
    assert again.strategy == "scratch" and "classes changed" in again.reason


def test_infra_validation_compares_the_classes_a_server_answers():
    from retrain.infra import compare_answers

    expected = np.array(["low", "high"], dtype=object)
    assert compare_answers(expected, ["low", "high"]) is None
    assert compare_answers(expected, ["low", "mid"]) == (
        "1 of 2 class(es) differ, e.g. row 1: served 'mid', in process 'high'"
    )
    assert "answered 1 class(es) for 2 row(s)" in str(compare_answers(expected, ["low"]))


def test_the_simulator_replays_a_multiclass_stream_with_its_baseline_policy(tmp_path):
    from retrain.simulate import parse_policies, simulate

    spec = spec_for(
        tmp_path,
        three_classes(days=24, per_day=24),
        windows={"train": "14D", "holdout": "3D"},
        gate={"bootstrap_samples": 100, "require_approval": False, "refit": False},
        lightgbm={"num_boost_round": 20, "params": {"num_leaves": 7, "min_data_in_leaf": 10}},
    )

    rows = {r["policy"]: r for r in simulate(spec, parse_policies("never,baseline", spec)).table()}

    # x decides the class (10% noise): the model's log loss is far below the class priors'
    assert rows["never"]["multi_logloss"] < 0.6 < 1.0 < rows["baseline"]["multi_logloss"]
