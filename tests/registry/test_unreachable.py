"""A tracking server that does not answer: bounded retries, a clear error, no credentials."""

from __future__ import annotations

import socket
import time

import pytest

from registry import ModelRegistry, RegistryError


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again: nothing listens there


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
