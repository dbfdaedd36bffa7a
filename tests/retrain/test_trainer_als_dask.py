"""An ALS fold-in whose users are solved on a Dask LocalCluster of two worker processes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retrain.config import parse_spec
from retrain.families.als import fit, plan
from retrain.families.spine import prepare
from retrain.stateful import scratch
from retrain.trainers import ALSTrainer
from tests.conftest import als_spec_dict
from tests.retrain.families.test_als import champion_of
from tests.retrain.test_trainer_als import SMALL, fresh_history, increment, taste_data

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


@pytest.fixture(scope="module")
def base() -> pd.DataFrame:
    return taste_data(n_users=60)


@pytest.mark.parametrize("solver", ["exact", "cg"])
@pytest.mark.parametrize("data", ["history", "increment"])
def test_a_fold_in_solved_on_dask_workers_gives_the_serial_factors_bit_for_bit(
    client, base, solver, data
):
    champion = ALSTrainer(**SMALL, foldin_solver=solver).fit(base)
    rows = fresh_history(base) if data == "history" else increment()
    options = {**SMALL, "strategy": "foldin", "init_model": champion, "foldin_solver": solver}

    serial = ALSTrainer(**options, foldin_data=data).fit(rows)
    on_dask = ALSTrainer(**options, foldin_data=data, client=client).fit(rows)

    assert on_dask.updated_users_.size > 1  # more than one user solved, over two workers
    np.testing.assert_array_equal(on_dask.user_factors_, serial.user_factors_)
    np.testing.assert_array_equal(on_dask.item_factors_, serial.item_factors_)
    np.testing.assert_array_equal(on_dask.updated_users_, serial.updated_users_)


def test_the_fold_in_step_of_a_dask_spec_folds_in_on_the_workers_and_recomputes_locally(
    taste_csv: Path, tmp_path: Path, project_logs
):
    local = parse_spec(als_spec_dict(taste_csv, tmp_path / "local"))
    dask = parse_spec(als_spec_dict(taste_csv, tmp_path / "dask", **{"compute.engine": "dask"}))
    first_day, later_day = pd.Timestamp("2024-01-25"), pd.Timestamp("2024-01-29")
    trained = {
        name: fit(spec, prepare(spec, first_day), scratch("first"), None)
        for name, spec in (("local", local), ("dask", dask))
    }
    np.testing.assert_array_equal(  # the recompute ran in this process either way
        trained["dask"].model.user_factors_, trained["local"].model.user_factors_
    )
    folded = {}
    for name, spec in (("local", local), ("dask", dask)):
        champion = champion_of(trained[name])
        folded[name] = fit(
            spec, prepare(spec, later_day), plan("stateful", spec, champion), champion
        ).model

    assert folded["dask"].strategy == "foldin" and folded["dask"].client is None
    solved_on_dask = [r.message for r in project_logs.records if "Dask worker" in r.message]
    assert solved_on_dask, "the fold-in solved no user on the Dask workers"
    np.testing.assert_array_equal(folded["dask"].user_factors_, folded["local"].user_factors_)
    np.testing.assert_array_equal(folded["dask"].item_factors_, folded["local"].item_factors_)
