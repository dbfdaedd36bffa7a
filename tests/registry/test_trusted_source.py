"""Models are loaded only from the configured registry, never from wherever a version points."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import mlflow.artifacts
import mlflow.pyfunc
import pytest

from registry import ModelRegistry
from registry.errors import UntrustedModel
from registry.live import load_servable
from registry.trust import inside, model_digest

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


def _evil_model(directory: Path, marker: Path) -> None:
    """A pyfunc model whose loader module writes ``marker`` when it is imported."""
    code = directory.parent / "evil_code"
    code.mkdir(parents=True, exist_ok=True)
    (code / "evil_loader.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('pwned')\n"
        "def _load_pyfunc(path):\n    return None\n"
    )
    mlflow.pyfunc.save_model(
        str(directory), loader_module="evil_loader", code_paths=[str(code / "evil_loader.py")]
    )


def test_a_source_that_climbs_out_of_its_runs_artifacts_is_refused_before_any_code_runs(
    registry, make_record, tmp_path
):
    version = registry.register_candidate(make_record(), actor="tester")
    run = registry.client.get_run(registry.version(version).run_id)
    root = run.info.artifact_uri.rstrip("/")
    marker = tmp_path / "marker"
    _evil_model(Path(urlparse(root).path).joinpath("..", "..", "..", "x", "evil"), marker)
    # the string starts with the run's root, MLflow resolves the `..`
    rogue = registry.client.create_model_version(
        registry.model_name, source=f"{root}/../../../x/evil", run_id=run.info.run_id
    )

    with pytest.raises(UntrustedModel, match=rf"outside the artifact store of its run.*{REFUSED}"):
        registry.load_model(str(rogue.version))
    with pytest.raises(UntrustedModel, match="outside the artifact store"):
        load_servable(registry, str(rogue.version))
    assert not marker.exists()


def test_a_symlink_in_the_store_that_points_out_of_it_is_refused(registry, make_record, tmp_path):
    version = registry.register_candidate(make_record(), actor="tester")
    run = registry.client.get_run(registry.version(version).run_id)
    root = run.info.artifact_uri.rstrip("/")
    marker = tmp_path / "marker"
    _evil_model(tmp_path / "outside" / "evil", marker)
    Path(urlparse(root).path, "linked").symlink_to(tmp_path / "outside" / "evil")
    rogue = registry.client.create_model_version(
        registry.model_name, source=f"{root}/linked", run_id=run.info.run_id
    )

    with pytest.raises(UntrustedModel, match="outside the artifact store of its run"):
        registry.load_model(str(rogue.version))
    assert not marker.exists()


def test_a_model_whose_files_changed_after_registration_is_refused(registry, make_record, tmp_path):
    version = registry.register_candidate(make_record(), actor="tester")
    uri = registry.client.get_model_version_download_uri(registry.model_name, version)
    marker = tmp_path / "marker"
    mlmodel = Path(urlparse(uri).path) / "MLmodel"
    mlmodel.write_text(mlmodel.read_text() + "\n# edited in the store\n")

    with pytest.raises(UntrustedModel, match=r"hash to sha256 .* not the .* recorded when"):
        registry.load_model(version)
    assert not marker.exists()


def test_a_version_without_a_content_digest_is_refused_with_how_to_fix_it(registry, make_record):
    version = registry.register_candidate(make_record(), actor="tester")
    info = registry.version(version)
    uri = registry.client.get_model_version_download_uri(registry.model_name, version)
    # the same files and run, registered by hand (or before retrain recorded digests)
    bare = registry.client.create_model_version(registry.model_name, source=uri, run_id=info.run_id)

    with pytest.raises(UntrustedModel, match=rf"carries no content digest.*{REFUSED}.*rollback"):
        registry.load_model(str(bare.version))


def test_the_digest_covers_every_file_and_its_name(tmp_path):
    (tmp_path / "m" / "sub").mkdir(parents=True)
    (tmp_path / "m" / "sub" / "a.txt").write_text("one")
    (tmp_path / "m" / "b.txt").write_text("two")
    first = model_digest(tmp_path / "m")
    (tmp_path / "m" / "b.txt").rename(tmp_path / "m" / "c.txt")
    renamed = model_digest(tmp_path / "m")
    (tmp_path / "m" / "c.txt").write_text("twO")

    assert len({first, renamed, model_digest(tmp_path / "m")}) == 3


@pytest.mark.parametrize(
    "uri, root, expected",
    [
        ("file:///s/run/artifacts/model", "file:///s/run/artifacts", True),
        ("file:///s/run/artifacts", "file:///s/run/artifacts", False),
        ("file:///s/run/artifacts/../other/model", "file:///s/run/artifacts", False),
        ("file:///s/run/artifacts-evil/model", "file:///s/run/artifacts", False),
        ("s3://b/run/artifacts/model", "s3://b/run/artifacts", True),
        ("s3://b/run/artifacts/%2e%2e/x", "s3://b/run/artifacts", False),
        ("s3://evil/run/artifacts/model", "s3://b/run/artifacts", False),
        ("http://b/run/artifacts/model", "s3://b/run/artifacts", False),
    ],
)
def test_a_location_is_inside_its_root_only_after_normalising(uri, root, expected):
    assert inside(uri, root) is expected


def test_bytecode_caches_and_mlflows_own_metadata_are_not_the_model(tmp_path):
    """Loading a model in place (mlflow models serve of a local store) writes __pycache__ and
    registered_model_meta beside it: not what was registered, so not hashed; and a downloaded
    copy loses every byte-code file before it loads, so a planted .pyc never runs."""
    from registry.trust import drop_bytecode, model_digest

    model = tmp_path / "model"
    (model / "code").mkdir(parents=True)
    (model / "code" / "retrain_servable.py").write_text("X = 1\n")
    (model / "MLmodel").write_text("flavors: {}\n")
    before = model_digest(model)
    (model / "code" / "__pycache__").mkdir()
    (model / "code" / "__pycache__" / "retrain_servable.cpython-311.pyc").write_bytes(b"evil")
    (model / "registered_model_meta").write_text("model_name: m\nmodel_version: '1'\n")

    assert model_digest(model) == before
    drop_bytecode(model)
    assert not list(model.rglob("*.pyc")) and not (model / "code" / "__pycache__").exists()
    (model / "code" / "retrain_servable.py").write_text("X = 2\n")
    assert model_digest(model) != before  # the code itself still counts
