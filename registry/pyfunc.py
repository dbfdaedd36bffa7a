"""MLflow pyfunc wrappers of model versions logged before models became self-contained.

Those versions' model code is ``from registry.pyfunc import LightGBMModel`` (or ``ALSModel``),
so they load only where retrain is installed; newer versions carry their own code
(``registry/lightgbm_model_code.py`` and ``registry/als_model_code.py`` with
``retrain_servable``). Kept so that the older versions of a registry still load.
"""

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
        return self.trainer.predict(model_input)


class ALSModel(PythonModel):
    """Top-k items for external user ids, from the saved :class:`~retrain.trainers.ALSTrainer`."""

    def load_context(self, context: Any) -> None:
        self.trainer = ALSTrainer.load(Path(context.artifacts["trainer"]))

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        users = model_input["user"] if isinstance(model_input, pd.DataFrame) else model_input
        k = int((params or {}).get("k", 10))
        return self.trainer.recommend([str(u) for u in users], k=k)
