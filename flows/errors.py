"""Errors raised at the flow / CLI edge."""

from __future__ import annotations

from retrain.errors import RetrainError


class FlowError(Exception):
    """Base class of flow-layer errors."""


class ApprovalError(FlowError):
    """The approval step could not be carried out."""


class PrefectUnreachable(FlowError, RetrainError):
    """The Prefect server (PREFECT_API_URL) does not answer, or none is configured (also a
    RetrainError: the callers of ``check_server`` catch that)."""


class CannotWait(FlowError):
    """A run would wait for an approval nobody can give (no Prefect UI, no --auto-approve)."""


class ApprovalNotAllowed(FlowError):
    """The approver is not in the spec's ``gate.approvers`` allow-list."""


class UsageError(FlowError):
    """A command-line option or argument cannot be used as given."""


class SweepRefused(UsageError):
    """A sweep names a model twice, or holds a model that would wait for an operator."""
