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


# infra validation's model environments (registry.infra.model_environment), machine-wide
MODEL_ENV_CACHE = "RETRAIN_MODEL_ENV_CACHE"


def model_env_cache(environ: dict[str, str] | None = None) -> Path:
    """Where infra validation caches its model environments: ``RETRAIN_MODEL_ENV_CACHE``, else
    ``retrain/model-envs`` in the user's cache directory (``XDG_CACHE_HOME``, else
    ``~/.cache``). One cache for every model and state directory of the machine: each
    environment is keyed by its requirements and interpreter and built under a lock."""
    env = os.environ if environ is None else environ
    if env.get(MODEL_ENV_CACHE):
        return Path(env[MODEL_ENV_CACHE]).expanduser()
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "retrain" / "model-envs"


def env_overrides(environ: dict[str, str] | None = None) -> dict[str, Any]:
    env = os.environ if environ is None else environ
    return {key: env[name] for name, key in ENV_OVERRIDES.items() if env.get(name)}


def resolve_spec(spec_path: str | Path, overrides: dict[str, Any] | None = None) -> ModelSpec:
    """The spec file, then environment variables, then explicit overrides (strongest)."""
    from retrain.config import load_spec

    merged = {**env_overrides(), **(overrides or {})}
    return load_spec(spec_path, overrides=merged)
