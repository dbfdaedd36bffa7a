"""``[compute] engine = "dask"`` against a real cluster: `dask scheduler` and two `dask worker`s.

The LocalCluster tests (test_compute.py, test_trainer_lightgbm_dask.py) run the workers inside
the test's own process tree through Dask's Python API. Here the cluster is what production
runs: the `dask scheduler` and `dask worker` commands of this virtualenv, as separate processes
reached only by the scheduler address in the spec, and the fit goes through the same step the
retrain flow calls (``retrain.families.lightgbm.fit``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retrain.backtest import score
from retrain.config import parse_spec
from retrain.families import als
from retrain.families.lightgbm import fit
from retrain.families.spine import Champion, prepare
from retrain.features import FeatureCache
from retrain.stateful import plan_training
from retrain.stateful import scratch as scratch_plan
from tests.conftest import als_spec_dict, spec_dict
from tests.dask_cluster import dask_cluster, training_workers
from tests.retrain.families.test_als import champion_of

distributed = pytest.importorskip("distributed")
FOLDIN_TASK = "_solve_user_chunk"  # retrain.trainers.als: one chunk of a fold-in's users
FIRST, LATER = pd.Timestamp("2011-04-22"), pd.Timestamp("2011-04-29")


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory) -> Iterator[str]:
    """A `dask scheduler` and two single-threaded `dask worker`s; yields the scheduler address."""
    with dask_cluster(tmp_path_factory.mktemp("dask-cluster")) as address:
        yield address


@pytest.fixture
def observer(scheduler: str) -> Iterator[object]:
    with distributed.Client(scheduler, timeout="20s") as client:
        yield client


def holdout_mae(spec, prepared, model) -> float:
    holdout = FeatureCache(spec.state.features, spec).load(prepared.holdout.partitions)
    X, y = holdout[list(spec.features.columns)], holdout[spec.label].to_numpy()
    return score("mae", y, model.predict(X))


@pytest.mark.slow
def test_a_spec_with_a_scheduler_address_trains_on_the_cluster_workers_as_well_as_locally(
    scheduler, observer, bike_dir, bike_spec, tmp_path
):
    spec = parse_spec(
        spec_dict(
            bike_dir,
            tmp_path / "dask-state",
            **{"compute.engine": "dask", "compute.scheduler": scheduler},
        )
    )
    prepared = prepare(spec, LATER)
    local = fit(bike_spec, prepare(bike_spec, LATER))
    workers = observer.scheduler_info()["workers"]

    with distributed.get_task_stream(client=observer) as stream:
        trained = fit(spec, prepared)

    assert len(workers) == 2
    assert training_workers(stream.data) == set(workers)  # both workers trained
    assert trained.rows == local.rows == prepared.train.rows
    assert trained.model.categories_ == local.model.categories_
    assert trained.model.booster_.num_trees() == spec.lightgbm.num_boost_round
    dask_mae = holdout_mae(spec, prepared, trained.model)
    local_mae = holdout_mae(bike_spec, prepared, local.model)
    assert dask_mae == pytest.approx(local_mae, rel=0.15)


@pytest.mark.slow
def test_a_warm_start_on_the_cluster_continues_the_champion(
    scheduler, observer, bike_dir, tmp_path
):
    spec = parse_spec(
        spec_dict(
            bike_dir,
            tmp_path / "state",
            **{"compute.engine": "dask", "compute.scheduler": scheduler},
        )
    )
    first = prepare(spec, FIRST)
    scratch = fit(spec, first)
    champion = Champion("1", scratch.model, first.train.end, scratch.data_versions)
    later = prepare(spec, LATER)  # a week of new partitions after the champion's training end
    plan = plan_training(
        "stateful",
        spec.stateful,
        champion.state(),
        spec.features.columns,
        spec.features.categorical,
    )
    assert plan.strategy == "warm"

    with distributed.get_task_stream(client=observer) as stream:
        warm = fit(spec, later, plan, champion)

    assert training_workers(stream.data) <= set(observer.scheduler_info()["workers"])
    assert training_workers(stream.data), "no LightGBM training task ran on the cluster"
    assert warm.window.name == "increment"
    assert warm.rows == sum(p.rows for p in warm.window.partitions)
    trees = champion.model.booster_.num_trees()
    # the rounds the increment's share of the window asks for (stateful.scale_rounds)
    assert 1 <= warm.model.num_boost_round <= spec.stateful.increment_rounds
    assert warm.model.booster_.num_trees() == trees + warm.model.num_boost_round
    assert warm.model.increments_ == 1
    assert warm.model.categories_ == champion.model.categories_
    assert warm.data_versions == (*champion.data_versions, warm.window.version)
    # as good as the same increment trained by the local trainer
    local_spec = parse_spec(spec_dict(bike_dir, tmp_path / "local-state"))
    local_first = prepare(local_spec, FIRST)
    local_champion = Champion(
        "1", fit(local_spec, local_first).model, local_first.train.end, scratch.data_versions
    )
    local_later = prepare(local_spec, LATER)
    local_warm = fit(local_spec, local_later, plan, local_champion)
    assert local_warm.model.booster_.num_trees() == warm.model.booster_.num_trees()
    warm_mae = holdout_mae(spec, later, warm.model)
    assert warm_mae == pytest.approx(
        holdout_mae(local_spec, local_later, local_warm.model), rel=0.15
    )


@pytest.mark.slow
def test_an_als_fold_in_of_a_spec_with_a_scheduler_address_solves_its_users_on_the_cluster(
    scheduler, observer, taste_csv: Path, tmp_path: Path
):
    """The fold-in step the flows call, pointed at the cluster by the spec's address: each of
    the two `dask worker` processes solves a chunk of the changed users, and the factors are
    the local fold-in's bit for bit (the recompute stays in the retrain process)."""
    local = parse_spec(als_spec_dict(taste_csv, tmp_path / "local"))
    on_cluster = parse_spec(
        als_spec_dict(
            taste_csv,
            tmp_path / "cluster",
            **{"compute.engine": "dask", "compute.scheduler": scheduler},
        )
    )
    first_day, later_day = pd.Timestamp("2024-01-25"), pd.Timestamp("2024-01-29")
    folded = {}
    for name, spec in (("local", local), ("cluster", on_cluster)):
        champion = champion_of(als.fit(spec, prepare(spec, first_day), scratch_plan("first"), None))
        plan = als.plan("stateful", spec, champion)
        assert plan.strategy == "foldin"
        with distributed.get_task_stream(client=observer) as stream:
            folded[name] = als.fit(spec, prepare(spec, later_day), plan, champion).model
        chunks = {t["worker"] for t in stream.data if FOLDIN_TASK in str(t["key"])}
        if name == "local":
            assert not chunks  # the local spec never reaches the cluster
        else:
            assert chunks == set(observer.scheduler_info()["workers"])  # both workers solved

    assert folded["cluster"].strategy == "foldin" and folded["cluster"].updated_users_.size > 1
    np.testing.assert_array_equal(folded["cluster"].user_factors_, folded["local"].user_factors_)
    np.testing.assert_array_equal(folded["cluster"].item_factors_, folded["local"].item_factors_)
