"""The champion rule outside retrain: do the registry's aliases say what retrain's audit says?

MLflow lets anyone with access to the registry move an alias (the UI's alias editor,
``MlflowClient.set_registered_model_alias``); retrain audits every alias change it makes. An alias
whose registry version is not the one the last audited change put there was moved outside
retrain: :func:`alias_drift` finds it, the caller flags it (``retrain status``), emits an event
and, if configured, moves it back (the monitor flow).

>>> alias_drift({"champion": "3"}, {"champion": "2", "previous": "1"})
(AliasDrift(alias='champion', registry_version='3', audited_version='2'), \
AliasDrift(alias='previous', registry_version=None, audited_version='1'))
>>> alias_drift({"champion": "2"}, {"champion": "2", "challenger": None})
()
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

WATCHED = ("champion", "previous", "challenger")


@dataclass(frozen=True)
class AliasDrift:
    """An alias that is not where retrain's audit last put it (None: unset / removed)."""

    alias: str
    registry_version: str | None
    audited_version: str | None

    def describe(self, model: str) -> str:
        now = "unset" if self.registry_version is None else f"v{self.registry_version}"
        was = "unset" if self.audited_version is None else f"v{self.audited_version}"
        return (
            f"{model}: alias {self.alias} is {now} in the registry but {was} in retrain's audit: "
            "it was moved outside retrain"
        )


def alias_drift(
    registry: Mapping[str, str],
    audited: Mapping[str, str | None],
    watched: Sequence[str] = WATCHED,
) -> tuple[AliasDrift, ...]:
    """Every watched alias whose registry version differs from its last audited one."""
    return tuple(
        AliasDrift(alias, registry.get(alias), audited.get(alias))
        for alias in watched
        if registry.get(alias) != audited.get(alias)
    )
