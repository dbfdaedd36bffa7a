"""A tracking server that does not answer: bounded retries, a clear error, no credentials."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from registry import ModelRegistry, RegistryError


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again: nothing listens there


@pytest.fixture
def hanging_up() -> Iterator[tuple[int, list[float]]]:
    """A port that accepts every connection and hangs up at once; the times of the attempts."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    attempts: list[float] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return  # closed at teardown
            attempts.append(time.monotonic())
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1], attempts
    server.close()


@pytest.fixture
def quick_retries(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


def test_an_unreachable_tracking_server_fails_after_bounded_retries_without_credentials(
    quick_retries, ledger
):
    uri = f"http://ops:s3cret@127.0.0.1:{dead_port()}"
    registry = ModelRegistry(uri, "bike", ledger)

    started = time.monotonic()
    with pytest.raises(RegistryError, match=r"does not answer \(gave up after its retries\)") as e:
        registry.alias_version("champion")

    assert time.monotonic() - started < 60
    assert "s3cret" not in str(e.value)
    assert "http://ops:***@127.0.0.1" in str(e.value)
    assert ledger.alias_history("bike") == []


def test_a_server_that_hangs_up_is_retried_a_bounded_number_of_times_with_backoff(
    quick_retries, hanging_up, ledger
):
    port, attempts = hanging_up
    registry = ModelRegistry(f"http://ops:s3cret@127.0.0.1:{port}", "bike", ledger)

    with pytest.raises(RegistryError, match=r"does not answer \(gave up after its retries\)") as e:
        registry.alias_version("champion")

    assert len(attempts) == 3  # the first try and MLFLOW_HTTP_REQUEST_MAX_RETRIES=2 retries
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    assert max(gaps) >= 1.0  # backoff factor 1: the second retry waits 2 s
    assert "s3cret" not in str(e.value)
    assert ledger.alias_history("bike") == []
