"""Model-from-code entry point that MLflow stores with every baseline model version.

The trivial baseline of a family (``gate.promote_baseline``): a tabular baseline answers every
raw row with the training window's mean, majority class or positive rate (a multiclass
baseline: the class, with ``params={"probabilities": True}`` also one probability per class);
a ranking baseline answers user ids with the most popular items of the recent past that the
user has not seen (``params={"k": 10}``; output ``user, rank, item, score, source`` with
``source`` = ``popularity``). It imports only mlflow and ``retrain_servable`` (a copy of
``retrain/servable.py`` in the model's ``code`` folder): it loads without retrain installed.
"""

import mlflow
import retrain_servable
from mlflow.pyfunc import PythonModel


class BaselineModel(PythonModel):
    """A saved baseline (``baseline.json`` and its arrays), answering as the family does."""

    def load_context(self, context):  # type: ignore[no-untyped-def]
        self.model = retrain_servable.load_baseline(
            context.artifacts["trainer"], context.artifacts.get("inputs")
        )

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        if isinstance(self.model, retrain_servable.PopularityModel):
            return self.model.predict(model_input, k=int((params or {}).get("k", 10)))
        if (params or {}).get("probabilities"):  # multiclass: the class and its probabilities
            return self.model.predict(model_input, probabilities=True)
        return self.model.predict(model_input)


mlflow.models.set_model(BaselineModel())
