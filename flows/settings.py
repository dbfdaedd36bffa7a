"""Environment variables are read here, at the edge, and nowhere else."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # retrain.config imports pandas: not at import time (`retrain --help`)
    from retrain.config import ModelSpec

ENV_OVERRIDES = {
    "RETRAIN_STATE_DIR": "state.dir",
    "RETRAIN_LEDGER_URL": "state.ledger_url",
    "RETRAIN_TRACKING_URI": "state.tracking_uri",
    # shared state on object storage; s3fs and MLflow read AWS_* and MLFLOW_S3_ENDPOINT_URL
    "RETRAIN_CACHE_URL": "state.cache_url",
    "RETRAIN_ARTIFACT_URL": "state.artifact_url",
}


def env_overrides(environ: dict[str, str] | None = None) -> dict[str, Any]:
    env = os.environ if environ is None else environ
    return {key: env[name] for name, key in ENV_OVERRIDES.items() if env.get(name)}


def resolve_spec(spec_path: str | Path, overrides: dict[str, Any] | None = None) -> ModelSpec:
    """The spec file, then environment variables, then explicit overrides (strongest)."""
    from retrain.config import load_spec

    merged = {**env_overrides(), **(overrides or {})}
    return load_spec(spec_path, overrides=merged)
