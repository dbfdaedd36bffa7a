"""The tabular family's data side: the increment a warm start or refit trains on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from retrain.config import parse_spec
from retrain.errors import EmptyWindowError, NoTreesAddedError
from retrain.families.lightgbm import fit, fit_candidate
from retrain.families.spine import Champion, increment_window, prepare
from retrain.features import data_version
from retrain.ledger import Ledger
from retrain.stateful import plan_training
from tests.conftest import spec_dict, with_overrides


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


def _champion_and_a_one_day_increment(spec, strategy="warm"):
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
    assert plan.strategy == strategy
    return champion, later, plan


def test_a_warm_increment_too_small_to_grow_a_tree_fails_with_the_fix(tmp_path, bike_dir):
    # without the replay of the champion's rows, one day's 24 rows cannot split
    spec = parse_spec(spec_dict(bike_dir, tmp_path / "state", **{"stateful.replay": 0.0}))
    champion, later, plan = _champion_and_a_one_day_increment(spec)

    with pytest.raises(NoTreesAddedError, match=r"24 row\(s\).*compare_with_scratch"):
        fit_candidate(spec, later, plan, champion)


def test_a_warm_increment_too_small_to_grow_a_tree_retrains_from_scratch_when_compared(
    tmp_path, bike_dir
):
    spec = parse_spec(
        spec_dict(
            bike_dir,
            tmp_path / "state",
            **{"stateful.compare_with_scratch": True, "stateful.replay": 0.0},
        )
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


def _stationary_source(folder, days: int = 40, rows_per_day: int = 48, seed: int = 0):
    """A generated stream whose rule never changes: a champion trained on it is as good as
    any later model, so a warm increment may only add noise."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    n = days * rows_per_day
    ts = (
        pd.Timestamp("2024-01-01")
        + pd.to_timedelta(np.repeat(np.arange(days), rows_per_day), unit="D")
        + pd.to_timedelta(np.tile(np.arange(rows_per_day) * 30, days), unit="min")
    )
    x = rng.normal(size=(n, 3))
    y = 3 * x[:, 0] + 2 * np.sin(2 * x[:, 1]) + x[:, 2] * (x[:, 0] > 0) + rng.normal(size=n)
    frame = pd.DataFrame({"ts": ts, "a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": y})
    frame.to_csv(folder / "stream.csv", index=False)
    return folder


def _stationary_spec(tmp_path, **overrides):
    data = spec_dict(_stationary_source(tmp_path / "stream"), tmp_path / "state")
    data.update(
        name="stationary",
        label="y",
        timestamp={"column": "ts"},
        features={"numeric": ["a", "b", "c"]},
        windows={"train": "28D", "holdout": "7D"},
        lightgbm={
            "num_boost_round": 200,
            "params": {"learning_rate": 0.1, "num_leaves": 15, "min_data_in_leaf": 5},
        },
    )
    return parse_spec(with_overrides(data, overrides))


def _holdout_mae(spec, model, prepared):
    from retrain.backtest import score
    from retrain.families.lightgbm import _xy
    from retrain.features import FeatureCache

    X, y = _xy(spec, FeatureCache(spec.state.features, spec).load(prepared.holdout.partitions))
    return score("mae", y, model.predict(X))


@pytest.mark.parametrize(
    ("settings", "within"),
    [
        ({}, True),  # the defaults: rounds for the day's share, the champion's rows replayed
        # the recipe before: 50 rounds on the day's 48 rows alone overfit them
        ({"stateful.scale_rounds": False, "stateful.replay": 0.0}, False),
    ],
)
def test_a_one_day_warm_increment_does_not_overfit_a_stationary_stream(tmp_path, settings, within):
    spec = _stationary_spec(tmp_path, **settings)
    first = prepare(spec, pd.Timestamp("2024-02-05"))
    champion_fit = fit(spec, first)
    champion = Champion("1", champion_fit.model, first.train.end, champion_fit.data_versions)
    later = prepare(spec, pd.Timestamp("2024-02-06"))  # one new day since the champion
    plan = plan_training("stateful", spec.stateful, champion.state(), ["a", "b", "c"], [])

    trained = fit(spec, later, plan, champion)

    assert len(increment_window(spec, later, champion.train_end).partitions) == 1
    candidate = _holdout_mae(spec, trained.model, later)
    served = _holdout_mae(spec, champion.model, later)
    assert (candidate <= served * 1.02) is within, (candidate, served)


def test_a_one_day_warm_increment_replays_the_champions_newest_days_and_records_them(
    bike_spec,
):
    champion, later, plan = _champion_and_a_one_day_increment(bike_spec)
    increment = increment_window(bike_spec, later, champion.train_end)
    assert [p.rows for p in increment.partitions] == [24]

    trained = fit(bike_spec, later, plan, champion)

    # 3 x 24 rows replayed: the three days before the champion's training end, whole
    days = [p.start for p in trained.window.partitions]
    assert days == list(pd.date_range("2011-04-12", "2011-04-15", freq="D"))
    assert trained.rows == 96
    assert trained.window.start == pd.Timestamp("2011-04-12")
    assert trained.window.version == data_version(later.spec_hash, trained.window.partitions)
    assert trained.data_versions == (*champion.data_versions, trained.window.version)
    # a day of a 21-day window: a 21st of the 20 scratch rounds, rounded up: one round, which
    # grows a tree (24 rows alone cannot split with min_data_in_leaf = 20)
    assert trained.model.num_boost_round == 1
    assert trained.model.booster_.num_trees() == champion.model.booster_.num_trees() + 1
    assert "1 round(s) on 24 new row(s)" in trained.plan.reason
    assert "72 replayed row(s)" in trained.plan.reason


def test_a_warm_increment_is_the_same_model_on_the_same_data_and_seed(bike_spec):
    champion, later, plan = _champion_and_a_one_day_increment(bike_spec)

    one = fit(bike_spec, later, plan, champion).model.model_string()
    two = fit(bike_spec, later, plan, champion).model.model_string()

    assert one == two


def test_a_refit_increment_learns_from_the_new_partitions_only(tmp_path, bike_dir):
    spec = parse_spec(spec_dict(bike_dir, tmp_path / "state", **{"stateful.strategy": "refit"}))
    champion, later, plan = _champion_and_a_one_day_increment(spec, "refit")

    trained = fit(spec, later, plan, champion)

    assert [p.start for p in trained.window.partitions] == [pd.Timestamp("2011-04-15")]
    assert trained.model.booster_.num_trees() == champion.model.booster_.num_trees()


def test_the_dask_engine_is_handed_the_same_window_and_rounds_as_a_local_fit(
    bike_spec, monkeypatch
):
    import retrain.compute

    champion, later, plan = _champion_and_a_one_day_increment(bike_spec)
    local = fit(bike_spec, later, plan, champion)
    handed = {}

    def fake_fit_on_dask(spec, window, trainer, client=None):
        handed.update(window=window, rounds=trainer.num_boost_round)
        return local.model, local.y_train

    monkeypatch.setattr(retrain.compute, "fit_on_dask", fake_fit_on_dask)
    on_dask = bike_spec.model_copy(
        update={"compute": bike_spec.compute.model_copy(update={"engine": "dask"})}
    )

    fit(on_dask, later, plan, champion)

    assert handed["window"] == local.window
    assert handed["rounds"] == local.model.num_boost_round
