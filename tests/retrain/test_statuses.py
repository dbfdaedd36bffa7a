"""Modes and statuses are defined once; the ledger stores no other word."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from retrain import stateful, statuses
from retrain.errors import LedgerError
from retrain.ledger import Ledger
from retrain.statuses import (
    HOLDING,
    MODES,
    RUN_STATUSES,
    STATEFUL_MODES,
    live_run_mode,
    mode,
    run_status,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.migrate()
    return ledger


def test_the_modes_are_one_definition():
    assert MODES == ("manual", "scheduled", "stateful", "continual")
    assert set(STATEFUL_MODES) < set(MODES)
    assert set(HOLDING) < set(RUN_STATUSES)
    # retrain.stateful re-exports the same objects, it does not define its own
    assert stateful.Mode is statuses.Mode
    assert (stateful.MODES, stateful.STATEFUL_MODES) == (MODES, STATEFUL_MODES)


def test_no_module_defines_a_mode_or_status_literal_of_its_own():
    mode_words = re.compile(r"Literal\[\s*\"manual\",\s*\"scheduled\"")
    status_words = re.compile(r"Literal\[\s*\"running\",\s*\"suspended\"")
    defining = [
        str(path.relative_to(ROOT))
        for package in ("retrain", "registry", "flows", "gateway")
        for path in (ROOT / package).rglob("*.py")
        if mode_words.search(path.read_text()) or status_words.search(path.read_text())
    ]
    assert defining == ["retrain/statuses.py"]


def test_words_outside_the_sets_are_refused_with_the_allowed_ones():
    assert mode("continual") == "continual"
    assert run_status("live") == "live"
    assert live_run_mode("bandit") == "live-bandit"
    with pytest.raises(ValueError, match="'nightly' is not a retraining mode: one of manual, "):
        mode("nightly")
    with pytest.raises(ValueError, match="is not a live test's run mode"):
        live_run_mode("off")


def test_the_ledger_refuses_a_status_or_mode_it_does_not_know(ledger):
    with pytest.raises(LedgerError, match="'nightly' is not a run mode: one of manual, "):
        ledger.start_run("m", "nightly", "test")  # type: ignore[arg-type]
    run_id = ledger.start_run("m", "manual", "test")
    with pytest.raises(LedgerError, match="'succeeded' is not a run status: one of running, "):
        ledger.finish_run(run_id, "succeeded")  # type: ignore[arg-type]
    with pytest.raises(LedgerError, match="'done' is not a run status"):
        ledger.update_run(run_id, status="done")
    assert ledger.run(run_id).status == "running"  # nothing was written
    with pytest.raises(LedgerError, match="partition status 'bad' is not one of ok, quarantined"):
        ledger.record_partitions("m", [("2024-01-01", "fp", 3, "bad", None)])
    assert ledger.manifest("m") == []


def test_every_status_and_mode_is_stored_as_its_word(ledger):
    for word in (*MODES, live_run_mode("canary")):
        run_id = ledger.start_run("m", word, "test")
        assert ledger.run(run_id).mode == word
    for word in RUN_STATUSES:
        ledger.update_run(run_id, status=word)
        assert ledger.run(run_id).status == word
    with ledger.engine.connect() as conn:
        stored = conn.exec_driver_sql(
            "SELECT status, mode FROM retrain_runs WHERE id = ?", (run_id,)
        )
        assert tuple(stored.one()) == ("live", "live-canary")
