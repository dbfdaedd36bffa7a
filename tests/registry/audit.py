"""Helpers of the alias-change tests: fault injection and the audit replay."""

from __future__ import annotations

from collections.abc import Callable

from registry import ModelRegistry


class Injected(Exception):
    """The fault a test injects into an alias change."""


def fail_at(step: int) -> Callable[[int, str], None]:
    def hook(at: int, what: str) -> None:
        if at == step:
            raise Injected(f"injected fault before step {at} ({what})")

    return hook


def audit_replays_to_aliases(registry: ModelRegistry) -> None:
    """Each audit row starts where the previous one of its alias ended, and the last rows
    are where the registry's aliases are."""
    state: dict[str, str | None] = {}
    for row in registry.ledger.alias_history(registry.model_name):
        assert row["from_version"] == state.get(row["alias"]), (row, state)
        state[row["alias"]] = row["to_version"]
    assert {a: v for a, v in state.items() if v is not None} == registry.aliases()
