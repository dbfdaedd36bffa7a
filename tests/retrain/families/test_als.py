"""The ALS family's steps: plan, fit, the ranking backtest on the shared gate."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retrain.backtest import GateSettings, backtest
from retrain.config import parse_spec
from retrain.errors import SchemaChangeError
from retrain.families.als import evaluate, fit, fit_candidate, load_interactions, make_trainer, plan
from retrain.families.spine import Champion, prepare
from retrain.stateful import scratch
from tests.conftest import als_spec_dict


@pytest.fixture
def make(tmp_path: Path, taste_csv: Path):
    def build(**overrides):
        return parse_spec(als_spec_dict(taste_csv, tmp_path / "state", **overrides))

    return build


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
def first(make):
    spec = make()
    prepared = prepare(spec, pd.Timestamp("2024-01-25"))
    return spec, prepared, fit(spec, prepared, scratch("first"), None)


def test_manual_and_scheduled_runs_recompute_and_stateful_ones_fold_in(first):
    spec, _, trained = first
    champion = champion_of(trained)

    assert plan("manual", spec, champion).strategy == "scratch"
    assert plan("scheduled", spec, champion).strategy == "scratch"
    assert plan("stateful", spec, None).reason == (
        "no champion to fold in to: first model of the lineage"
    )
    folding = plan("continual", spec, champion)
    assert (folding.strategy, folding.parent_version, folding.increments) == ("foldin", "1", 1)


def test_a_full_recompute_comes_after_scratch_every_fold_ins(make, first):
    _, _, trained = first
    spec = make(**{"stateful.scratch_every": 1})
    later = prepare(spec, pd.Timestamp("2024-01-29"))
    folded = fit(spec, later, plan("stateful", spec, champion_of(trained)), champion_of(trained))

    again = plan("stateful", spec, champion_of(folded, "2"))

    assert again.strategy == "scratch"
    assert "1 fold-ins since the last recompute (stateful.scratch_every = 1)" in again.reason


def test_a_fold_in_reads_only_the_new_partitions_and_matches_one_given_the_full_history(
    make, first
):
    spec, _, trained = first
    champion = champion_of(trained)
    later = prepare(spec, pd.Timestamp("2024-01-29"))

    folded = fit(spec, later, plan("stateful", spec, champion), champion)

    history = load_interactions(spec, folded.window)
    new_rows = history[history["ts"] >= trained.window.end]
    assert folded.rows == len(new_rows) < len(history)
    assert folded.window.start == trained.window.start  # the model covers its lineage
    assert folded.data_versions[0] == trained.window.version
    assert len(folded.data_versions) == 2 and folded.data_versions[1] != folded.window.version
    from_history = make_trainer(spec, "foldin", trained.model).fit(history)
    np.testing.assert_array_equal(folded.model.user_factors_, from_history.user_factors_)
    np.testing.assert_array_equal(folded.model.item_factors_, from_history.item_factors_)


def test_the_specs_fold_in_solver_reaches_the_trainer_and_changes_only_the_solve(make, first):
    _, _, trained = first
    champion = champion_of(trained)
    spec = make(**{"als.foldin_solver": "exact"})
    cg_spec = make()  # cg is the default
    later = prepare(cg_spec, pd.Timestamp("2024-01-29"))

    exact = fit(spec, later, plan("stateful", spec, champion), champion).model
    cg = fit(cg_spec, later, plan("stateful", cg_spec, champion), champion).model

    assert (exact.foldin_solver, cg.foldin_solver) == ("exact", "cg")
    np.testing.assert_array_equal(cg.updated_users_, exact.updated_users_)
    assert not np.array_equal(cg.user_factors_, exact.user_factors_)
    gap = np.linalg.norm(cg.user_factors_ - exact.user_factors_)
    assert gap < 0.1 * np.linalg.norm(exact.user_factors_)


def test_a_fold_in_reads_the_full_history_when_the_champions_partitions_changed(
    make, first, project_logs
):
    spec, _, trained = first
    stale = champion_of(trained)
    champion = Champion(
        stale.version,
        stale.model,
        stale.train_end,
        stale.data_versions,
        {**stale.tags, "retrain.data_version": "dv-before-a-late-delivery"},
    )
    later = prepare(spec, pd.Timestamp("2024-01-29"))

    folded = fit(spec, later, plan("stateful", spec, champion), champion)

    assert folded.rows == len(load_interactions(spec, folded.window))
    assert folded.data_versions[-1] == folded.window.version
    assert "changed since (data version dv-before-a-late-delivery" in project_logs.text


def test_a_longer_popularity_window_than_the_champions_folds_in_from_the_full_history(
    make, first, project_logs
):
    _, _, trained = first
    champion = champion_of(trained)
    longer = make(**{"als.popularity_window": "15D"})
    later = prepare(longer, pd.Timestamp("2024-01-29"))

    folded = fit(longer, later, plan("stateful", longer, champion), champion)

    assert folded.rows == len(load_interactions(longer, folded.window))
    assert "als.popularity_window 15D is longer than champion v1's 10D" in project_logs.text


def test_a_partition_straddling_the_champions_training_end_is_folded_in(make):
    spec = make()
    noon = prepare(spec, pd.Timestamp("2024-01-25 12:00"))  # the holdout starts mid-day
    trained = fit(spec, noon, scratch("first"), None)
    champion = champion_of(trained)
    assert champion.train_end == pd.Timestamp("2024-01-21 12:00")
    later = prepare(spec, pd.Timestamp("2024-01-29"))

    folded = fit(spec, later, plan("stateful", spec, champion), champion)

    # the day of 2024-01-21 was in no window of the champion: the increment reads it, so the
    # fold-in equals one handed the lineage's whole history
    from_history = make_trainer(spec, "foldin", trained.model).fit(
        load_interactions(spec, folded.window)
    )
    np.testing.assert_array_equal(folded.model.user_factors_, from_history.user_factors_)
    np.testing.assert_array_equal(folded.model.item_factors_, from_history.item_factors_)


def test_changed_als_settings_stop_the_fold_in_unless_told_to_recompute(make, first):
    _, _, trained = first
    champion = champion_of(trained)

    with pytest.raises(SchemaChangeError, match=r"factors 8 -> 16.*stateful.on_schema_change"):
        plan("stateful", make(**{"als.factors": 16}), champion)
    relaxed = make(**{"als.factors": 16, "stateful.on_schema_change": "scratch"})
    assert plan("stateful", relaxed, champion).strategy == "scratch"


def test_the_gate_scores_each_active_user_in_each_backtest_window(make):
    spec = make(**{"gate.backtest_windows": 2})
    prepared = prepare(spec, pd.Timestamp("2024-01-25"))
    trained = fit(spec, prepared, scratch("first"), None)

    evaluated = evaluate(spec, trained, prepared.holdout, None)

    result = evaluated.result
    assert len(result.windows) == 2
    assert result.rows == sum(w.rows for w in result.windows) == evaluated.candidate.size
    assert result.candidate == pytest.approx(evaluated.candidate.mean())
    assert result.baseline == pytest.approx(evaluated.baseline.mean())
    # the segment table covers the whole holdout: each active user once
    assert evaluated.ranking is not None
    assert evaluated.ranking.candidate.all.users <= result.rows


def test_a_ranking_candidate_below_the_popularity_baseline_is_refused():
    users = np.array([0.2, 0.1, 0.0, 0.3])

    result = backtest(
        GateSettings(metric="ndcg", task="ranking", tolerance=0.0),
        y_holdout=np.zeros(4),
        candidate_pred=users,
        y_train=np.empty(0),
        holdout_start=pd.Timestamp("2024-01-01"),
        holdout_end=pd.Timestamp("2024-01-05"),
        baseline_pred=users + 0.05,
    )

    assert not result.passed
    assert result.reasons[0] == (
        "candidate does not beat the trivial baseline (0.1500 vs 0.2000): the model learned "
        "nothing useful on this window"
    )


def test_a_fold_in_that_loses_to_a_recompute_is_replaced_when_config_compares(make, first):
    _, _, trained = first
    # a champion whose item factors are noise: folding in keeps most of them
    weak = copy.deepcopy(trained.model)
    rng = np.random.default_rng(0)
    weak.item_factors_ = rng.normal(size=weak.item_factors_.shape).astype("float32")
    champion = champion_of(replace(trained, model=weak))
    spec = make(
        **{
            "stateful.compare_with_scratch": True,
            "gate.tolerance": 0.0,
            "als.refresh_items": None,  # only new items are refolded
        }
    )
    prepared = prepare(spec, pd.Timestamp("2024-01-27"))  # two days after the champion

    chosen = fit_candidate(spec, prepared, plan("stateful", spec, champion), champion)

    assert chosen.plan.strategy == "scratch"
    assert chosen.plan.reason.startswith("fold-in lost to a full recompute on the holdout (ndcg@5")
    assert chosen.window == prepared.train  # the recompute's own window, not the lineage's


def test_a_fold_in_within_the_tolerance_of_a_recompute_is_kept_when_config_compares(make, first):
    _, _, trained = first
    champion = champion_of(trained)
    # with a tolerance of 100% a fold-in is kept whatever the recompute scores
    spec = make(**{"stateful.compare_with_scratch": True, "gate.tolerance": 1.0})
    prepared = prepare(spec, pd.Timestamp("2024-02-06"))

    chosen = fit_candidate(spec, prepared, plan("stateful", spec, champion), champion)

    assert chosen.plan.strategy == "foldin"
    assert "beat a full recompute on the holdout" in chosen.plan.reason


def test_interactions_from_a_sql_table_train_the_same_model_as_from_csv(tmp_path, make):
    import sqlalchemy as sa

    from tests.conftest import taste_stream

    url = f"sqlite:///{tmp_path / 'events.db'}"
    engine = sa.create_engine(url)
    taste_stream().to_sql("ratings", engine, index=False)
    engine.dispose()
    from_csv = make()
    from_sql = make(
        **{
            "source": {"kind": "sql", "url": url, "table": "ratings"},
            "state.dir": str(tmp_path / "sql-state"),  # its own feature cache
        }
    )
    as_of = pd.Timestamp("2024-01-25")

    csv_model = fit(from_csv, prepare(from_csv, as_of), scratch("csv"), None).model
    sql_prepared = prepare(from_sql, as_of)
    sql_model = fit(from_sql, sql_prepared, scratch("sql"), None).model

    assert sql_prepared.train.rows > 0 and sql_prepared.cache.computed
    assert list(sql_model.user_index_) == list(csv_model.user_index_)
    np.testing.assert_array_equal(sql_model.user_factors_, csv_model.user_factors_)


@pytest.mark.parametrize("windows", [1, 2])
def test_the_gate_shares_each_models_lists_and_one_baseline_with_the_same_verdict(
    make, first, windows
):
    """Each model recommends once and the baseline is fitted once per gate: the segment table
    and every per-user score are what scoring each model on its own gives."""
    from retrain.families.als import METRIC_COLUMN
    from retrain.families.baseline import popularity
    from retrain.families.spine import split_windows
    from retrain.ranking import ranking_backtest, relevant_items, user_metrics

    _, _, old = first
    spec = make(**{"gate.backtest_windows": windows, "seed": 7})
    prepared = prepare(spec, pd.Timestamp("2024-01-25"))
    trained = fit(spec, prepared, scratch("candidate"), None)
    champion = champion_of(old)

    evaluated = evaluate(spec, trained, prepared.holdout, champion)

    als = spec.als
    train = load_interactions(spec, trained.window)
    held = load_interactions(spec, prepared.holdout)
    alone = ranking_backtest(
        trained.model,
        train,
        held,
        k=als.k,
        popularity_window=als.popularity_window,
        min_rating=als.min_rating,
        champion=champion.model,
    )
    assert evaluated.ranking is not None
    # NaN-aware: a segment without users scores NaN
    pd.testing.assert_frame_equal(
        pd.DataFrame(evaluated.ranking.table()), pd.DataFrame(alone.table()), check_exact=True
    )
    _, ids = split_windows(prepared.holdout, windows, held["ts"])
    rels = [relevant_items(train, held[ids == i], als.min_rating) for i in range(windows)]
    rels = [rel for rel in rels if not rel.empty]
    baseline = popularity(train, als.popularity_window, als.min_rating)
    column = METRIC_COLUMN[spec.metric]
    for model, got in (
        (trained.model, evaluated.candidate),
        (champion.model, evaluated.champion),
        (baseline, evaluated.baseline),
    ):
        want = [
            user_metrics(model.recommend(sorted(rel["user"].unique()), k=als.k), rel, als.k)
            for rel in rels
        ]
        np.testing.assert_array_equal(got, np.concatenate([w[column].to_numpy() for w in want]))


@pytest.mark.parametrize(
    "ids",
    [
        pd.Series([1, 22, 333]),
        pd.Series(["a", None, "c"], dtype="string"),
        pd.Series(["a", None, "c"], dtype=object),
        pd.Series([1.0, np.nan, 3.0]),
        pd.Series(pd.Categorical(["a", "b", None])),
    ],
)
def test_interactions_hold_the_ids_as_the_strings_an_object_round_trip_gave(make, ids):
    from retrain.families.als import interactions
    from retrain.ingest import TS

    spec = make()
    user, item = spec.interactions.user, spec.interactions.item
    frame = pd.DataFrame(
        {
            user: ids,
            item: ids.iloc[::-1].reset_index(drop=True),
            spec.label: [4.0, 5.0, 1.0],
            TS: pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03"]),
        }
    )

    got = interactions(spec, frame)

    # what interactions() built before: the strings as an object array, inferred again
    want = pd.DataFrame(
        {
            "user": frame[user].astype(str).to_numpy(dtype=object),
            "item": frame[item].astype(str).to_numpy(dtype=object),
            "weight": frame[spec.label].to_numpy(dtype="float64"),
            "ts": frame[TS].to_numpy(),
        }
    )
    pd.testing.assert_frame_equal(got, want, check_exact=True)
