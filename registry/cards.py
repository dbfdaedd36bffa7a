"""The model card in MLflow: a markdown file among the artifacts of the version's run."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from mlflow.exceptions import MlflowException

from registry.client import ModelRegistry, reachable

logger = logging.getLogger(__name__)

CARD_FILE = "model_card.md"


@reachable
def log_card(registry: ModelRegistry, version: str, markdown: str) -> None:
    """Write (or replace) ``model_card.md`` on the run that logged ``version``."""
    run_id = registry.run_of(version)
    if run_id is None:
        logger.warning("version %s of %s has no run: its card is not logged", version, registry)
        return
    registry.client.log_text(run_id, markdown, CARD_FILE)


@reachable
def read_card(registry: ModelRegistry, version: str) -> str:
    """The card of ``version`` as logged ("" when it has none)."""
    run_id = registry.run_of(version)
    if run_id is None:
        return ""
    with tempfile.TemporaryDirectory(prefix="retrain-card-") as tmp:
        try:
            path = registry.client.download_artifacts(run_id, CARD_FILE, tmp)
        except MlflowException:
            return ""
        return Path(path).read_text(encoding="utf-8")
