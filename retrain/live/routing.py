"""Which arm answers a request: sticky by the hash of its routing key.

>>> bucket("m", "user-7") == bucket("m", "user-7")
True
>>> route("off", "m", "k", has_challenger=True)
Route(arm='champion', shadow=False, interleave=False)
>>> route("shadow", "m", "k", has_challenger=True)
Route(arm='champion', shadow=True, interleave=False)
>>> route("canary", "m", "k", has_challenger=False, share=0.99)
Route(arm='champion', shadow=False, interleave=False)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

Arm = Literal["champion", "challenger"]
ARMS: tuple[Arm, Arm] = ("champion", "challenger")


@dataclass(frozen=True)
class Route:
    """The arm that answers; ``shadow``: the other arm scores the request off the response path;
    ``interleave``: both lists are mixed into one answer."""

    arm: Arm | Literal["interleaved"]
    shadow: bool = False
    interleave: bool = False


def bucket(model: str, key: str) -> float:
    """A uniform number in [0, 1) fixed by (model, key): the same key always lands the same."""
    digest = hashlib.sha256(f"{model}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def route(
    routing: str,
    model: str,
    key: str,
    *,
    has_challenger: bool,
    share: float = 0.05,
) -> Route:
    """The route of one request. ``share`` is the challenger's share (canary, ab, bandit).

    Without a live challenger every request goes to the champion, whatever the routing.
    """
    if not has_challenger or routing == "off":
        return Route("champion")
    if routing == "shadow":
        return Route("champion", shadow=True)
    if routing == "interleave":
        return Route("interleaved", interleave=True)
    if routing in ("canary", "ab", "bandit"):
        return Route("challenger" if bucket(model, key) < share else "champion")
    raise ValueError(
        f"unknown routing {routing!r}: use off, shadow, canary, ab, interleave, bandit"
    )
