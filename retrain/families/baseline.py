"""The trivial baselines every backtest scores, as models of their own (DESIGN: baselines first).

Tabular families: the training window's mean (regression), majority class (binary, multiclass)
or positive rate / class priors (with a probability metric: logloss, multi_logloss), see
:func:`retrain.backtest.baseline_predictions`.
Ranking families: the most popular items of the recent past
(:class:`retrain.trainers.popularity.PopularityRecommender`). A family's ``baseline`` step
returns one of these, fitted on the training window.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from retrain.backtest import baseline_predictions
from retrain.errors import TrainingError
from retrain.trainers.popularity import PopularityRecommender


class BaselineModel:
    """Predicts the training labels' mean, majority class or positive rate.

    sklearn style: ``__init__`` stores, ``fit`` validates and learns ``y_train_``.

    >>> BaselineModel("regression").fit(pd.DataFrame(), np.array([1.0, 3.0])).predict(
    ...     pd.DataFrame(index=range(2)))
    array([2., 2.])
    """

    y_train_: np.ndarray

    def __init__(
        self, task: str = "regression", metric: str | None = None, n_classes: int = 0
    ) -> None:
        self.task = task
        self.metric = metric
        self.n_classes = n_classes

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> BaselineModel:
        y = np.asarray(y, dtype="float64")
        if y.size == 0:
            raise TrainingError("the baseline needs at least one training row")
        self.y_train_ = y
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return baseline_predictions(self.task, self.y_train_, len(X), self.metric, self.n_classes)


def popularity(
    interactions: pd.DataFrame, window: str, min_rating: float | None
) -> PopularityRecommender:
    """The ranking baseline fitted on a ``user, item, weight, ts`` table."""
    return PopularityRecommender(window, min_rating).fit(interactions)
