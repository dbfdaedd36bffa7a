"""Errors raised by the retrain domain library. Every message names the problem and the fix."""

from __future__ import annotations


class RetrainError(Exception):
    """Base class of every error raised by ``retrain``."""


class SpecError(RetrainError):
    """The model spec (config file) is invalid."""


class DataError(RetrainError):
    """The source data cannot be used as it is."""


class SchemaError(DataError):
    """A column is missing, of the wrong type or does not parse."""


class EmptyWindowError(DataError):
    """A training or holdout window holds no usable rows."""


class CacheError(RetrainError):
    """The feature cache cannot be read or written where it is configured."""


class LedgerError(RetrainError):
    """The ledger database is unusable (not migrated, unreachable, inconsistent)."""


class LedgerUnreachable(LedgerError):
    """The ledger database does not answer (down, wrong host or port, refused)."""


class TrainingError(RetrainError):
    """A trainer was given data it cannot learn from."""


class SchemaChangeError(TrainingError):
    """The features changed between the champion's data and the new data: no warm start."""


class NoTreesAddedError(TrainingError):
    """A warm increment could not grow a single tree from the champion (nothing learned)."""


class NotFittedError(TrainingError):
    """A trainer was used before ``fit``."""


class BacktestError(RetrainError):
    """Champion and candidate cannot be compared fairly."""


class FoldInError(TrainingError):
    """A fold-in cannot start from this init model: recompute from scratch instead."""


class LookAheadError(RetrainError):
    """The simulator was asked for data after the current step's cutoff."""


class SimulationError(RetrainError):
    """A retraining-policy simulation cannot run as configured."""


class LiveError(RetrainError):
    """A live test (routing, online evaluation) cannot run or decide as asked."""
