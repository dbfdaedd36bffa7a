"""A baseline version is an MLflow model like any other: its own code and requirements, loaded
by mlflow.pyfunc, answering as the backtest scored it (gate.promote_baseline)."""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import Model

from registry import CandidateRecord
from registry.client import load_trainer, loading_pyfunc, save_servable, trainer_path
from retrain import servable
from retrain.families.baseline import BaselineModel
from retrain.trainers.popularity import PopularityRecommender
from tests.conftest import taste_stream


def served(record: CandidateRecord, tmp_path: Path) -> tuple[Path, object]:
    model_dir = save_servable(record, tmp_path / "saved")
    with loading_pyfunc():
        return model_dir, mlflow.pyfunc.load_model(str(model_dir))


def test_a_popularity_baseline_version_recommends_through_pyfunc(tmp_path: Path):
    raw = taste_stream(days=10)
    frame = pd.DataFrame(
        {
            "user": raw["userId"].astype(str).to_numpy(dtype=object),
            "item": raw["movieId"].astype(str).to_numpy(dtype=object),
            "weight": raw["rating"].to_numpy(dtype="float64"),
            "ts": pd.to_datetime(raw["timestamp"], unit="s"),
        }
    )
    model = PopularityRecommender("5D", 3.0).fit(frame)
    record = CandidateRecord(
        model_dir=model.save(tmp_path / "trainer"),
        description="baseline",
        params={},
        metrics={},
        version_tags={},
        sample=raw[["userId"]].head(3),
        family="baseline",
        predict_params={"k": 5},
        inputs=servable.QueryInputs(user="userId"),
    )

    model_dir, pyfunc = served(record, tmp_path)

    users = [4, "5", "nobody"]
    answer = pyfunc.predict(pd.DataFrame({"user": users}), params={"k": 3})  # type: ignore[attr-defined]
    expected = model.recommend(["4", "5", "nobody"], k=3)
    assert answer["item"].tolist() == expected["item"].tolist()
    assert set(answer["source"]) == {"popularity"}
    assert (model_dir / "code" / "retrain_servable.py").exists()
    assert "retrain" not in (model_dir / "requirements.txt").read_text()
    loaded = load_trainer(trainer_path(model_dir))
    assert isinstance(loaded, PopularityRecommender)
    pd.testing.assert_frame_equal(loaded.recommend(users, k=3), model.recommend(users, k=3))


def test_a_constant_baseline_version_scores_raw_rows_through_pyfunc(tmp_path: Path):
    model = BaselineModel("regression", "rmse").fit(pd.DataFrame(), np.array([2.0, 4.0, 9.0]))
    sample = pd.DataFrame({"temp": [0.2, 0.4], "weathersit": [1, 2]})
    record = CandidateRecord(
        model_dir=model.save(tmp_path / "trainer"),
        description="baseline",
        params={},
        metrics={},
        version_tags={},
        sample=sample,
        family="baseline",
        predict_params={},
        inputs=servable.TabularInputs(numeric=("temp",), categorical=("weathersit",)),
    )

    model_dir, pyfunc = served(record, tmp_path)

    assert pyfunc.predict(sample).tolist() == [5.0, 5.0]  # type: ignore[attr-defined]
    assert Model.load(str(model_dir)).signature is not None
    assert isinstance(load_trainer(trainer_path(model_dir)), BaselineModel)


def test_a_multiclass_baseline_version_answers_class_labels_and_its_priors(tmp_path: Path):
    # codes 0..2 of the labels "clear", "mist", "rain"; "mist" is the majority class
    y = np.array([0.0, 1.0, 1.0, 2.0, 1.0])
    model = BaselineModel("multiclass", "multi_logloss", 3, ("clear", "mist", "rain"))
    model.fit(pd.DataFrame(), y)
    sample = pd.DataFrame({"temp": [0.2, 0.4, 0.5], "weathersit": [1, 2, 3]})
    record = CandidateRecord(
        model_dir=model.save(tmp_path / "trainer"),
        description="baseline",
        params={},
        metrics={},
        version_tags={},
        sample=sample,
        family="baseline",
        predict_params={"probabilities": False},
        inputs=servable.TabularInputs(numeric=("temp",), categorical=("weathersit",)),
    )

    model_dir, pyfunc = served(record, tmp_path)

    assert pyfunc.predict(sample).tolist() == ["mist"] * 3  # type: ignore[attr-defined]
    answer = pyfunc.predict(sample, params={"probabilities": True})  # type: ignore[attr-defined]
    assert answer.columns.tolist() == [
        "class",
        "probability_clear",
        "probability_mist",
        "probability_rain",
    ]
    assert answer.iloc[0, 1:].tolist() == [0.2, 0.6, 0.2]
    loaded = load_trainer(trainer_path(model_dir))
    # loaded back, it scores as the gate scored it: the priors, rows x classes
    np.testing.assert_allclose(loaded.predict(sample), model.predict(sample))
    assert loaded.classes == ("clear", "mist", "rain")


def test_a_multiclass_baseline_without_its_class_labels_cannot_be_saved(tmp_path: Path):
    model = BaselineModel("multiclass", "accuracy", 3).fit(pd.DataFrame(), np.array([0.0, 2.0]))
    try:
        model.save(tmp_path / "trainer")
    except Exception as exc:
        assert "needs its class labels" in str(exc)
    else:
        raise AssertionError("a multiclass baseline without labels was saved")
