"""Fixtures of the gateway tests: a real MLflow registry with versions, and `retrain gateway`
started as a process on a free port (stopped with SIGTERM, or killed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import yaml

from registry import CandidateRecord, ModelRegistry
from registry.client import GATE_TAG
from retrain.ledger import Ledger
from retrain.promotion import automatic_approval, decide
from retrain.trainers import ALSTrainer, LightGBMTrainer
from tests.conftest import als_spec_dict, bike_slice, spec_dict, taste_stream

BIN = Path(sys.executable).parent
FEATURES = ["temp", "hum", "hr", "weathersit"]
START_TIMEOUT = 120


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def gw_tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('gw-mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="session")
def train_frame(bike_hourly: pd.DataFrame) -> pd.DataFrame:
    return bike_slice(bike_hourly, "2011-03-01", "2011-04-01")


def features(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[FEATURES].assign(weathersit=frame["weathersit"].astype(str))


def source_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as a client sends them: JSON values, the categorical code as a string."""
    return json.loads(features(frame).to_json(orient="records"))


class Models:
    """One registered model with a helper to add versions (gate passed) and promote them."""

    def __init__(self, registry: ModelRegistry, frame: pd.DataFrame, workdir: Path) -> None:
        self.registry = registry
        self.frame = frame
        self.workdir = workdir

    def add(self, rounds: int, gate: str = "passed", leaves: int = 15) -> str:
        trainer = LightGBMTrainer(
            num_boost_round=rounds, categorical=["weathersit"], params={"num_leaves": leaves}
        ).fit(features(self.frame), self.frame["cnt"])
        model_dir = trainer.save(self.workdir / f"model-{uuid.uuid4().hex[:6]}")
        record = CandidateRecord(
            model_dir=model_dir,
            description="gateway test",
            params={"num_boost_round": rounds},
            metrics={},
            version_tags={GATE_TAG: gate, "retrain.mode": "manual"},
            sample=features(self.frame).head(5),
        )
        return self.registry.register_candidate(record, actor="test")

    def promote(self, version: str) -> None:
        decision = decide(
            version=version,
            gate_passed=True,
            gate_reasons=("test",),
            approval=automatic_approval("test"),
        )
        self.registry.record_decision(decision)
        self.registry.promote(decision, actor="test")


class ALSModels(Models):
    """One registered ALS model over ``taste_stream`` interactions (ids as strings, as ingest
    keeps them); ``add`` fits a version with ``factors`` and ``iterations``."""

    def add(
        self, rounds: int, gate: str = "passed", leaves: int = 8, shuffled: bool = False
    ) -> str:
        """``shuffled``: fit on the interactions with the users permuted (a model that learned
        nobody's taste)."""
        frame = self.frame
        if shuffled:
            users = frame["user"].sample(frac=1.0, random_state=1).to_numpy()
            frame = frame.assign(user=users)
        trainer = ALSTrainer(
            factors=leaves, iterations=rounds, min_rating=3, popularity_window="10D"
        ).fit(frame)
        model_dir = trainer.save(self.workdir / f"als-{uuid.uuid4().hex[:6]}")
        record = CandidateRecord(
            model_dir=model_dir,
            description="gateway test (als)",
            params={"iterations": rounds, "factors": leaves},
            metrics={},
            version_tags={GATE_TAG: gate, "retrain.mode": "manual"},
            sample=pd.DataFrame({"user": ["0", "1"]}),
            family="als",
            predict_params={"k": 5},
        )
        return self.registry.register_candidate(record, actor="test")


def taste_interactions() -> pd.DataFrame:
    """``taste_stream`` as the trainer takes it: user, item (strings), weight, ts."""
    raw = taste_stream(days=20)
    return pd.DataFrame(
        {
            "user": raw["userId"].astype(str),
            "item": raw["movieId"].astype(str),
            "weight": raw["rating"],
            "ts": pd.to_datetime(raw["timestamp"], unit="s"),
        }
    )


@pytest.fixture
def make_als_models(
    gw_tracking_uri: str, gw_ledger: Ledger, tmp_path: Path
) -> Callable[[], ALSModels]:
    frame = taste_interactions()

    def make() -> ALSModels:
        return ALSModels(
            new_registry(gw_tracking_uri, gw_ledger, tmp_path, "gw-als"), frame, tmp_path
        )

    return make


def new_registry(tracking_uri: str, ledger: Ledger, tmp_path: Path, prefix: str) -> ModelRegistry:
    """A registered model of its own (a fresh name) in the session's MLflow store."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    return ModelRegistry(tracking_uri, name, ledger, artifact_root=tmp_path / "artifacts")


def spec_file(tmp_path: Path, models: Models, data: dict[str, Any], live: dict[str, Any]) -> Path:
    """``data`` as the spec of ``models``' registry, with ``live`` (a 1 s alias poll)."""
    data["name"] = models.registry.model_name
    data["state"]["tracking_uri"] = models.registry.tracking_uri
    data["state"]["ledger_url"] = models.registry.ledger.url
    data["live"] = {"poll": "1s", **live}
    path = tmp_path / f"{models.registry.model_name}.yaml"
    path.write_text(yaml.safe_dump(json.loads(json.dumps(data, default=str))))
    return path


def write_als_spec(tmp_path: Path, models: Models, live: dict[str, Any]) -> Path:
    return spec_file(tmp_path, models, als_spec_dict(tmp_path / "data", tmp_path / "state"), live)


@pytest.fixture
def gw_ledger(tmp_path: Path) -> Ledger:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.migrate()
    return ledger


@pytest.fixture
def make_models(
    gw_tracking_uri: str, gw_ledger: Ledger, tmp_path: Path, train_frame: pd.DataFrame
) -> Callable[[], Models]:
    def make() -> Models:
        return Models(
            new_registry(gw_tracking_uri, gw_ledger, tmp_path, "gw"), train_frame, tmp_path
        )

    return make


def write_spec(tmp_path: Path, models: Models, live: dict[str, Any], **overrides: Any) -> Path:
    data = spec_dict(tmp_path / "data", tmp_path / "state", **overrides)
    data["features"] = {"numeric": ["temp", "hum", "hr"], "categorical": ["weathersit"]}
    return spec_file(tmp_path, models, data, live)


class GatewayProcess:
    def __init__(self, specs: list[Path], workdir: Path) -> None:
        self.specs = specs
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"gateway-{self.port}.log"
        self.process: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> GatewayProcess:
        command = [str(BIN / "retrain"), "gateway", "--port", str(self.port)]
        for spec in self.specs:
            command += ["--spec", str(spec)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        self.process = subprocess.Popen(
            command,
            cwd=self.workdir,
            env=env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"the gateway exited with {self.process.returncode}:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        pytest.fail(f"the gateway was not ready within {START_TIMEOUT} s:\n{self.tail()}")

    def tail(self, lines: int = 60) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        os.killpg(self.process.pid, sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait(timeout=10)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    started: list[GatewayProcess] = []

    def run(*specs: Path, wait: bool = True) -> GatewayProcess:
        process = GatewayProcess(list(specs), tmp_path).start(wait=wait)
        started.append(process)
        return process

    yield run
    for process in started:
        process.stop(signal.SIGKILL)
