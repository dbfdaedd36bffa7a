"""The continual mode end to end on stable data: no drift signal, no event, no retrain.

The STABLE scenario of test_continual_e2e.py (its docstring tells the data and the thresholds),
in a file of its own so that it runs beside the DRIFT scenario (each file starts its own
``live_server``).
"""

from __future__ import annotations

import pytest

from registry import ModelRegistry
from retrain.config import load_spec
from retrain.ledger import Ledger
from tests.flows.conftest import completed_runs, read_deployment, stop, tail
from tests.flows.test_continual_e2e import (
    LATE_AUGUST,
    TRIGGER_TIMEOUT,
    retrain_events,
    runs_of,
    serve_continual,
    stored_events,
    train_champion,
    wait_for,
    write_scenario,
)


@pytest.mark.slow
def test_stable_data_triggers_no_retrain(live_server, tmp_path, bike_hourly):
    name = "bike-stable"
    spec_path, as_of = write_scenario(tmp_path, bike_hourly, name, LATE_AUGUST)
    train_champion(live_server, spec_path, as_of, tmp_path)
    serve, serve_log = serve_continual(live_server, spec_path, tmp_path)
    try:
        monitor = read_deployment(live_server, f"retrain-monitor/{name}-monitor")
        continual = read_deployment(live_server, f"retrain/{name}-continual")
        monitored = completed_runs(
            live_server, monitor.id, serve_log, serve, count=2, timeout=TRIGGER_TIMEOUT
        )
        stop(serve)
        # the server has stored the events up to the end of these runs
        for done in monitored:
            wait_for(
                f"the Completed event of monitor run {done.name}",
                lambda done=done: stored_events(
                    live_server, "prefect.flow-run.Completed", f"prefect.flow-run.{done.id}"
                ),
            )
        events = retrain_events(live_server, name)
        continual_runs = runs_of(live_server, continual.id)
    finally:
        stop(serve)

    spec = load_spec(spec_path)
    ledger = Ledger(spec.state.ledger)
    checks = ledger.recent_checks(name, limit=1000)
    by_run = {c["flow_run_id"]: c for c in checks}
    assert {str(r.id) for r in monitored} <= set(by_run), tail(serve_log)
    for done in monitored:
        check = by_run[str(done.id)]
        assert check["retrain"] is False
        assert check["reasons"] == "no rule fired"
        assert check["champion_version"] == "1"
        assert "drift" not in (check["fired"] or "").split(",")
        drift = [s for s in ledger.signal_history(name, "drift") if s["check_id"] == check["id"]]
        # every feature was tested, none drifted
        assert {s["feature"] for s in drift} == set(spec.features.columns)
        assert not any(s["fired"] for s in drift)
    assert all(not c["retrain"] for c in checks)
    assert events == []
    assert continual_runs == []
    registry = ModelRegistry(spec.state.tracking, name, ledger)
    assert [v.version for v in registry.versions()] == ["1"]
    assert registry.alias_version("champion") == "1"
