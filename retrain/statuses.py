"""The closed sets of words retrain accepts and records: retraining modes and statuses.

Each is one ``Literal`` defined here and nowhere else: mypy checks every value written in code,
Prefect validates a flow parameter of such a type before the run starts (a bad ``mode`` is
refused with the allowed values), and the ledger refuses to store any other word. The stored
values are these strings.

>>> MODES
('manual', 'scheduled', 'stateful', 'continual')
>>> live_run_mode("canary")
'live-canary'
>>> run_status("skipped")
'skipped'
>>> run_status("skiped")
Traceback (most recent call last):
...
ValueError: 'skiped' is not a run status: one of running, suspended, promoted, rejected, \
failed, skipped, live
"""

from __future__ import annotations

from typing import Literal, TypeVar, get_args

# The four retraining modes (DESIGN.md); a flow's ``mode`` parameter has this type, so Prefect
# refuses any other value before the run starts.
Mode = Literal["manual", "scheduled", "stateful", "continual"]
MODES: tuple[Mode, ...] = get_args(Mode)
STATEFUL_MODES: tuple[Mode, ...] = ("stateful", "continual")

# the mode of the ledger run that records the online decision of a live test ("live-canary", ...)
LiveRunMode = Literal["live-shadow", "live-canary", "live-ab", "live-interleave", "live-bandit"]
# the mode column of a ledger run: a retraining mode, or the online test that decided
RunMode = Mode | LiveRunMode
RUN_MODES: tuple[str, ...] = MODES + get_args(LiveRunMode)

# A ledger run from start to end: running, suspended (its process gone, waiting for the operator
# with the model's claim kept), then promoted | rejected (gate, operator or timeout) | failed (an
# error, or abandoned by a dead process) | skipped (nothing to do) | live (the gate passed; the
# live test decides, in a run of its own).
RunStatus = Literal["running", "suspended", "promoted", "rejected", "failed", "skipped", "live"]
RUN_STATUSES: tuple[RunStatus, ...] = get_args(RunStatus)
# the statuses that keep the model's claim: a suspended run waits for its operator, no process
HOLDING: tuple[RunStatus, ...] = ("running", "suspended")
# how a run ends
FinalStatus = Literal["promoted", "rejected", "failed", "skipped", "live"]

# An alias change: its intent is pending until the registry's moves are done, or reverted by
# recovery after an interruption.
AliasChangeStatus = Literal["pending", "done", "reverted"]
AliasChangeEnd = Literal["done", "reverted"]
ALIAS_CHANGE_ENDS: tuple[AliasChangeEnd, ...] = get_args(AliasChangeEnd)

# A partition in the ingest manifest: usable, or quarantined with its reason.
PartitionStatus = Literal["ok", "quarantined"]
PARTITION_STATUSES: tuple[PartitionStatus, ...] = get_args(PartitionStatus)

_W = TypeVar("_W", bound=str)


def _one_of(value: str, allowed: tuple[_W, ...], what: str) -> _W:
    for word in allowed:
        if value == word:
            return word
    raise ValueError(f"{value!r} is not {what}: one of {', '.join(allowed)}")


def mode(value: str) -> Mode:
    """``value`` as a retraining mode; ValueError naming the allowed ones otherwise."""
    return _one_of(value, MODES, "a retraining mode")


def run_status(value: str) -> RunStatus:
    """``value`` as a run status; ValueError naming the allowed ones otherwise."""
    return _one_of(value, RUN_STATUSES, "a run status")


def live_run_mode(routing: str) -> LiveRunMode:
    """The ledger mode of a run that records the online decision of a ``routing`` test."""
    return _one_of(f"live-{routing}", get_args(LiveRunMode), "a live test's run mode")
