"""``retrain rollback`` announces itself: a ``retrain.model.rolled-back`` event on the model."""

from __future__ import annotations

import time
from typing import Any

import httpx
import yaml
from prefect.settings import PREFECT_API_URL
from typer.testing import CliRunner

from flows.cli import app
from flows.retrain_flow import retrain_flow
from tests.conftest import spec_dict

runner = CliRunner()


def events_of(resource: str, name: str, timeout: float = 60.0) -> list[dict[str, Any]]:
    query = {"filter": {"event": {"name": [name]}, "resource": {"id": [resource]}}, "limit": 10}
    deadline = time.monotonic() + timeout
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not found:
        response = httpx.post(f"{PREFECT_API_URL.value()}/events/filter", json=query)
        response.raise_for_status()
        found = response.json()["events"]
        time.sleep(0.5)
    return found


def test_a_rollback_is_an_event_naming_both_versions_who_and_why(tmp_path, bike_dir):
    spec = tmp_path / "spec.yaml"
    values = spec_dict(
        bike_dir, tmp_path / "state", name="bike-rollback", **{"gate.tolerance": 0.5}
    )
    spec.write_text(yaml.safe_dump(values))
    for as_of in ("2011-04-22", "2011-04-29"):
        assert retrain_flow(str(spec), as_of=as_of, auto_approve=True)["promoted"]

    rolled = runner.invoke(
        app,
        [
            "rollback",
            "bike-rollback",
            "--spec",
            str(spec),
            "--actor",
            "oncall",
            "--reason",
            "complaints",
        ],
    )

    assert rolled.exit_code == 0, rolled.output
    [event] = events_of("retrain.model.bike-rollback", "retrain.model.rolled-back")
    assert event["payload"] == {
        "from_version": "2",
        "to_version": "1",
        "actor": "oncall",
        "reason": "complaints",
    }
