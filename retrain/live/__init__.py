"""Live testing: routing of champion and challenger traffic, and online decisions. Pure, no I/O.

``routing`` assigns a request to an arm (shadow, canary, ab, interleave, bandit), ``interleave``
mixes two ranked lists (team draft) and credits clicks, ``stats`` holds the tests (confidence
intervals, sample size, mSPRT, Thompson sampling), ``outcomes`` turns logged predictions and
feedback into per-request outcomes, and ``decide`` makes the frozen :class:`LiveDecision` that
the online evaluation carries out through the same promotion invariant as a backtest.
"""

from retrain.live.decide import ArmSummary, LiveDecision, evaluate, promotion_decision
from retrain.live.outcomes import Outcome, outcomes
from retrain.live.routing import Route, bucket, route

__all__ = [
    "ArmSummary",
    "LiveDecision",
    "Outcome",
    "Route",
    "bucket",
    "evaluate",
    "outcomes",
    "promotion_decision",
    "route",
]
