"""Models are loaded only from the configured registry, never from wherever a version points."""

from __future__ import annotations

import mlflow.artifacts
import pytest

from registry import ModelRegistry
from registry.errors import UntrustedModel

REFUSED = r"retrain loads models only from its configured registry"


@pytest.fixture
def copied_model(registry, make_record, tmp_path):
    """A registered version and a byte-identical copy of its model outside the registry."""
    version = registry.register_candidate(make_record(), actor="tester")
    uri = registry.client.get_model_version_download_uri(registry.model_name, version)
    elsewhere = tmp_path / "elsewhere"
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=uri, dst_path=str(elsewhere), tracking_uri=registry.tracking_uri
    )
    return version, local


def test_a_version_registered_by_hand_from_a_folder_is_refused(registry, copied_model):
    _, local = copied_model
    rogue = registry.client.create_model_version(registry.model_name, source=local)

    with pytest.raises(
        UntrustedModel, match=rf"version {rogue.version} .* which no run.*{REFUSED}"
    ):
        registry.load_model(str(rogue.version))


def test_a_version_whose_source_leaves_its_runs_artifacts_is_refused(registry, copied_model):
    version, local = copied_model
    run_id = registry.version(version).run_id
    rogue = registry.client.create_model_version(registry.model_name, source=local, run_id=run_id)

    with pytest.raises(UntrustedModel, match=rf"outside the artifact store of its run.*{REFUSED}"):
        registry.load_model(str(rogue.version))


def test_a_version_logged_by_another_models_run_is_refused(
    registry, make_record, tracking_uri, ledger, tmp_path
):
    other = ModelRegistry(tracking_uri, f"{registry.model_name}-other", ledger, tmp_path / "o")
    theirs = other.version(other.register_candidate(make_record(), actor="someone"))
    registry.register_candidate(make_record(), actor="tester")
    source = other.client.get_model_version_download_uri(other.model_name, theirs.version)
    rogue = registry.client.create_model_version(
        registry.model_name, source=source, run_id=theirs.run_id
    )

    with pytest.raises(UntrustedModel, match=rf"of another experiment.*{REFUSED}"):
        registry.load_model(str(rogue.version))


def test_a_version_retrain_registered_loads(registry, copied_model, fitted):
    version, _ = copied_model

    assert registry.load_model(version).feature_names_ == fitted.feature_names_
