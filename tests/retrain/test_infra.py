"""Infra validation's decisions: when it runs, when answers match, what a failure does."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from retrain.backtest import BacktestResult
from retrain.config import GateSpec
from retrain.infra import InfraCheck, compare_answers, gate_with_infra, infra_wanted


def verdict(passed: bool = True) -> BacktestResult:
    return BacktestResult(
        metric="mae",
        greater_is_better=False,
        holdout_start="2011-04-22",
        holdout_end="2011-04-29",
        rows=10,
        candidate=1.0,
        baseline=2.0,
        champion=None,
        champion_version=None,
        improvement=None,
        ci_low=None,
        ci_high=None,
        tolerance=0.0,
        passed=passed,
        reasons=("candidate beats the baseline",),
    )


@pytest.mark.parametrize(
    ("setting", "in_deployment", "runs"),
    [
        ("deployments", True, True),
        ("deployments", False, False),
        ("always", False, True),
        ("never", True, False),
        (True, False, True),
        (False, True, False),
    ],
)
def test_infra_validation_runs_for_deployments_unless_told_otherwise(setting, in_deployment, runs):
    assert infra_wanted(GateSpec(infra_validation=setting), in_deployment) is runs


def test_the_default_checks_the_runs_of_deployments_only():
    assert GateSpec().infra_validation == "deployments"


def test_a_failed_infra_check_fails_the_gate_with_its_reason():
    failed = InfraCheck(False, "infra validation failed: no module named lightgbm", 3.0, 50)

    result = gate_with_infra(verdict(), failed)

    assert not result.passed
    assert result.reasons[-1] == "infra validation failed: no module named lightgbm"


def test_a_passed_infra_check_keeps_the_verdict_and_says_so():
    passed = InfraCheck(True, "infra validation passed", 3.0, 50)

    assert gate_with_infra(verdict(), passed).passed
    assert not gate_with_infra(verdict(False), passed).passed
    assert gate_with_infra(verdict(), passed).reasons[-1] == "infra validation passed"
    assert gate_with_infra(verdict(), None) == verdict()


def test_the_check_records_its_outcome_and_cost_as_tags():
    tags = InfraCheck(False, "why", 12.345, 5).tags()
    assert tags == {
        "retrain.infra_validation": "failed",
        "retrain.infra_validation.reason": "why",
        "retrain.infra_validation.seconds": "12.3",
    }


def test_served_predictions_must_equal_the_in_process_ones():
    expected = np.array([1.5, 2.25, np.nan])

    assert compare_answers(expected, [1.5, 2.25, None]) is None
    assert "1 of 3 prediction(s) differ, e.g. row 1" in compare_answers(expected, [1.5, 2.3, None])
    assert "2 prediction(s) for 3 row(s)" in compare_answers(expected, [1.5, 2.25])
    assert "not one number per row" in compare_answers(expected, [{"error": "x"}])


def test_served_recommendations_must_have_the_same_rows_and_scores():
    expected = pd.DataFrame(
        {"user": ["4", "4"], "rank": [1, 2], "item": ["10", "11"], "score": [0.5, 0.25]}
    )
    served = expected.to_dict(orient="records")

    assert compare_answers(expected, pd.DataFrame(served)) is None
    other = pd.DataFrame(served).assign(item=["10", "12"])
    assert "column 'item' differs in 1 row(s), e.g. row 1" in compare_answers(expected, other)
    assert "1 row(s)" in compare_answers(expected, pd.DataFrame(served[:1]))
