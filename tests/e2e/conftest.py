"""End-to-end fixtures: a real Prefect server (API and UI) in a subprocess, headless Chromium.

Nothing here uses Prefect's test harness: the server is ``prefect server start`` with its own
home and SQLite database, and everything that talks to it (the retrain CLI in a subprocess, the
browser, the test's own client) is pointed at it explicitly.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from flows.settings import ENV_OVERRIDES

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

BIN = Path(sys.executable).parent  # the virtualenv that runs pytest
CHROMIUM_ENV = "RETRAIN_TEST_CHROMIUM"  # another chromium binary, if not Debian's
SERVER_START_TIMEOUT = 120.0  # a first start copies the UI bundle and migrates the database
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
INSTALL_HINT = (
    "install Debian's chromium (`apt-get install -y chromium`) and playwright from PyPI "
    "(`.venv/bin/pip install playwright`, part of the dev extras); never `playwright install`"
)


def clean_environ() -> dict[str, str]:
    """This process's environment without Prefect settings or retrain spec overrides.

    A stray PREFECT_API_URL, PREFECT_HOME or RETRAIN_STATE_DIR in the caller's shell must not
    point a subprocess at another server or another state directory.
    """
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PREFECT_") and key not in ENV_OVERRIDES
    }


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no output)"
    return "\n".join(text.splitlines()[-lines:])


def stop_process_group(proc: subprocess.Popen[Any], grace: float = 15.0) -> None:
    """SIGTERM the process group started with ``start_new_session=True``, then SIGKILL it."""
    if proc.poll() is not None:
        return  # exited on its own (and reaped): its group id may belong to someone else now
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    # the leader may ignore SIGTERM, or leave children behind: kill what is left of the group
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class PrefectServer:
    url: str  # where the UI is served
    api_url: str
    log: Path

    def client_env(self, home: Path) -> dict[str, str]:
        """Environment for a process (the retrain CLI) that runs flows against this server."""
        home.mkdir(parents=True, exist_ok=True)
        return {
            **clean_environ(),
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_UI_URL": self.url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        }


def _wait_until_healthy(proc: subprocess.Popen[Any], server: PrefectServer) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while True:
        if proc.poll() is not None:
            pytest.fail(
                f"prefect server exited with {proc.returncode} before it was healthy:\n"
                + log_tail(server.log)
            )
        try:
            if httpx.get(f"{server.api_url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(
                f"prefect server not healthy within {SERVER_START_TIMEOUT:.0f}s:\n"
                + log_tail(server.log)
            )
        time.sleep(0.25)


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """``prefect server start`` on a free port with its own home and database; the UI it serves
    talks to that same API."""
    prefect = BIN / "prefect"
    if not prefect.exists():
        pytest.fail(f"{prefect} not found: install the project into the venv running pytest")
    root = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = PrefectServer(url=url, api_url=f"{url}/api", log=root / "server.log")
    env = {
        **clean_environ(),
        "PREFECT_HOME": str(root / "prefect-home"),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{root / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        # `--host/--port` do not reach the UI settings: without these the UI served at /ui-settings
        # would send the browser to PREFECT_API_URL or the default 127.0.0.1:4200
        "PREFECT_API_URL": server.api_url,
        "PREFECT_SERVER_UI_API_URL": server.api_url,
        "PREFECT_UI_URL": url,
        # the run page below is the v1 UI; make it the default too, and keep banners away
        "PREFECT_SERVER_UI_V2_ENABLED": "false",
        "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
    }
    with server.log.open("wb") as log:
        proc = subprocess.Popen(
            [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        _wait_until_healthy(proc, server)
        ui_settings = httpx.get(f"{url}/ui-settings", timeout=5.0).json()
        assert ui_settings["api_url"] == server.api_url, ui_settings
        yield server
    finally:
        stop_process_group(proc)


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what}: CI must provide it for the browser tests ({INSTALL_HINT})")
    pytest.skip(f"{what}; to run the browser tests, {INSTALL_HINT}")


@pytest.fixture(scope="session")
def chromium_executable() -> str:
    """Debian's chromium and the playwright package: skipped locally without them, failed in CI."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("playwright is not installed")
    path = os.environ.get(CHROMIUM_ENV) or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(path, os.X_OK):
        _missing(f"no chromium executable ({path})")
    return path


@pytest.fixture(scope="module")
def browser(chromium_executable: str) -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium_executable, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(30_000)
    try:
        yield context.new_page()
    finally:
        context.close()
