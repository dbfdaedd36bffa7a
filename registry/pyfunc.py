"""MLflow pyfunc wrapper: the logged model scores raw feature frames with its frozen encodings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow.pyfunc import PythonModel

from retrain.trainers import LightGBMTrainer


class LightGBMModel(PythonModel):
    """Loads the saved :class:`~retrain.trainers.LightGBMTrainer` from the model's artifacts."""

    def load_context(self, context: Any) -> None:
        self.trainer = LightGBMTrainer.load(Path(context.artifacts["trainer"]))

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        # Untyped on purpose: MLflow would infer (and warn about) a signature from hints.
        return self.trainer.predict(model_input)
