"""registry: the only package that talks to MLflow (tracking, model registry, aliases, audit)."""

from registry.client import CandidateRecord, ModelRegistry
from registry.errors import PromotionRefused, RegistryError

__all__ = ["CandidateRecord", "ModelRegistry", "PromotionRefused", "RegistryError"]
