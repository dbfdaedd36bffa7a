"""The stateful policy: warm start, refit, or back to scratch; schema changes stop warm start."""

from __future__ import annotations

import doctest

import pytest

from retrain import stateful
from retrain.config import StatefulSpec
from retrain.errors import SchemaChangeError
from retrain.stateful import ChampionState, plan_training
from retrain.trainers import lightgbm

CHAMPION = ChampionState(
    version="3",
    increments=1,
    train_end=None,
    feature_names=("temp", "hum", "weathersit"),
    categorical=("weathersit",),
)


@pytest.mark.parametrize(
    ("features", "categorical", "problem"),
    [
        (("temp", "hum", "weathersit", "wind"), ("weathersit",), "feature 'wind' is new"),
        (("temp", "weathersit"), ("weathersit",), "feature 'hum' was removed"),
        (
            ("temp", "hum", "weathersit"),
            ("weathersit", "hum"),
            "feature 'hum' changed from numeric to categorical",
        ),
        (
            ("temp", "hum", "weathersit"),
            (),
            "feature 'weathersit' changed from categorical to numeric",
        ),
    ],
)
def test_a_schema_change_stops_warm_start_naming_the_feature_and_the_fix(
    features, categorical, problem
):
    with pytest.raises(SchemaChangeError) as raised:
        plan_training("stateful", StatefulSpec(), CHAMPION, features, categorical)

    assert problem in str(raised.value)
    assert "cannot warm-start from champion v3" in str(raised.value)
    assert "stateful.on_schema_change = 'scratch'" in str(raised.value)
    relaxed = StatefulSpec(on_schema_change="scratch")
    plan = plan_training("continual", relaxed, CHAMPION, features, categorical)
    assert (plan.strategy, plan.parent_version) == ("scratch", None)
    assert plan.reason == f"schema changed since champion v3 ({problem})"


def test_an_unchanged_schema_warm_starts_or_refits_as_configured():
    same = (CHAMPION.feature_names, CHAMPION.categorical)

    warm = plan_training("stateful", StatefulSpec(), CHAMPION, *same)
    refit = plan_training("stateful", StatefulSpec(strategy="refit"), CHAMPION, *same)

    assert (warm.strategy, warm.parent_version, warm.increments) == ("warm", "3", 2)
    assert refit.strategy == "refit"


@pytest.mark.parametrize("module", [stateful, lightgbm])
def test_the_doctests_of_the_stateful_policy_hold(module):
    result = doctest.testmod(module, verbose=False)

    assert result.attempted > 0 and result.failed == 0


def test_a_rerun_at_the_same_as_of_with_refit_repeats_the_champion_and_is_skipped():
    """With gate.refit the champion's DATA_VERSION is its served fit's window; the rerun's
    validated window is the champion's validated one (same as-of): the same model, skipped.
    The next cadence's validated window is the champion's served one: new rows, no skip."""
    from retrain.families.lineage import Tag

    tags = {
        Tag.DATA_VERSION: "dv-served",
        Tag.VALIDATED_DATA_VERSION: "dv-validated",
        Tag.FEATURE_SPEC_HASH: "f" * 16,
        Tag.CONFIG_HASH: "c" * 16,
    }
    reason = stateful.unchanged_reason("3", tags, "dv-validated", "f" * 64, "c" * 64)
    assert reason is not None and "it would be the same model" in reason
    assert stateful.unchanged_reason("3", tags, "dv-served", "f" * 64, "c" * 64) is None


@pytest.mark.parametrize(
    ("new_rows", "window_rows", "rounds"),
    [
        (24, 2160, 4),  # a day of a 90-day window: a ninetieth of 300 rounds, rounded up
        (168, 2160, 24),  # a week: seven times as many
        (1080, 2160, 50),  # half a window would add 150: the cap
        (2160, 2160, 50),  # a whole window: the cap (stateful.increment_rounds)
        (1, 10**9, 1),  # never fewer than one round
    ],
)
def test_an_increment_adds_rounds_for_its_share_of_the_training_window(
    new_rows, window_rows, rounds
):
    spec = StatefulSpec(increment_rounds=50)

    assert stateful.increment_rounds(spec, 300, new_rows, window_rows) == rounds


def test_an_increment_adds_the_full_rounds_whatever_its_size_without_scaling():
    spec = StatefulSpec(increment_rounds=50, scale_rounds=False)

    assert stateful.increment_rounds(spec, 300, 24, 2160) == 50
