"""The example automations fire on a real ``prefect server start``: a retrain that fails calls
the notification webhook; a second failure of the same model pages only when no run succeeded
in between (a local HTTP server stands in for Slack and the pager)."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.automations import create_examples
from tests.conftest import spec_dict
from tests.flows.conftest import BIN, PrefectServer, tail

AS_OF = "2011-04-29"
FIRE_TIMEOUT = 120.0


class Hooks:
    """A tiny webhook receiver: the JSON bodies POSTed to each path."""

    def __init__(self) -> None:
        self.bodies: dict[str, list[dict[str, Any]]] = {}
        self.lock = threading.Lock()

    def wait_for(self, path: str, count: int, timeout: float = FIRE_TIMEOUT) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                got = list(self.bodies.get(path, []))
            if len(got) >= count:
                return got
            time.sleep(0.5)
        return got


@pytest.fixture
def hooks() -> Iterator[tuple[Hooks, str]]:
    received = Hooks()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with received.lock:
                received.bodies.setdefault(self.path, []).append(json.loads(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield received, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def cli_retrain(server: PrefectServer, spec_path: Path, log: Path, fails: bool = True) -> None:
    """``retrain run manual`` through the CLI against the server; it fails (or succeeds)."""
    done = subprocess.run(
        [str(BIN / "retrain"), "run", "manual", "--spec", str(spec_path), "--as-of", AS_OF],
        env=server.env(),
        cwd=spec_path.parent,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        timeout=300,
    )
    assert (done.returncode != 0) == fails, tail(log)


@pytest.mark.slow
def test_a_failed_retrain_notifies_and_only_a_second_failure_in_a_row_pages(
    live_server, hooks, tmp_path, bike_dir
):
    received, base = hooks
    with temporary_settings({PREFECT_API_URL: live_server.url}):
        made = create_examples(
            f"{base}/notify", f"{base}/page", model="bike-broken", within=timedelta(minutes=30)
        )
    assert {a.name for a in made} == {"retrain-notify", "retrain-page-failed-twice"}
    broken = tmp_path / "broken.yaml"  # a label the data does not have: the run fails
    broken.write_text(
        yaml.safe_dump(spec_dict(bike_dir, tmp_path / "state", name="bike-broken", label="rentals"))
    )
    working = tmp_path / "working.yaml"  # the same model with its real label: the run succeeds
    working.write_text(yaml.safe_dump(spec_dict(bike_dir, tmp_path / "state", name="bike-broken")))
    log = tmp_path / "cli.log"

    cli_retrain(live_server, broken, log)

    [notified] = received.wait_for("/notify", 1)
    assert notified["event"] == "retrain.model.failed"
    assert notified["model"] == "bike-broken"
    assert "'rentals' (label) missing from the source" in notified["why"]
    assert "/runs/flow-run/" in notified["flow_run_url"]

    cli_retrain(live_server, working, log, fails=False)  # a success ends the streak
    cli_retrain(live_server, broken, log)  # failed twice, but not in a row

    assert len(received.wait_for("/notify", 2)) == 2
    time.sleep(3)
    assert received.bodies.get("/page") is None  # neither failure paged

    cli_retrain(live_server, broken, log)  # the second failure in a row

    [paged] = received.wait_for("/page", 1)
    assert paged["model"] == "bike-broken"
    assert paged["failures_in_a_row"] == 2
    assert "failed 2 times in a row" in paged["page"]
    assert "rentals" in paged["last_error"]
    assert len(received.wait_for("/notify", 3)) == 3
