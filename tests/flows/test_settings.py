"""Settings read from the environment at the edge: the machine-wide model environment cache."""

from __future__ import annotations

from pathlib import Path

from flows.settings import model_env_cache


def test_model_environments_are_cached_in_the_users_cache_directory_for_the_whole_machine():
    assert model_env_cache({"XDG_CACHE_HOME": "/var/cache/me"}) == Path(
        "/var/cache/me/retrain/model-envs"
    )
    assert model_env_cache({}) == Path.home() / ".cache" / "retrain" / "model-envs"


def test_the_model_environment_cache_can_be_put_elsewhere():
    chosen = {"RETRAIN_MODEL_ENV_CACHE": "/srv/envs", "XDG_CACHE_HOME": "/var/cache/me"}
    assert model_env_cache(chosen) == Path("/srv/envs")
