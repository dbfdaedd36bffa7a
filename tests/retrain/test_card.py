"""The model card: markdown rendered from a version's facts (a pure function)."""

from __future__ import annotations

from dataclasses import replace

from retrain.backtest import BacktestResult, SliceScore
from retrain.card import CardFacts, render_card


def result(**changes) -> BacktestResult:
    base = BacktestResult(
        metric="mae",
        greater_is_better=False,
        holdout_start="2011-04-22",
        holdout_end="2011-04-29",
        rows=168,
        candidate=41.123456,
        baseline=120.5,
        champion=43.25,
        champion_version="3",
        improvement=2.126544,
        ci_low=0.5,
        ci_high=3.75,
        tolerance=0.0,
        passed=True,
        reasons=("beats the champion by 2.13 (CI 0.5 to 3.75)", "beats the baseline"),
    )
    return replace(base, **changes)


def facts(**changes) -> CardFacts:
    base = CardFacts(
        model="bike",
        version="4",
        family="lightgbm",
        mode="stateful",
        strategy="warm",
        reason="drift on temp",
        actor="scheduler",
        window_start="2011-04-01",
        window_end="2011-04-22",
        rows=504,
        data_end="2011-04-21 23:00:00",
        data_age="7.0 days",
        as_of="2011-04-29",
        result=result(),
        parent_version="3",
        champion_version="3",
        data_version="abc123",
        links=(("MLflow version", "http://mlflow:5000/#/models/bike/versions/4"),),
    )
    return replace(base, **changes)


def test_the_card_says_what_the_version_is_its_data_and_its_metrics_beside_champion_and_baseline():
    card = render_card(facts())

    assert card.startswith("# Model card: bike version 4\n")
    assert "family: **lightgbm**, trained by a **stateful** retrain (warm): drift on temp" in card
    assert "training window: 2011-04-01 .. 2011-04-22 (504 rows)" in card
    assert (
        "last training row: 2011-04-21 23:00:00; data age 7.0 days at the as-of 2011-04-29" in card
    )
    assert "| candidate | 4 | 41.1235 |" in card
    assert "| champion | 3 | 43.25 |" in card
    assert "| baseline | - | 120.5 |" in card
    assert "Improvement over the champion: 2.12654 (95% CI 0.5 .. 3.75)." in card
    assert "Gate: **passed**" in card and "- beats the baseline" in card
    assert "parent version (weights inherited from): 3" in card
    assert "- [MLflow version](http://mlflow:5000/#/models/bike/versions/4)" in card


def test_the_card_shows_the_decision_and_who_made_it_once_known():
    pending = render_card(facts())
    decided = render_card(facts(decision="promoted to champion: approved by ana", approver="ana"))

    assert "## Decision\n\n- pending" in pending
    assert "- promoted to champion: approved by ana" in decided
    assert "- approved or rejected by: ana" in decided


def test_the_card_lists_slices_when_the_backtest_scored_them():
    sliced = result(slices=(SliceScore("weathersit", "3", 40, 50.0, 45.0, 0.1111),))

    assert "| weathersit | 3 | 40 | 50 | 45 | +11.11% |" in render_card(facts(result=sliced))
    assert "No per-slice scores" in render_card(facts())


def test_the_card_states_the_limits_of_its_own_evidence():
    first = result(champion=None, champion_version=None, improvement=None, passed=False)

    card = render_card(facts(result=first, refit=True, champion_version=None, parent_version=None))

    assert "| champion |" not in card
    assert "No champion to compare with: judged against the baseline only." in card
    assert "refitted through the holdout" in card
    assert "Refused by the gate: not fit to serve." in card
    assert "Gate: **refused**" in card
    assert "parent version (weights inherited from): none (scratch)" in card
    assert "live traffic can differ" in card
