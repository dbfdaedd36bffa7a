"""The CLI bounds MLflow's retries when the tracking server does not answer: the run fails in
seconds, recorded as failed, instead of MLflow's default of 7 retries over minutes."""

from __future__ import annotations

import socket
import threading
import time

import yaml
from typer.testing import CliRunner

from flows.cli import app
from retrain.config import load_spec
from retrain.ledger import Ledger
from tests.conftest import spec_dict

RETRY_ENV = (
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
)


def test_a_run_against_a_server_that_hangs_up_gives_up_after_the_clis_bounded_retries(
    tmp_path, bike_dir, monkeypatch
):
    for name in RETRY_ENV:
        monkeypatch.delenv(name, raising=False)  # the CLI's defaults, not the test's
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    attempts: list[float] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            attempts.append(time.monotonic())
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    uri = f"http://127.0.0.1:{server.getsockname()[1]}"
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(
        yaml.safe_dump(spec_dict(bike_dir, tmp_path / "state", **{"state.tracking_uri": uri}))
    )
    try:
        result = CliRunner().invoke(
            app, ["run", "manual", "--spec", str(spec_path), "--as-of", "2011-04-29"]
        )
    finally:
        server.close()

    assert result.exit_code == 7, result.output  # infrastructure down
    assert "does not answer" in " ".join(result.output.split())
    assert len(attempts) == 4  # 1 try + the CLI's MLFLOW_HTTP_REQUEST_MAX_RETRIES=3
    assert attempts[-1] - attempts[0] >= 3.0  # with backoff between them (2 s, then 4 s)
    [run] = Ledger(load_spec(spec_path).state.ledger).runs("bike-test")
    assert run.status == "failed" and "does not answer" in (run.error or "")
