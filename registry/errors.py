"""Errors raised by the registry layer."""

from __future__ import annotations


class RegistryError(Exception):
    """Base class of registry errors."""


class TrackingUnreachable(RegistryError):
    """The MLflow tracking server does not answer (after its retries)."""


class PromotionRefused(RegistryError):
    """An alias move that would break the invariant: champion = gated and approved version."""


class VersionNotFound(RegistryError):
    """A model version or alias does not exist."""


class UntrustedModel(RegistryError):
    """A version whose model lives outside this registry's store: it is never loaded."""


class DecisionFinal(RegistryError):
    """A second gate/approval decision for a version that already has one."""
