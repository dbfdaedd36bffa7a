"""Errors of the serving gateway."""

from __future__ import annotations


class GatewayError(Exception):
    """Base class of gateway errors."""


class BadRequest(GatewayError):
    """A request the gateway cannot answer as sent: the message names the fix."""


class NotReady(GatewayError):
    """A model has no champion loaded (yet)."""
