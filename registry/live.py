"""The registry side of live testing: which versions may serve, loading them, ending a test.

A challenger takes live traffic only when its backtest gate passed and no promotion decision was
made on it yet; a live test that fails ends it (its decision recorded, the alias removed, both
audited), and one that passes promotes it through :meth:`ModelRegistry.promote` (the invariant).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from typing import Any

import mlflow.pyfunc

from registry.client import (
    APPROVAL_TAG,
    CHALLENGER,
    CHAMPION,
    GATE_TAG,
    ModelRegistry,
    loading_pyfunc,
    reachable,
)
from registry.errors import RegistryError
from retrain.families.lineage import Tag
from retrain.promotion import PromotionDecision

logger = logging.getLogger(__name__)

LIVE_TAG = str(Tag.LIVE)


@dataclass(frozen=True)
class LiveVersions:
    champion: str | None
    challenger: str | None  # None unless it may take live traffic


@reachable
def live_versions(registry: ModelRegistry) -> LiveVersions:
    """Champion, and the challenger if it passed its backtest gate and is still undecided."""
    aliases = registry.aliases()
    champion, challenger = aliases.get(CHAMPION), aliases.get(CHALLENGER)
    if challenger is not None and challenger != champion:
        tags = registry.version(challenger).tags
        if tags.get(GATE_TAG) != "passed" or APPROVAL_TAG in tags:
            challenger = None
    else:
        challenger = None
    return LiveVersions(champion, challenger)


@reachable
def load_servable(registry: ModelRegistry, version: str) -> Any:
    """The version's MLflow pyfunc model (what ``mlflow models serve`` serves), from this
    registry's own store only."""
    with tempfile.TemporaryDirectory(prefix="retrain-serve-") as tmp:
        local = registry.download_trusted(str(version), tmp)
        with loading_pyfunc():
            return mlflow.pyfunc.load_model(local)


@reachable
def record_live_result(registry: ModelRegistry, version: str, summary: str) -> None:
    """The live test's outcome on the version (beside its gate and approval tags)."""
    registry.client.set_model_version_tag(registry.model_name, version, LIVE_TAG, summary[:5000])


@reachable
def end_challenger(
    registry: ModelRegistry,
    decision: PromotionDecision,
    actor: str,
    flow_run_id: str | None = None,
) -> None:
    """A challenger that failed its live test: decision recorded (final), alias removed."""
    if decision.promote:
        raise RegistryError(
            f"version {decision.version} was decided for promotion: promote it, do not end it"
        )
    registry.record_decision(decision)
    if registry.alias_version(CHALLENGER) == decision.version:
        registry._delete_alias(CHALLENGER, actor, decision.reason, flow_run_id)
    logger.info(
        "%s: challenger %s ended: %s", registry.model_name, decision.version, decision.reason
    )
