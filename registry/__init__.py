"""registry: the only package that talks to MLflow (tracking, model registry, aliases, audit)."""

from registry.client import CandidateRecord, ModelRegistry
from registry.errors import DecisionFinal, PromotionRefused, RegistryError

__all__ = [
    "CandidateRecord",
    "DecisionFinal",
    "ModelRegistry",
    "PromotionRefused",
    "RegistryError",
]
