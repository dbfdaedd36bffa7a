from __future__ import annotations

import dataclasses
import doctest

import pytest

from retrain import promotion
from retrain.promotion import Approval, automatic_approval, decide, needs_operator

APPROVE = Approval(approved=True, approver="ana", comment="ship it")
REJECT = Approval(approved=False, approver="bo", comment="label drift, wait")


def test_a_failed_gate_never_promotes_even_with_an_approval():
    decision = decide(
        version="4",
        gate_passed=False,
        gate_reasons=("worse than the champion", "does not beat the baseline"),
        approval=APPROVE,
    )

    assert not decision.promote
    assert not decision.approved
    assert decision.approver is None
    assert decision.reason == "gate failed: worse than the champion; does not beat the baseline"


def test_a_passed_gate_and_a_rejection_does_not_promote_and_names_who_rejected():
    decision = decide(version="4", gate_passed=True, gate_reasons=(), approval=REJECT)

    assert not decision.promote
    assert decision.gate_passed and not decision.approved
    assert decision.reason == "gate passed; rejected by bo: label drift, wait"


def test_a_passed_gate_and_an_approval_promotes():
    decision = decide(version="4", gate_passed=True, gate_reasons=(), approval=APPROVE)

    assert decision.promote
    assert (decision.version, decision.approver, decision.comment) == ("4", "ana", "ship it")
    assert not decision.automatic


def test_a_passed_gate_without_any_approval_does_not_promote():
    decision = decide(version="4", gate_passed=True, gate_reasons=(), approval=None)

    assert not decision.promote
    assert decision.reason == "gate passed but nobody approved the promotion"


def test_an_automatic_approval_promotes_and_says_it_was_automatic():
    decision = decide(
        version="5", gate_passed=True, gate_reasons=(), approval=automatic_approval("scheduler")
    )

    assert decision.promote
    assert decision.automatic
    assert decision.approver == "scheduler"
    assert decision.reason == "gate passed; approved automatically"


def test_decisions_are_frozen():
    decision = decide(version="4", gate_passed=True, gate_reasons=(), approval=APPROVE)

    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.promote = False  # type: ignore[misc]


@pytest.mark.parametrize(
    ("gate_passed", "require_approval", "auto_approve", "expected"),
    [
        (True, True, False, True),
        (True, True, True, False),
        (True, False, False, False),
        (True, False, True, False),
        (False, True, False, False),
        (False, True, True, False),
        (False, False, False, False),
        (False, False, True, False),
    ],
)
def test_an_operator_is_asked_only_for_a_passed_gate_when_approval_is_required_and_not_automatic(
    gate_passed, require_approval, auto_approve, expected
):
    assert needs_operator(gate_passed, require_approval, auto_approve) is expected


def test_the_examples_in_the_promotion_docstrings_hold():
    result = doctest.testmod(promotion, verbose=False)

    assert result.attempted >= 4
    assert result.failed == 0


@pytest.mark.parametrize(
    ("timeout", "in_deployment", "expected"),
    [
        (86_400, True, "suspend"),  # a day's wait of a deployment run: no process waits
        (86_400, False, "pause"),  # an ad-hoc run cannot be resubmitted: it must wait in-process
        (3_600, True, "pause"),  # not longer than suspend_after: pausing is cheaper
        (3_601, True, "suspend"),
    ],
)
def test_only_long_waits_of_deployment_runs_suspend(timeout, in_deployment, expected):
    assert promotion.approval_wait(timeout, 3_600, in_deployment) == expected


def test_a_timed_out_wait_is_a_rejection_that_says_so():
    decision = decide(
        version="5",
        gate_passed=True,
        gate_reasons=(),
        approval=promotion.timed_out("24h"),
    )

    assert (decision.promote, decision.approver) == (False, "timeout")
    assert decision.reason == "gate passed; rejected by timeout: no answer within 24h: rejected"
