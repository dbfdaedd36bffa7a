"""The feature cache heals itself: a cached file that fails its checksum is recomputed, not used."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from retrain.config import parse_spec
from retrain.errors import CacheError, SpecError
from retrain.features import CHECKSUM_SUFFIX, FeatureCache, compute_features
from retrain.ingest import ingest
from tests.conftest import spec_dict


@pytest.fixture
def spec(four_days, write_source, make_spec):
    return make_spec(write_source(four_days))


@pytest.fixture
def partitions(spec):
    return ingest(spec).partitions


@pytest.fixture
def cache(tmp_path, spec, partitions) -> FeatureCache:
    cache = FeatureCache(tmp_path / "cache", spec)
    cache.materialize(partitions)
    return cache


def test_every_cached_file_has_the_checksum_of_its_bytes_beside_it(cache, partitions):
    import hashlib

    for part in partitions:
        path = Path(cache.path_for(part))
        recorded = Path(f"{path}{CHECKSUM_SUFFIX}").read_text()
        assert recorded == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_truncated_file_is_recomputed_and_logged_never_read(
    cache, spec, partitions, project_logs
):
    part = partitions[1]
    path = Path(cache.path_for(part))
    path.write_bytes(path.read_bytes()[:200])

    frame = cache.load(partitions)

    pd.testing.assert_frame_equal(
        frame[frame["__partition__"] == part.key].reset_index(drop=True),
        compute_features(part, spec),
    )
    assert f"recomputing partition {part.key}" in project_logs.text
    assert "truncated or modified" in project_logs.text
    # healed in place: the next read verifies and logs nothing
    project_logs.clear()
    pd.testing.assert_frame_equal(cache.read_verified(part), compute_features(part, spec))
    assert "recomputing" not in project_logs.text


def test_a_tampered_file_that_still_parses_is_not_used(cache, spec, partitions, project_logs):
    part = partitions[0]
    path = Path(cache.path_for(part))
    forged = pd.read_parquet(path).assign(cnt=-1.0)
    buffer = io.BytesIO()
    forged.to_parquet(buffer, index=False)
    path.write_bytes(buffer.getvalue())  # valid parquet, wrong labels, old checksum

    frame = cache.load([part])

    assert (frame["cnt"] >= 0).all()
    pd.testing.assert_frame_equal(frame, compute_features(part, spec))
    assert f"recomputing partition {part.key}" in project_logs.text


def test_a_file_without_its_checksum_is_not_a_cache_hit(cache, partitions):
    """A crash between the data and its checksum (or a file copied in by hand) is recomputed."""
    part = partitions[2]
    Path(f"{cache.path_for(part)}{CHECKSUM_SUFFIX}").unlink()

    result = cache.materialize(partitions)

    assert result.computed == (part.key,)
    assert Path(f"{cache.path_for(part)}{CHECKSUM_SUFFIX}").is_file()


def test_no_temporary_file_is_left_after_a_write(cache):
    assert not [p for p in Path(cache.root).rglob("*") if ".tmp" in p.name]


def test_an_unknown_storage_scheme_is_an_error_naming_it(four_days, write_source, tmp_path):
    data = spec_dict(write_source(four_days), tmp_path / "state")
    data["state"]["cache_url"] = "nosuchfs://bucket/prefix"
    spec = parse_spec(data)
    with pytest.raises(CacheError, match="nosuchfs://bucket/prefix has a scheme no storage"):
        FeatureCache(spec.state.features, spec)


def test_a_cache_url_without_a_scheme_is_a_spec_error(four_days, write_source, tmp_path):
    data = spec_dict(write_source(four_days), tmp_path / "state")
    data["state"]["cache_url"] = "bucket/prefix"
    with pytest.raises(SpecError, match=r"state.cache_url: must be a URL with a scheme"):
        parse_spec(data)


def test_credentials_in_the_cache_options_are_refused(four_days, write_source, tmp_path):
    data = spec_dict(write_source(four_days), tmp_path / "state")
    data["state"]["cache_options"] = {"endpoint_url": "http://x", "secret": "s3cret"}
    with pytest.raises(SpecError, match=r"holds credentials \['secret'\]"):
        parse_spec(data)


@pytest.fixture
def full_disk(tmp_path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted for this test, nearly filled (a real ENOSPC, not a mock)."""
    import os
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs here (root needed): {done.stderr.decode()}")
        pytest.skip("cannot mount a tmpfs here (root needed)")
    try:
        with open(mount / "filler", "wb", buffering=0) as fh:  # fill it to the last block
            try:
                while True:
                    fh.write(b"\0" * 4096)
            except OSError:
                pass
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_full_disk_fails_the_write_and_leaves_no_partial_file(full_disk, spec, partitions):
    cache = FeatureCache(full_disk / "cache", spec)

    with pytest.raises(OSError, match="No space left on device"):
        cache.materialize(partitions)

    left = [p.name for p in (full_disk / "cache").rglob("*") if p.is_file()]
    assert not [name for name in left if ".tmp" in name], left
    (full_disk / "filler").unlink()  # space again: the next materialise completes
    assert len(cache.materialize(partitions).computed) == len(partitions)
