"""MLflow artifacts on object storage: a real SeaweedFS S3 server started by the session."""

from __future__ import annotations

import uuid

import pytest

from registry import ModelRegistry
from tests.registry.conftest import FEATURES

pytestmark = pytest.mark.slow  # starts a SeaweedFS server (once per session)


@pytest.fixture
def s3_registry(s3_env, tracking_uri, ledger) -> ModelRegistry:
    root = f"s3://{s3_env.bucket}/mlartifacts-{uuid.uuid4().hex[:8]}"
    return ModelRegistry(tracking_uri, f"s3reg-{uuid.uuid4().hex[:8]}", ledger, artifact_root=root)


def test_a_candidates_model_and_evidence_are_written_to_the_bucket(
    s3_env, s3_registry, make_record
):
    version = s3_registry.register_candidate(make_record(), actor="test")

    run = s3_registry.client.get_run(s3_registry.version(version).run_id)
    assert run.info.artifact_uri.startswith(
        f"{s3_registry.artifact_root}/{s3_registry.model_name}/"
    )
    prefix = run.info.artifact_uri.removeprefix(f"s3://{s3_env.bucket}/")
    listing = s3_env.client().list_objects_v2(Bucket=s3_env.bucket, Prefix=prefix)
    stored = {obj["Key"].removeprefix(prefix + "/") for obj in listing.get("Contents", [])}
    assert "model/MLmodel" in stored
    assert "evidence/backtest.csv" in stored


def test_a_version_on_s3_loads_back_and_predicts_like_the_fitted_trainer(
    s3_env, s3_registry, make_record, fitted, small_frame
):
    version = s3_registry.register_candidate(make_record(), actor="test")

    loaded = s3_registry.load_model(version)

    X = small_frame[FEATURES].assign(weathersit=small_frame["weathersit"].astype(str))
    assert (loaded.predict(X) == fitted.predict(X)).all()
