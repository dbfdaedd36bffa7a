"""Model-from-code entry point that MLflow stores with every LightGBM model version."""

import mlflow

from registry.pyfunc import LightGBMModel

mlflow.models.set_model(LightGBMModel())
