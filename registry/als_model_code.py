"""Model-from-code entry point that MLflow stores with every ALS model version.

It imports only mlflow and ``retrain_servable`` (a copy of ``retrain/servable.py`` that the
model carries in its ``code`` folder): the version loads and serves without retrain installed.

Input: user ids (strings or integers) in the source's user column or in ``user`` (or a list of
ids); ``params={"k": 10}``. Output: ``user, rank, item, score, source``; ``source`` is ``als``
for users the model knows and ``popularity`` for the fallback (unknown users: the most popular
items of the last ``popularity_window`` of training).
"""

import mlflow
import retrain_servable
from mlflow.pyfunc import PythonModel


class ALSModel(PythonModel):
    """Top-k items for raw user ids, from the saved factors and id maps."""

    def load_context(self, context):  # type: ignore[no-untyped-def]
        self.model = retrain_servable.RecommenderModel.load(
            context.artifacts["trainer"], context.artifacts.get("inputs")
        )

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        return self.model.predict(model_input, k=int((params or {}).get("k", 10)))


mlflow.models.set_model(ALSModel())
