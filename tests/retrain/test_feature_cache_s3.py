"""The feature cache on object storage: a real SeaweedFS S3 server started by the session."""

from __future__ import annotations

import hashlib
import uuid

import pandas as pd
import pytest

from retrain.config import parse_spec
from retrain.features import CHECKSUM_SUFFIX, FeatureCache, compute_features
from retrain.ingest import ingest
from tests.conftest import spec_dict

pytestmark = pytest.mark.slow  # starts a SeaweedFS server (once per session)


@pytest.fixture
def s3_spec(s3_env, four_days, write_source, tmp_path):
    prefix = f"s3://{s3_env.bucket}/cache-{uuid.uuid4().hex[:8]}"
    data = spec_dict(write_source(four_days), tmp_path / "state")
    data["state"]["cache_url"] = prefix
    return parse_spec(data)


def keys(server, prefix: str) -> dict[str, int]:
    listing = server.client().list_objects_v2(Bucket=server.bucket, Prefix=prefix)
    return {obj["Key"]: obj["Size"] for obj in listing.get("Contents", [])}


def test_the_cache_lives_on_s3_and_a_second_materialize_computes_nothing(s3_env, s3_spec):
    partitions = ingest(s3_spec).partitions
    cache = FeatureCache(s3_spec.state.features, s3_spec)

    first = cache.materialize(partitions)
    second = FeatureCache(s3_spec.state.features, s3_spec).materialize(partitions)

    assert len(first.computed) == len(partitions) and first.hits == ()
    assert second.computed == () and len(second.hits) == len(partitions)
    prefix = s3_spec.state.cache_url.removeprefix(f"s3://{s3_env.bucket}/")
    stored = keys(s3_env, prefix)
    assert sum(k.endswith(".parquet") for k in stored) == len(partitions)
    assert sum(k.endswith(CHECKSUM_SUFFIX) for k in stored) == len(partitions)
    assert not [k for k in stored if ".tmp" in k]
    frame = cache.load(partitions)
    expected = pd.concat([compute_features(p, s3_spec) for p in partitions], ignore_index=True)
    pd.testing.assert_frame_equal(frame, expected)


def test_the_checksum_on_s3_is_that_of_the_object_bytes(s3_env, s3_spec):
    part = ingest(s3_spec).partitions[0]
    cache = FeatureCache(s3_spec.state.features, s3_spec)
    cache.materialize([part])
    key = cache.path_for(part).removeprefix(f"{s3_env.bucket}/")
    body = s3_env.client().get_object(Bucket=s3_env.bucket, Key=key)["Body"].read()
    recorded = s3_env.client().get_object(Bucket=s3_env.bucket, Key=key + CHECKSUM_SUFFIX)
    assert recorded["Body"].read().decode() == hashlib.sha256(body).hexdigest()


def test_a_truncated_object_on_s3_is_recomputed_and_logged(s3_env, s3_spec, project_logs):
    partitions = ingest(s3_spec).partitions
    cache = FeatureCache(s3_spec.state.features, s3_spec)
    cache.materialize(partitions)
    part = partitions[-1]
    key = cache.path_for(part).removeprefix(f"{s3_env.bucket}/")
    body = s3_env.client().get_object(Bucket=s3_env.bucket, Key=key)["Body"].read()
    s3_env.client().put_object(Bucket=s3_env.bucket, Key=key, Body=body[: len(body) // 2])

    frame = cache.load([part])

    pd.testing.assert_frame_equal(frame, compute_features(part, s3_spec))
    assert f"recomputing partition {part.key}" in project_logs.text
    healed = s3_env.client().get_object(Bucket=s3_env.bucket, Key=key)["Body"].read()
    assert healed == body or len(healed) > len(body) // 2
