"""The continual mode end to end, on a real Prefect server (``live_server``, conftest.py).

Real Bike Sharing rows, re-dated so that the served monitor (which uses the wall clock) sees
them as recent: the days are made contiguous and the last one ends at today's midnight UTC.

    61 days   real 2011-06-01 .. 07-31   the champion's training window (summer)
    14 days   real 2011-08-01 .. 08-14   the champion's backtest holdout
    14 days   DRIFT: real 2011-12-01 .. 12-14 (a season change)
              STABLE: real 2011-08-15 .. 08-28 (more summer)

The champion is trained with ``retrain run manual --as-of <today - 14 days>``; ``retrain serve
--continual`` then runs the monitor every 5 s against the fresh data since the champion's
training end (its holdout + the last 14 days). Measured with the default thresholds (PSI 0.2,
Holm-adjusted alpha 0.01): with December, temp drifts (PSI 1.12, p ~ 0); with late August no
feature reaches PSI 0.2 (temp 0.13 is the largest).

DRIFT: a drift signal -> the ``retrain.model.retrain-requested`` event -> the automation of the
``<model>-continual`` deployment -> a continual retrain with the reasons as parameters -> a new
version with the reasons, the check id and the drift report. STABLE: no signal, no event, no
retrain (the STABLE scenario is in test_continual_stable_data.py: each file starts its own
server, so the two scenarios run in parallel).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterId,
)
from prefect.client.schemas.objects import StateType
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

from flows.monitor_flow import RETRAIN_EVENT
from registry import ModelRegistry
from retrain.config import load_spec
from retrain.ledger import Ledger
from tests.conftest import bike_slice, spec_dict
from tests.flows.conftest import (
    BIN,
    PrefectServer,
    client_of,
    completed_runs,
    read_deployment,
    start,
    stop,
)

SUMMER = ("2011-06-01", "2011-08-01")  # the champion's training window
HOLDOUT = ("2011-08-01", "2011-08-15")  # the champion's backtest
DECEMBER = ("2011-12-01", "2011-12-15")  # fresh data after a season change
LATE_AUGUST = ("2011-08-15", "2011-08-29")  # fresh data of the same season
FRESH_DAYS = 14
MONITOR_INTERVAL = 5
TRIGGER_TIMEOUT = 180
EVENT_TIMEOUT = 30
# the client's default page (100) is more than the server accepts (at most 50)
EVENT_PAGE = 50


def today_utc() -> pd.Timestamp:
    """Today's midnight UTC, as a naive timestamp (the data's time zone)."""
    return pd.Timestamp.now(tz="UTC").normalize().tz_localize(None)


def redated(
    frame: pd.DataFrame, segments: list[tuple[str, str]], end: pd.Timestamp
) -> list[pd.DataFrame]:
    """The rows of each segment, moved so that the segments' days follow each other without a
    gap and the last day ends at ``end`` (``dteday`` rewritten, ``hr`` kept)."""
    days = [(pd.Timestamp(b) - pd.Timestamp(a)).days for a, b in segments]
    cursor = end - pd.Timedelta(days=sum(days))
    out = []
    for (first, last), length in zip(segments, days, strict=True):
        rows = bike_slice(frame, first, last)
        day = pd.to_datetime(rows["dteday"])
        assert day.nunique() == length, f"{first}..{last} misses days in the bike data"
        moved = day + (cursor - pd.Timestamp(first))
        out.append(rows.assign(dteday=moved.dt.strftime("%Y-%m-%d")))
        cursor += pd.Timedelta(days=length)
    return out


def write_scenario(
    tmp_path: Path, bike_hourly: pd.DataFrame, name: str, fresh: tuple[str, str]
) -> tuple[Path, str]:
    """Data and spec of one scenario; returns the spec path and the champion's ``--as-of``."""
    folder = tmp_path / "data"
    folder.mkdir()
    today = today_utc()
    parts = redated(bike_hourly, [SUMMER, HOLDOUT, fresh], today)
    for label, part in zip(("summer", "holdout", "fresh"), parts, strict=True):
        part.to_csv(folder / f"{label}.csv", index=False)
    spec = spec_dict(
        folder,
        tmp_path / "state",
        **{
            "name": name,
            "windows.train": "61D",
            "windows.holdout": "14D",
            "monitor.any": ["drift"],
            "monitor.max_age": "365D",
            "monitor.min_new_rows": 1_000_000,
            # one triggered retrain per scenario: a second one within the hour is refused
            "monitor.cooldown": "1h",
            "gate.require_approval": False,
        },
    )
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    as_of = today - pd.Timedelta(days=FRESH_DAYS)
    return path, f"{as_of:%Y-%m-%d}"


def train_champion(server: PrefectServer, spec_path: Path, as_of: str, cwd: Path) -> None:
    """``retrain run manual`` against the live server: version 1, the champion."""
    done = subprocess.run(
        [
            str(BIN / "retrain"),
            "run",
            "manual",
            "--spec",
            str(spec_path),
            "--as-of",
            as_of,
            "--auto-approve",
        ],
        env=server.env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    spec = load_spec(spec_path)
    registry = ModelRegistry(spec.state.tracking, spec.name, Ledger(spec.state.ledger))
    assert registry.alias_version("champion") == "1", done.stdout
    tags = registry.version("1").tags
    # the champion learnt on the 61 summer days only; its holdout is the real Aug 1-14
    end = pd.Timestamp(as_of) - pd.Timedelta(days=14)
    assert pd.Timestamp(tags["retrain.window_end"]) == end
    assert pd.Timestamp(tags["retrain.window_start"]) == end - pd.Timedelta(days=61)


def serve_continual(server: PrefectServer, spec_path: Path, tmp_path: Path):
    log = tmp_path / "serve.log"
    env = {**server.env(), "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    command = [
        str(BIN / "retrain"),
        "serve",
        "--spec",
        str(spec_path),
        "--continual",
        "--monitor-interval",
        str(MONITOR_INTERVAL),
        "--interval",
        "3600",  # the scheduled retrain stays out of the way
    ]
    return start(command, env, log, tmp_path), log


def stored_events(server: PrefectServer, event: str, resource: str) -> list:
    """The events named ``event`` about ``resource`` that the server has stored."""
    with client_of(server) as client:
        page = client.read_events(
            filter=EventFilter(
                event=EventNameFilter(name=[event]),
                resource=EventResourceFilter(id=[resource]),
            ),
            limit=EVENT_PAGE,
        )
    return list(page.events)


def retrain_events(server: PrefectServer, model: str) -> list:
    return stored_events(server, RETRAIN_EVENT, f"retrain.model.{model}")


def wait_for(what: str, probe, timeout: float = EVENT_TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not found within {timeout:g} s")
        time.sleep(1)


def runs_of(server: PrefectServer, deployment_id) -> list:
    with client_of(server) as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id])
            )
        )


@pytest.mark.slow
def test_a_season_change_triggers_a_continual_retrain_through_a_prefect_event(
    live_server, tmp_path, bike_hourly
):
    name = "bike-drift"
    spec_path, as_of = write_scenario(tmp_path, bike_hourly, name, DECEMBER)
    train_champion(live_server, spec_path, as_of, tmp_path)
    started = time.monotonic()
    serve, serve_log = serve_continual(live_server, spec_path, tmp_path)
    try:
        continual = read_deployment(live_server, f"retrain/{name}-continual")
        scheduled = read_deployment(live_server, f"retrain/{name}-scheduled")
        [run, *_] = completed_runs(
            live_server, continual.id, serve_log, serve, timeout=TRIGGER_TIMEOUT
        )
        triggered_after = time.monotonic() - started
        stop(serve)
        [event] = wait_for(
            f"the {RETRAIN_EVENT} event of {name}", lambda: retrain_events(live_server, name)
        )
        with client_of(live_server) as client:
            [automation] = client.read_automations_by_name(f"{name} retrain requested")
            [run] = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
            )
        [action] = wait_for(
            f"the executed action of automation {automation.name!r}",
            lambda: stored_events(
                live_server,
                "prefect.automation.action.executed",
                f"prefect.automation.{automation.id}",
            ),
        )
        continual_runs = runs_of(live_server, continual.id)
        scheduled_runs = runs_of(live_server, scheduled.id)
    finally:
        stop(serve)

    spec = load_spec(spec_path)
    ledger = Ledger(spec.state.ledger)
    checks = ledger.recent_checks(name, limit=1000)
    triggering = [c for c in checks if c["retrain"]]
    assert len(triggering) == 1, [(c["id"], c["reasons"]) for c in checks]
    [check] = triggering
    check_id = str(check["id"])

    # the monitor's check: a drift signal on the real season change, stored in the ledger
    assert "drift" in check["fired"].split(",")
    assert check["champion_version"] == "1"
    assert check["reasons"] == "drift: drift in temp"
    drift = [s for s in ledger.signal_history(name, "drift") if str(s["check_id"]) == check_id]
    assert {s["feature"] for s in drift if s["fired"]} == {"temp"}
    [temp] = [s for s in drift if s["feature"] == "temp"]
    assert temp["value"] > 1.0 and temp["p_value"] < spec.monitor.alpha
    # later checks are cooling down: one event, one retrain
    later = [c for c in checks if c["id"] > check["id"]]
    assert all("cooling down" in c["reasons"] for c in later), [c["reasons"] for c in later]

    # the event, typed, on the model's resource, with the reasons and the signal values
    assert event.event == RETRAIN_EVENT
    assert event.resource.id == f"retrain.model.{name}"
    assert event.payload["check_id"] == check_id
    assert event.payload["reasons"] == ["drift: drift in temp"]
    assert event.payload["reason"] == "continual trigger: drift: drift in temp"
    assert event.payload["champion_version"] == "1"
    assert event.payload["signals"]["drift:temp"] == pytest.approx(temp["value"], abs=1e-5)

    # the continual deployment's automation started the run, with the event's payload rendered
    assert [r.id for r in continual_runs] == [run.id]
    assert automation.actions[0].type == "run-deployment"
    assert automation.actions[0].deployment_id == continual.id
    related = {r.id: r.role for r in action.related}
    assert related[f"prefect.event.{event.id}"] == "triggering-event"
    assert related[f"prefect.flow-run.{run.id}"] == "flow-run"
    assert run.state_type == StateType.COMPLETED
    assert run.created_by is not None
    assert (run.created_by.type, run.created_by.id) == ("AUTOMATION", automation.id)
    assert run.parameters == {
        "spec_path": str(spec_path),
        "mode": "continual",
        "reason": "continual trigger: drift: drift in temp",
        "as_of": "",
        "trigger_check": check_id,
        "actor": "monitor",
        "auto_approve": True,
    }
    assert scheduled_runs == [] or all(r.state_type == StateType.SCHEDULED for r in scheduled_runs)

    # the retrain it ran: ledger and registry carry the reasons and the check
    [retrain] = [r for r in ledger.runs(name, limit=100) if r.mode == "continual"]
    assert retrain.reason == "continual trigger: drift: drift in temp"
    assert retrain.actor == "monitor"
    assert retrain.status in {"promoted", "rejected"}
    registry = ModelRegistry(spec.state.tracking, name, ledger)
    assert [v.version for v in registry.versions()] == ["1", "2"]
    assert retrain.model_version == "2"
    [challenger] = [
        row
        for row in ledger.alias_history(name)
        if row["alias"] == "challenger" and row["to_version"] == "2"
    ]
    assert challenger["flow_run_id"] == str(run.id)
    version = registry.version("2")
    assert version.tags["retrain.mode"] == "continual"
    assert version.tags["retrain.reason"] == "continual trigger: drift: drift in temp"
    assert version.tags["retrain.trigger_check"] == check_id
    assert version.tags["retrain.actor"] == "monitor"
    assert version.tags["retrain.strategy"] == "warm"
    assert version.tags["retrain.parent_version"] == "1"
    evidence = {f.path for f in registry.client.list_artifacts(version.run_id, "evidence")}
    assert f"evidence/drift-check-{check_id}.png" in evidence
    print(
        f"continual retrain completed {triggered_after:.0f} s after `retrain serve` started "
        f"({len(checks)} monitor checks; version 2 {retrain.status})"
    )
