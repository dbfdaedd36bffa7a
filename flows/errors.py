"""Errors raised at the flow / CLI edge."""

from __future__ import annotations


class FlowError(Exception):
    """Base class of flow-layer errors."""


class ApprovalError(FlowError):
    """The approval step could not be carried out."""
