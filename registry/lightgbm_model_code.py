"""Model-from-code entry point that MLflow stores with every LightGBM model version.

It imports only mlflow and ``retrain_servable`` (a copy of ``retrain/servable.py`` that the
model carries in its ``code`` folder): the version loads and serves without retrain installed.
Input: the source's raw rows (see the version's signature); output: one prediction per row
(a multiclass model: the class; with ``params={"probabilities": True}`` the class and one
probability per class).
"""

import mlflow
import retrain_servable
from mlflow.pyfunc import PythonModel


class LightGBMModel(PythonModel):
    """The booster and its frozen encodings, scoring raw rows (``retrain_servable``)."""

    def load_context(self, context):  # type: ignore[no-untyped-def]
        self.model = retrain_servable.TabularModel.load(
            context.artifacts["trainer"], context.artifacts.get("inputs")
        )

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        # Untyped on purpose: MLflow would infer (and warn about) a signature from hints.
        if (params or {}).get("probabilities"):
            return self.model.predict(model_input, probabilities=True)
        return self.model.predict(model_input)


mlflow.models.set_model(LightGBMModel())
