"""gate.refit: the served fit learns up to the as-of; no model is judged on rows it trained on."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from retrain.config import parse_spec
from retrain.errors import BacktestError
from retrain.families import als as recommend
from retrain.families.lightgbm import evaluate, fit, refit
from retrain.families.lineage import refit_tags
from retrain.families.spine import Champion, prepare
from retrain.stateful import TrainingPlan, scratch
from tests.conftest import als_spec_dict, spec_dict

AS_OF = pd.Timestamp("2011-04-29")  # bike: 21-day training window, 7-day holdout


def champion_of(trained, version: str = "1") -> Champion:
    return Champion(
        version,
        trained.model,
        trained.window.end,
        trained.data_versions,
        {
            "retrain.window_start": str(trained.window.start),
            "retrain.data_version": trained.window.version,
        },
    )


@pytest.fixture
def refit_spec(tmp_path: Path, bike_dir: Path):
    return parse_spec(spec_dict(bike_dir, tmp_path / "state", **{"gate.refit": True}))


def test_refit_is_on_by_default(tmp_path, bike_dir):
    data = spec_dict(bike_dir, tmp_path / "state")
    del data["gate"]["refit"]
    assert parse_spec(data).gate.refit is True


def test_a_scratch_recipe_is_refitted_on_the_window_ending_at_the_as_of(refit_spec):
    prepared = prepare(refit_spec, AS_OF)
    validated = fit(refit_spec, prepared, scratch("validated"))

    served = refit(refit_spec, prepared, validated, None)

    assert validated.window.end == prepared.holdout.start == pd.Timestamp("2011-04-22")
    assert served.window.start == AS_OF - pd.Timedelta("21D")
    assert served.window.end == AS_OF
    # the holdout's partitions are in the served fit, none of them in the validated one
    holdout_keys = {p.key for p in prepared.holdout.partitions}
    assert holdout_keys <= {p.key for p in served.window.partitions}
    assert not holdout_keys & {p.key for p in validated.window.partitions}
    assert served.data_end == pd.Timestamp("2011-04-28 23:00")
    assert served.model.params == validated.model.params
    assert served.model.num_boost_round == validated.model.num_boost_round
    tags = refit_tags(validated)
    assert tags["retrain.validated.window_end"] == "2011-04-22 00:00:00"
    assert tags["retrain.validated.data_version"] == validated.window.version


def test_a_warm_recipe_is_refitted_on_the_increment_through_the_holdout(refit_spec):
    first = prepare(refit_spec, pd.Timestamp("2011-04-15"))
    champion = champion_of(fit(refit_spec, first, scratch("first")))
    prepared = prepare(refit_spec, AS_OF)
    plan = TrainingPlan("warm", "warm start", "1", 1)
    validated = fit(refit_spec, prepared, plan, champion)

    served = refit(refit_spec, prepared, validated, champion)

    assert served.plan.strategy == "warm"
    assert validated.window.end == prepared.holdout.start
    # the new partitions: from the champion's training end through the holdout, up to the
    # as-of; in front of them the champion's newest ones, replayed (stateful.replay)
    since = champion.train_end
    assert since == pd.Timestamp("2011-04-08")
    new = [p for p in served.window.partitions if p.end > since]
    assert new[0].start == since
    assert served.window.end == AS_OF
    validated_new = [p for p in validated.window.partitions if p.end > since]
    assert sum(p.rows for p in new) == sum(p.rows for p in validated_new) + sum(
        p.rows for p in prepared.holdout.partitions
    )
    # (only inside the served training window, [as_of - 21D, as_of): here none is left)
    replayed = [p for p in served.window.partitions if p.end <= since]
    assert all(p.start >= AS_OF - pd.Timedelta("21D") for p in replayed)
    assert served.window.start == (replayed[0].start if replayed else since)


def test_a_champion_refitted_past_the_holdout_start_is_judged_only_on_rows_neither_saw(
    refit_spec,
):
    # the champion was served by a refit at 2011-04-25: it trained on rows up to then
    early = prepare(refit_spec, pd.Timestamp("2011-04-25"))
    served = refit(refit_spec, early, fit(refit_spec, early, scratch("v1")), None)
    champion = champion_of(served)
    prepared = prepare(refit_spec, AS_OF)  # the holdout starts at 2011-04-22
    candidate = fit(refit_spec, prepared, scratch("candidate"))

    result = evaluate(refit_spec, candidate, prepared.holdout, champion).result

    assert champion.train_end == pd.Timestamp("2011-04-25") > prepared.holdout.start
    assert pd.Timestamp(result.holdout_start) == pd.Timestamp("2011-04-25")
    assert result.rows == 4 * 24  # 2011-04-25 .. 2011-04-28, unseen by both models
    assert candidate.window.end <= pd.Timestamp(result.holdout_start)
    assert any("unseen by both models" in r for r in result.reasons)


def test_without_refit_a_champion_inside_the_holdout_is_still_refused(tmp_path, bike_dir):
    spec = parse_spec(spec_dict(bike_dir, tmp_path / "state"))  # gate.refit = false
    early = prepare(spec, pd.Timestamp("2011-04-25"))
    champion = champion_of(refit(spec, early, fit(spec, early, scratch("v1")), None))
    prepared = prepare(spec, AS_OF)
    candidate = fit(spec, prepared, scratch("candidate"))

    with pytest.raises(BacktestError, match="the comparison would not be fair"):
        evaluate(spec, candidate, prepared.holdout, champion)


def test_a_champion_trained_past_the_whole_holdout_cannot_be_judged(refit_spec):
    prepared = prepare(refit_spec, AS_OF)
    served = refit(refit_spec, prepared, fit(refit_spec, prepared, scratch("v1")), None)
    candidate = fit(refit_spec, prepared, scratch("candidate"))

    with pytest.raises(BacktestError, match="no row is unseen by both models"):
        evaluate(refit_spec, candidate, prepared.holdout, champion_of(served))


def test_als_recompute_is_refitted_through_the_holdout_and_judged_fairly_next_time(
    tmp_path, taste_csv
):
    spec = parse_spec(als_spec_dict(taste_csv, tmp_path / "state", **{"gate.refit": True}))
    early = prepare(spec, pd.Timestamp("2024-01-25"))
    validated = recommend.fit(spec, early, scratch("v1"), None)

    served = recommend.refit(spec, early, validated, None)

    assert validated.window.end == early.holdout.start
    assert served.window.end == pd.Timestamp("2024-01-25")
    assert served.window.start == pd.Timestamp("2024-01-25") - pd.Timedelta("20D")  # sliding
    assert served.data_end > early.holdout.start > validated.data_end
    # its popularity fallback is refitted with it: it knows the holdout's newest rows
    assert served.model.train_end_ > validated.model.train_end_
    later = prepare(spec, pd.Timestamp("2024-01-27"))  # holdout from 2024-01-23
    candidate = recommend.fit(spec, later, scratch("candidate"), None)
    result = recommend.evaluate(spec, candidate, later.holdout, champion_of(served)).result
    assert pd.Timestamp(result.holdout_start) == pd.Timestamp("2024-01-25")
    assert any("unseen by both models" in r for r in result.reasons)
