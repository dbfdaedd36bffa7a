"""A spec's [compute] table: the same retrain step trains in-process or on a Dask cluster."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from retrain.backtest import score
from retrain.compute import fit_on_dask
from retrain.config import parse_spec
from retrain.errors import SpecError
from retrain.families.lightgbm import fit, make_trainer
from retrain.families.spine import prepare
from retrain.features import FeatureCache
from tests.conftest import spec_dict

distributed = pytest.importorskip("distributed")
AS_OF = pd.Timestamp("2011-04-29")


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def dask_spec(bike_dir: Path, state: Path, **overrides):
    return parse_spec(spec_dict(bike_dir, state, **{"compute.engine": "dask", **overrides}))


def test_a_dask_fit_of_the_training_window_scores_like_the_local_fit(
    client, bike_dir, bike_spec, tmp_path
):
    spec = dask_spec(bike_dir, tmp_path / "dask-state")
    prepared = prepare(spec, AS_OF)
    local = fit(bike_spec, prepare(bike_spec, AS_OF))

    model, y = fit_on_dask(spec, prepared.train, make_trainer(spec), client=client)

    holdout = FeatureCache(spec.state.features, spec).load(prepared.holdout.partitions)
    X_h, y_h = holdout[list(spec.features.columns)], holdout[spec.label].to_numpy()
    assert len(y) == local.rows == prepared.train.rows
    assert model.categories_ == local.model.categories_
    dask_mae = score("mae", y_h, model.predict(X_h))
    local_mae = score("mae", y_h, local.model.predict(X_h))
    assert dask_mae == pytest.approx(local_mae, rel=0.15)


def test_a_bad_cached_file_is_healed_before_the_workers_train_on_it(
    client, bike_dir, tmp_path, project_logs
):
    spec = dask_spec(bike_dir, tmp_path / "state")
    prepared = prepare(spec, AS_OF)
    cache = FeatureCache(spec.state.features, spec)
    part = prepared.train.partitions[3]
    path = Path(cache.path_for(part))
    path.write_bytes(path.read_bytes()[:100])

    frame = cache.dask_frame(prepared.train.partitions, client=client)

    assert len(frame) == prepared.train.rows
    assert f"recomputing partition {part.key}" in project_logs.text


def test_an_als_spec_may_fold_in_on_dask(taste_csv, tmp_path):
    from tests.conftest import als_spec_dict

    spec = parse_spec(als_spec_dict(taste_csv, tmp_path / "state", **{"compute.engine": "dask"}))

    assert spec.compute.engine == "dask"  # fold-ins solve their users on the workers


def test_a_scheduler_that_is_not_an_address_is_a_spec_error(bike_dir, tmp_path):
    with pytest.raises(SpecError, match=r"compute\.scheduler: must be a scheduler address"):
        dask_spec(bike_dir, tmp_path, **{"compute.scheduler": "localhost"})
