"""A ledger run holding its model's claim: what an error, a suspension and a normal end leave."""

from __future__ import annotations

from datetime import timedelta

import pytest
from prefect.exceptions import Pause

from flows.retrain_flow import holding_claim
from retrain.ledger import Ledger

STALE = timedelta(hours=1)


@pytest.fixture
def ledger(tmp_path) -> Ledger:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.migrate()
    return ledger


def claimed_run(ledger: Ledger) -> int:
    run_id = ledger.start_run("m", "manual", "test")
    assert ledger.claim_model("m", run_id, STALE) is None
    return run_id


def test_an_error_in_the_run_fails_it_with_the_error_and_frees_the_model(ledger):
    run_id = claimed_run(ledger)

    with pytest.raises(ValueError, match="bad input"), holding_claim(ledger, "m", run_id):
        raise ValueError("bad input")

    assert (ledger.run(run_id).status, ledger.run(run_id).error) == (
        "failed",
        "ValueError: bad input",
    )
    assert ledger.claim_model("m", ledger.start_run("m", "manual", "next"), STALE) is None


def test_a_suspended_run_keeps_its_claim_and_is_not_failed(ledger):
    run_id = claimed_run(ledger)
    paused: list[int] = []

    with pytest.raises(Pause), holding_claim(ledger, "m", run_id, lambda: paused.append(run_id)):
        raise Pause()

    assert paused == [run_id]
    assert ledger.run(run_id).status == "running"
    assert ledger.claim_model("m", ledger.start_run("m", "manual", "next"), STALE) == run_id


def test_a_run_that_ends_frees_the_model(ledger):
    run_id = claimed_run(ledger)

    with holding_claim(ledger, "m", run_id):
        ledger.finish_run(run_id, "promoted", promoted=True)

    assert ledger.claim_model("m", ledger.start_run("m", "manual", "next"), STALE) is None
