"""MLflow pyfunc wrappers: LightGBM scores raw feature frames with its frozen encodings; ALS
answers "top-k items for these users"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.pyfunc import PythonModel

from retrain.trainers import ALSTrainer, LightGBMTrainer


class LightGBMModel(PythonModel):
    """Loads the saved :class:`~retrain.trainers.LightGBMTrainer` from the model's artifacts."""

    def load_context(self, context: Any) -> None:
        self.trainer = LightGBMTrainer.load(Path(context.artifacts["trainer"]))

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        # Untyped on purpose: MLflow would infer (and warn about) a signature from hints.
        return self.trainer.predict(model_input)


class ALSModel(PythonModel):
    """Top-k items for external user ids, from the saved :class:`~retrain.trainers.ALSTrainer`.

    Input: a DataFrame with a ``user`` column (or a list of ids); ``params={"k": 10}``. Output:
    ``user, rank, item, score, source``; ``source`` is ``als`` for users the model knows and
    ``popularity`` for the fallback (unknown users: the most popular items of the last
    ``popularity_window`` of training).
    """

    def load_context(self, context: Any) -> None:
        self.trainer = ALSTrainer.load(Path(context.artifacts["trainer"]))

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        users = model_input["user"] if isinstance(model_input, pd.DataFrame) else model_input
        k = int((params or {}).get("k", 10))
        # the ids are kept as strings (see retrain.families.als.interactions)
        return self.trainer.recommend([str(u) for u in users], k=k)
