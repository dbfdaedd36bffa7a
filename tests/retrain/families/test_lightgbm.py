"""The tabular family's data side: the increment a warm start or refit trains on."""

from __future__ import annotations

import pandas as pd
import pytest

from retrain.config import parse_spec
from retrain.errors import EmptyWindowError, NoTreesAddedError
from retrain.families.lightgbm import fit, fit_candidate
from retrain.families.spine import Champion, increment_window, prepare
from retrain.ledger import Ledger
from retrain.stateful import plan_training
from tests.conftest import spec_dict


def test_a_partition_straddling_the_champions_training_end_goes_to_the_increment_whole(
    bike_spec,
):
    # a manual run at noon: its holdout started inside the day of 2011-04-15, and that day's
    # partition was in neither its training window nor (before the fix) any later increment
    first = prepare(bike_spec, pd.Timestamp("2011-04-22 12:00"))
    champion_end = first.train.end
    assert champion_end == pd.Timestamp("2011-04-15 12:00")
    assert all(p.end <= champion_end for p in first.train.partitions)
    later = prepare(bike_spec, pd.Timestamp("2011-04-29"))

    increment = increment_window(bike_spec, later, champion_end)

    keys = [p.start for p in increment.partitions]
    assert keys[0] == pd.Timestamp("2011-04-15")
    assert keys[-1] == pd.Timestamp("2011-04-21")  # the last day before the holdout
    assert increment.start == pd.Timestamp("2011-04-15")
    # the champion's partitions and the increment's together: every day up to the holdout
    seen = {p.key for p in first.train.partitions} | {p.key for p in increment.partitions}
    upto = {
        p.key
        for p in later.ingest.partitions
        if p.start >= first.train.start and p.end <= later.holdout.start
    }
    assert upto <= seen


def test_no_new_complete_partition_since_the_champion_is_an_empty_increment(bike_spec):
    prepared = prepare(bike_spec, pd.Timestamp("2011-04-29"))

    with pytest.raises(EmptyWindowError, match="no new data since the champion's training end"):
        increment_window(bike_spec, prepared, prepared.holdout.start)


def test_the_manifest_records_the_rows_ingest_dropped_from_a_usable_partition(
    tmp_path, bike_dir, bike_spec
):
    march = bike_dir / "2011-03.csv"
    rows = pd.read_csv(march)
    rows.loc[[0, 1], "cnt"] = None  # two unlabelled hours of 2011-03-01
    pd.concat([rows, rows.iloc[30:33]]).to_csv(march, index=False)  # three of 2011-03-02 twice
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.migrate()

    prepare(bike_spec, pd.Timestamp("2011-04-29"), ledger)

    notes = {r["partition_key"]: r["reason"] for r in ledger.manifest(bike_spec.name)}
    assert notes["2011-03-01"] == "2 row(s) without label 'cnt' dropped"
    assert notes["2011-03-02"] == "3 duplicated row(s) dropped"
    assert notes["2011-03-03"] is None


def _champion_and_a_one_day_increment(spec):
    first = prepare(spec, pd.Timestamp("2011-04-22"))
    trained = fit(spec, first)
    champion = Champion("1", trained.model, first.train.end, trained.data_versions)
    later = prepare(spec, pd.Timestamp("2011-04-23"))  # one new day: 24 rows
    plan = plan_training(
        "stateful",
        spec.stateful,
        champion.state(),
        spec.features.columns,
        spec.features.categorical,
    )
    assert plan.strategy == "warm"
    return champion, later, plan


def test_a_warm_increment_too_small_to_grow_a_tree_fails_with_the_fix(bike_spec):
    champion, later, plan = _champion_and_a_one_day_increment(bike_spec)

    with pytest.raises(NoTreesAddedError, match=r"24 row\(s\).*compare_with_scratch"):
        fit_candidate(bike_spec, later, plan, champion)


def test_a_warm_increment_too_small_to_grow_a_tree_retrains_from_scratch_when_compared(
    tmp_path, bike_dir
):
    spec = parse_spec(
        spec_dict(bike_dir, tmp_path / "state", **{"stateful.compare_with_scratch": True})
    )
    champion, later, plan = _champion_and_a_one_day_increment(spec)

    trained = fit_candidate(spec, later, plan, champion)

    assert trained.plan.strategy == "scratch"
    assert trained.plan.reason == "warm start added no trees on the increment: full retrain instead"
    assert trained.window == later.train


def test_the_gate_scores_candidate_and_champion_as_their_own_predict_does(bike_spec):
    from retrain.families.lightgbm import _score_both, _xy, evaluate
    from retrain.features import FeatureCache
    from retrain.ingest import TS
    from retrain.trainers import LightGBMTrainer

    old = prepare(bike_spec, pd.Timestamp("2011-04-15"))
    prepared = prepare(bike_spec, pd.Timestamp("2011-04-29"))
    champ = fit(bike_spec.model_copy(update={"seed": bike_spec.seed + 1}), old)
    candidate = fit(bike_spec, prepared)
    champion = Champion("1", champ.model, old.train.end, champ.data_versions)
    frame = FeatureCache(bike_spec.state.features, bike_spec).load(prepared.holdout.partitions)
    X, _ = _xy(bike_spec, frame[pd.to_datetime(frame[TS]) >= prepared.holdout.start])
    assert candidate.model.same_encoding(champ.model)  # one encoding serves both

    evaluated = evaluate(bike_spec, candidate, prepared.holdout, champion)

    assert evaluated.candidate.tolist() == candidate.model.predict(X).tolist()
    assert evaluated.champion is not None
    assert evaluated.champion.tolist() == champ.model.predict(X).tolist()
    # a champion that encodes otherwise (other features) is scored by its own predict
    other = LightGBMTrainer(params={"min_data_in_leaf": 5}, num_boost_round=5, categorical=[])
    other.fit(X[["temp", "hum"]], X["windspeed"].to_numpy())
    assert not candidate.model.same_encoding(other)
    scores, theirs = _score_both(candidate.model, other, X, list(X.columns))
    assert scores.tolist() == candidate.model.predict(X).tolist()
    assert theirs.tolist() == other.predict(X).tolist()
    # no champion: the candidate alone, from its matrix
    alone, none = _score_both(candidate.model, None, frame, bike_spec.features.columns)
    assert none is None
    full = candidate.model.predict(frame[list(bike_spec.features.columns)])
    assert alone.tolist() == full.tolist()
