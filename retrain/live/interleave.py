"""Team-draft interleaving (Radlinski, Kurup & Joachims 2008) of two ranked lists, and its credit.

>>> mixed, teams = team_draft([1, 2, 3], [3, 4, 5], k=4, seed=0)
>>> sorted(set(mixed)) == sorted(set(mixed)) and len(mixed) == 4 and len(set(mixed)) == 4
True
>>> credit(teams, mixed, clicked=[mixed[0]]) in ("champion", "challenger")
True
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from typing import Literal

Team = Literal["champion", "challenger"]


def team_draft(
    champion: Sequence[Hashable], challenger: Sequence[Hashable], k: int, seed: int
) -> tuple[list[Hashable], list[Team]]:
    """One list of ``k`` items and, for each, the team (model) that contributed it.

    Each round the team with fewer picks (a coin flip, seeded, on a tie) adds its best item not
    yet in the list. ``seed`` fixes the coin flips of this request (e.g. a hash of its id).
    """
    rng = random.Random(seed)
    lists: dict[Team, Sequence[Hashable]] = {"champion": champion, "challenger": challenger}
    cursor: dict[Team, int] = {"champion": 0, "challenger": 0}
    picks: dict[Team, int] = {"champion": 0, "challenger": 0}
    mixed: list[Hashable] = []
    teams: list[Team] = []
    seen: set[Hashable] = set()
    while len(mixed) < k:
        if picks["champion"] < picks["challenger"]:
            order: tuple[Team, Team] = ("champion", "challenger")
        elif picks["challenger"] < picks["champion"]:
            order = ("challenger", "champion")
        else:
            order = ("champion", "challenger") if rng.random() < 0.5 else ("challenger", "champion")
        added = False
        for team in order:
            ranked = lists[team]
            while cursor[team] < len(ranked) and ranked[cursor[team]] in seen:
                cursor[team] += 1
            if cursor[team] < len(ranked):
                item = ranked[cursor[team]]
                seen.add(item)
                mixed.append(item)
                teams.append(team)
                picks[team] += 1
                added = True
                break
        if not added:
            break  # both lists exhausted
    return mixed, teams


def credit(
    teams: Sequence[str], items: Sequence[Hashable], clicked: Sequence[Hashable]
) -> Literal["champion", "challenger", "tie"]:
    """The team whose contributed items got more clicks in this impression (or a tie)."""
    clicks = set(clicked)
    score = {"champion": 0, "challenger": 0}
    for item, team in zip(items, teams, strict=True):
        if item in clicks:
            score[team] += 1
    if score["champion"] == score["challenger"]:
        return "tie"
    return "champion" if score["champion"] > score["challenger"] else "challenger"
