"""Fixtures of the flow tests: the session's test harness, and a real ``prefect server start``.

``prefect_server`` (autouse) gives every in-process flow run a temporary Prefect server. The
slow tests that need the real thing use ``live_server``: their own ``prefect server start`` on a
fresh SQLite database (not the session's test harness), reached only through subprocesses given
PREFECT_API_URL explicitly, and through a Prefect client pointed at it (``client_of``).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect import get_client
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import Artifact, FlowRun, StateType

BIN = Path(sys.executable).parent
SERVER_START_TIMEOUT = 180
FIRE_TIMEOUT = 180


@pytest.fixture(scope="session", autouse=True)
def prefect_server(prefect_harness: None) -> None:
    """A real (temporary) Prefect server and database for every flow test: the test
    process's ``prefect_harness`` (tests/conftest.py)."""


def run_flow(flow: Any, *args: Any, **kwargs: Any) -> tuple[Any, UUID]:
    """Call ``flow`` in process; its return value and the id of the flow run it made."""
    state = flow(*args, return_state=True, **kwargs)
    return state.result(), state.state_details.flow_run_id


def artifacts_of(flow_run_id: UUID, key: str) -> list[Artifact]:
    """The artifacts with ``key`` that this one flow run created.

    Keys are per model, and the session's server holds every earlier test's runs of a model of
    the same name: reading by key alone can return another test's artifact (seen in CI).
    """
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
            )
        )


# --- a real Prefect server in a subprocess ------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env(home: Path) -> dict[str, str]:
    """This environment without any PREFECT_* variable (the test harness's included)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="INFO",
    )
    return env


def start(command: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        command,
        env=env,
        cwd=cwd,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: teardown kills its children too
    )


def stop(process: subprocess.Popen, grace: float = 30) -> None:
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):  # flow run subprocesses left in the group
        os.killpg(process.pid, signal.SIGKILL)


def tail(log: Path, lines: int = 60) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


class PrefectServer:
    def __init__(self, url: str, home: Path, log: Path) -> None:
        self.url = url
        self.home = home
        self.log = log

    def env(self) -> dict[str, str]:
        return {**base_env(self.home), "PREFECT_API_URL": self.url}


@contextlib.contextmanager
def prefect_server_on(root: Path, database_url: str) -> Iterator[PrefectServer]:
    """``prefect server start`` on a free port and the database ``database_url`` (a SQLAlchemy
    async URL: ``sqlite+aiosqlite:///...`` or ``postgresql+asyncpg://...``); stopped after."""
    port = free_port()
    env = base_env(root / "home")
    env.update(PREFECT_API_DATABASE_CONNECTION_URL=database_url, PREFECT_UI_ENABLED="false")
    log = root / "server.log"
    process = start(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env,
        log,
        root,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"prefect server start exited with {process.returncode}:\n{tail(log)}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the Prefect server did not answer within {SERVER_START_TIMEOUT} s")
            time.sleep(0.5)
        yield PrefectServer(url, root / "home", log)
    finally:
        stop(process)


@pytest.fixture(scope="module")
def live_server(tmp_path_factory) -> Iterator[PrefectServer]:
    """``prefect server start`` on a free port and a fresh SQLite database (one per module)."""
    root = tmp_path_factory.mktemp("prefect-server")
    with prefect_server_on(root, f"sqlite+aiosqlite:///{root / 'prefect.db'}") as server:
        yield server


def client_of(server: PrefectServer) -> SyncPrefectClient:
    """A Prefect client of ``server`` (not of the session's test harness)."""
    return SyncPrefectClient(server.url)


def read_deployment(server: PrefectServer, name: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    with client_of(server) as client:
        while True:
            try:
                return client.read_deployment_by_name(name)
            except Exception:  # ObjectNotFound until `serve` has registered it
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)


def running_intervals(histories: dict[str, list]) -> list[tuple[datetime.datetime, Any, str]]:
    """(entered Running, left Running, run name) of every run that ran; still running: no end."""
    far = datetime.datetime.max.replace(tzinfo=datetime.UTC)
    intervals = []
    for name, states in histories.items():
        ordered = sorted(states, key=lambda state: state.timestamp)
        for i, state in enumerate(ordered):
            if state.type == StateType.RUNNING:
                left = [s.timestamp for s in ordered[i + 1 :] if s.type != StateType.RUNNING]
                intervals.append((state.timestamp, left[0] if left else far, name))
    return intervals


def completed_runs(
    server: PrefectServer,
    deployment_id,
    serve_log: Path,
    process: subprocess.Popen,
    count: int = 1,
    timeout: float = FIRE_TIMEOUT,
) -> list[FlowRun]:
    """Wait (bounded) until ``count`` flow runs of the deployment are Completed; fail as soon as
    one fails or crashes, or the serving process exits."""
    deadline = time.monotonic() + timeout
    with client_of(server) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"retrain serve exited with {process.returncode}:\n{tail(serve_log)}")
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]),
                    state=FlowRunFilterState(
                        type=FlowRunFilterStateType(
                            any_=[StateType.COMPLETED, StateType.FAILED, StateType.CRASHED]
                        )
                    ),
                )
            )
            bad = [r for r in runs if r.state_type != StateType.COMPLETED]
            if bad:
                pytest.fail(f"flow run {bad[0].name} ended {bad[0].state_type}:\n{tail(serve_log)}")
            if len(runs) >= count:
                return runs
            time.sleep(2)
    pytest.fail(
        f"fewer than {count} run(s) of the deployment completed within {timeout:g} s:\n"
        f"{tail(serve_log)}"
    )


def completed_run(server: PrefectServer, deployment_id, serve_log: Path, process) -> FlowRun:
    """The first Completed flow run of the deployment (bounded wait; fails on a failed one)."""
    return completed_runs(server, deployment_id, serve_log, process)[0]
