"""Model-from-code entry point that MLflow stores with every ALS model version."""

import mlflow

from registry.pyfunc import ALSModel

mlflow.models.set_model(ALSModel())
