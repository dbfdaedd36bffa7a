"""Where model events go: to the configured server, or nowhere when no server can listen."""

from __future__ import annotations

from typing import Any

from prefect.settings import PREFECT_API_URL, temporary_settings

from flows import events


def recorded(monkeypatch) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(events, "emit_event", lambda **kwargs: sent.append(kwargs) or kwargs)
    return sent


def test_outside_a_run_without_a_prefect_server_no_event_is_sent(monkeypatch):
    sent = recorded(monkeypatch)

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        events.rolled_back("bike", "2", "1", "oncall", "complaints")

    assert sent == []  # emitting would start Prefect's temporary server for nobody


def test_with_a_prefect_server_the_event_names_the_model_as_its_resource(monkeypatch):
    sent = recorded(monkeypatch)

    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:4200/api"}):
        events.refused("bike", "7", "gate failed: worse than the champion", {"metric": "mae"})

    [event] = sent
    assert event["event"] == "retrain.model.refused"
    assert event["resource"] == {
        "prefect.resource.id": "retrain.model.bike",
        "prefect.resource.name": "bike",
    }
    assert event["payload"] == {
        "metric": "mae",
        "version": "7",
        "reason": "gate failed: worse than the champion",
    }
