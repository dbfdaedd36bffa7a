"""Where a LightGBM fit runs: in this process, or on a Dask cluster (spec ``[compute]``).

With ``compute.engine = "dask"`` the training window is read from the feature cache as a Dask
DataFrame (each worker opens its files, on object storage when ``state.cache_url`` is a URL)
and LightGBM trains distributed over the workers. The result is the same plain LightGBM model
as a local fit: the rest of a retrain (backtest, registry, serving) does not know where it ran.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from retrain.config import ModelSpec
from retrain.features import FeatureCache, Window
from retrain.trainers.lightgbm import LightGBMTrainer

logger = logging.getLogger(__name__)


def fit_on_dask(
    spec: ModelSpec, window: Window, trainer: LightGBMTrainer, client: Any = None
) -> tuple[LightGBMTrainer, np.ndarray]:
    """Fit ``trainer``'s configuration on ``window`` by LightGBM's distributed training on Dask.

    ``client``: a ``distributed.Client`` to use; None connects to ``compute.scheduler`` (or
    starts a LocalCluster of ``compute.workers`` processes for this fit). Returns the fitted
    model (a plain :class:`LightGBMTrainer`) and the training labels.
    """
    from retrain.trainers.lightgbm_dask import DaskLightGBMTrainer, dask_client

    target = client if client is not None else spec.compute.scheduler
    with dask_client(target, workers=spec.compute.workers) as dask:
        cache = FeatureCache(spec.state.features, spec)
        frame = cache.dask_frame(window.partitions, client=dask)
        X, y = frame[list(spec.features.columns)], frame[spec.label]
        dist = DaskLightGBMTrainer(
            task=trainer.task,
            params=trainer.params,
            num_boost_round=trainer.num_boost_round,
            categorical=trainer.categorical,
            random_state=trainer.random_state,
            strategy=trainer.strategy,
            init_model=trainer.init_model,
            refit_decay_rate=trainer.refit_decay_rate,
            reference_rows=trainer.reference_rows,
            client=dask,
        ).fit(X, y)
        labels = y.compute().to_numpy(dtype="float64")
    return dist.to_local(), labels
