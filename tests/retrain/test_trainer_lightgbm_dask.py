"""LightGBM distributed over a LocalCluster of two worker processes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retrain.backtest import score
from retrain.errors import TrainingError
from retrain.trainers import LightGBMTrainer
from retrain.trainers.lightgbm_dask import DaskLightGBMTrainer, place_partitions
from tests.retrain.test_trainer_lightgbm import SMALL, make_data

dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def as_dask(X: pd.DataFrame, y: np.ndarray, parts: int = 2):
    frame = X.assign(__y=y)
    ddf = dd.from_pandas(frame, npartitions=parts)
    return ddf[list(X.columns)], ddf["__y"]


def options(**kwargs):
    out = {"params": dict(SMALL), "num_boost_round": 30, "categorical": ["cat"]}
    out.update(kwargs)
    return out


def test_a_dask_fit_learns_as_well_as_the_local_trainer_with_the_same_categories(client):
    X, y = make_data(2000, seed=1)
    X_test, y_test = make_data(500, seed=2)
    local = LightGBMTrainer(**options()).fit(X, y)

    dist = DaskLightGBMTrainer(**options(), client=client).fit(*as_dask(X, y))

    assert dist.categories_ == local.categories_ == {"cat": ["a", "b", "c"]}
    assert dist.booster_.num_trees() == 30
    assert dist.n_train_rows_ == 2000
    local_mae = score("mae", y_test, local.predict(X_test))
    dist_mae = score("mae", y_test, dist.predict(X_test))
    assert dist_mae == pytest.approx(local_mae, rel=0.10)
    assert dist.evals_result_["train"]["l2"][-1] < dist.evals_result_["train"]["l2"][0]


def test_a_warm_start_continues_the_champion_with_its_frozen_categories(client, tmp_path: Path):
    X, y = make_data(1500, seed=3)
    champion = LightGBMTrainer(**options()).fit(X, y)
    X_new, y_new = make_data(1500, seed=4)
    X_new.loc[X_new.index[:50], "cat"] = "z"  # a category the champion never saw

    warm = DaskLightGBMTrainer(
        **options(num_boost_round=10), strategy="warm", init_model=champion, client=client
    ).fit(*as_dask(X_new, y_new))

    assert warm.booster_.num_trees() == champion.booster_.num_trees() + 10
    assert warm.categories_ == champion.categories_  # "z" is scored as missing, not a new code
    assert warm.increments_ == 1
    pd.testing.assert_frame_equal(warm.reference_, champion.reference_)
    # the first trees are the champion's own
    champ_trees = champion.booster_.trees_to_dataframe()
    warm_trees = warm.booster_.trees_to_dataframe()
    first = warm_trees[warm_trees["tree_index"] < champion.booster_.num_trees()]
    pd.testing.assert_frame_equal(
        first.reset_index(drop=True)[["tree_index", "split_feature", "threshold"]],
        champ_trees[["tree_index", "split_feature", "threshold"]],
    )
    # a saved Dask-trained model is a plain LightGBM model, loaded without Dask
    loaded = LightGBMTrainer.load(warm.to_local().save(tmp_path / "model"))
    np.testing.assert_array_equal(loaded.predict(X_new), warm.predict(X_new))


def test_refit_has_no_distributed_form_and_says_what_to_use(client):
    X, y = make_data(300)
    champion = LightGBMTrainer(**options()).fit(X, y)
    with pytest.raises(TrainingError, match="'refit' has no distributed form"):
        DaskLightGBMTrainer(**options(), strategy="refit", init_model=champion, client=client).fit(
            *as_dask(X, y)
        )


def test_a_pandas_frame_is_refused_with_the_fix(client):
    X, y = make_data(300)
    with pytest.raises(TrainingError, match="fits a Dask DataFrame"):
        DaskLightGBMTrainer(**options(), client=client).fit(X, y)


def test_missing_labels_anywhere_in_the_frame_are_refused(client):
    X, y = make_data(400)
    y[-3] = np.nan  # in the last Dask partition, not the first
    with pytest.raises(TrainingError, match="missing labels"):
        DaskLightGBMTrainer(**options(), client=client).fit(*as_dask(X, y, parts=4))


def test_partitions_are_placed_on_the_workers_in_a_fixed_layout(client):
    X, y = make_data(70)
    X_d, y_d = as_dask(X, y, parts=7)  # 10 rows each
    workers = sorted(client.scheduler_info()["workers"])

    X_p, y_p = place_partitions(client, X_d, y_d)

    # one partition per worker: the k-th worker holds input partitions k, k+2, k+4, ... in order
    assert X_p.npartitions == y_p.npartitions == len(workers) == 2
    for k, (x_part, y_part) in enumerate(zip(X_p.to_delayed(), y_p.to_delayed(), strict=True)):
        expected = pd.concat([X_d.partitions[i].compute() for i in range(k, 7, 2)])
        pd.testing.assert_frame_equal(x_part.compute(), expected)
        assert y_part.compute().index.equals(expected.index)
    held = client.run(
        lambda dask_worker: sorted(
            len(value)
            for key, value in dask_worker.data.items()
            if "_features" in str(key) or "_label" in str(key)
        )
    )
    assert [held[w] for w in workers] == [[40, 40], [30, 30]]  # features and labels together


def thresholds(model, feature: str, first_tree: int = 0) -> set[float]:
    trees = model.booster_.trees_to_dataframe()
    mine = trees[(trees["tree_index"] >= first_tree) & (trees["split_feature"] == feature)]
    return set(mine["threshold"].round(12))


def narrow_increment(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """x1 only within [0, 0.05] and y steep in it: its own bins would be far finer than the
    champion's (binned on x1 over [0, 1])."""
    X, _ = make_data(n, seed=seed)
    X["x1"] = X["x1"] * 0.05
    return X, 2000 * X["x1"].to_numpy() + np.random.default_rng(seed).normal(0, 1, n)


def test_a_warm_increment_on_dask_splits_on_the_champions_bins_as_the_local_trainer_does(client):
    X, y = make_data(2000, seed=5)
    champion = LightGBMTrainer(**options()).fit(X, y)
    X_new, y_new = narrow_increment(2000, seed=6)
    warm = options(num_boost_round=15, params={**SMALL, "num_leaves": 15})

    local = LightGBMTrainer(**warm, strategy="warm", init_model=champion).fit(X_new, y_new)
    dist = DaskLightGBMTrainer(**warm, strategy="warm", init_model=champion, client=client).fit(
        *as_dask(X_new, y_new)
    )
    scratch = LightGBMTrainer(**warm).fit(X_new, y_new)  # bins of its own on the narrow rows

    first = champion.booster_.num_trees()
    frozen = thresholds(dist, "x1", first)
    assert frozen == thresholds(local, "x1", first)
    # the champion's bins are coarse over [0, 0.05]; the increment's own bins would not be
    assert len(thresholds(scratch, "x1")) > 2 * len(frozen)


def test_a_dask_fit_repeats_exactly_on_the_same_data_and_workers(client):
    X, y = make_data(3000, seed=7)
    champion = LightGBMTrainer(**options()).fit(X, y)
    X_new, y_new = make_data(3000, seed=8)

    def trees(model) -> str:  # the model text without its parameters (ports differ per fit)
        return model.model_string().split("\nparameters:")[0]

    scratch = [
        trees(DaskLightGBMTrainer(**options(), client=client).fit(*as_dask(X, y, parts=5)))
        for _ in range(2)
    ]
    warm = [
        trees(
            DaskLightGBMTrainer(
                **options(num_boost_round=10), strategy="warm", init_model=champion, client=client
            ).fit(*as_dask(X_new, y_new, parts=5))
        )
        for _ in range(3)
    ]
    assert scratch[0] == scratch[1]
    assert warm[0] == warm[1] == warm[2]
