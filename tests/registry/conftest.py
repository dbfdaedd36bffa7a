from __future__ import annotations

import uuid
from pathlib import Path

import pandas as pd
import pytest

from registry import CandidateRecord, ModelRegistry
from retrain.ledger import Ledger
from retrain.trainers import LightGBMTrainer
from tests.conftest import bike_slice

FEATURES = ["temp", "hum", "hr", "weathersit"]


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One real MLflow tracking + registry store on SQLite for the session (migrating is slow)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.migrate()
    return ledger


@pytest.fixture
def registry(tracking_uri: str, ledger: Ledger, tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(
        tracking_uri, f"reg-{uuid.uuid4().hex[:8]}", ledger, artifact_root=tmp_path / "artifacts"
    )


@pytest.fixture(scope="session")
def small_frame(bike_hourly: pd.DataFrame) -> pd.DataFrame:
    return bike_slice(bike_hourly, "2011-03-01", "2011-03-15")


@pytest.fixture(scope="session")
def fitted(small_frame: pd.DataFrame) -> LightGBMTrainer:
    X = small_frame[FEATURES].assign(weathersit=small_frame["weathersit"].astype(str))
    return LightGBMTrainer(num_boost_round=10, categorical=["weathersit"]).fit(
        X, small_frame["cnt"]
    )


@pytest.fixture
def make_record(fitted: LightGBMTrainer, tmp_path: Path, small_frame: pd.DataFrame):
    sample = small_frame[FEATURES].head(5).assign(weathersit=lambda f: f["weathersit"].astype(str))

    def make(**tags: str) -> CandidateRecord:
        model_dir = fitted.save(tmp_path / f"model-{uuid.uuid4().hex[:6]}")
        plot = tmp_path / "backtest.csv"
        plot.write_text("model,mae\ncandidate,1.0\n")
        return CandidateRecord(
            model_dir=model_dir,
            description="manual retrain: test",
            params={"num_boost_round": 10, "learning_rate": 0.1},
            metrics={"backtest_mae": 12.5, "baseline_mae": 40.0},
            version_tags={"retrain.mode": "manual", "retrain.data_version": "dv-test", **tags},
            artifacts={"backtest_table": plot},
            curves={"train_l2": [3.0, 2.0, 1.5]},
            sample=sample,
        )

    return make
