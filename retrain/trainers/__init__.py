"""Trainers: sklearn-style estimators (``__init__`` stores, ``fit`` validates and returns self)."""

from retrain.trainers.als import ALSTrainer
from retrain.trainers.lightgbm import LightGBMTrainer
from retrain.trainers.popularity import PopularityRecommender

__all__ = ["ALSTrainer", "LightGBMTrainer", "PopularityRecommender"]
