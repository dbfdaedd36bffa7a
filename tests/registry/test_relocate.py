"""A moved state directory keeps working; a copied one never reads or writes the original's
artifacts (MLflow's SQLite store keeps absolute artifact locations)."""

from __future__ import annotations

import shutil
from pathlib import Path

from registry import ModelRegistry
from retrain.ledger import Ledger

NAME = "relocated"


def open_registry(state: Path) -> ModelRegistry:
    ledger = Ledger(f"sqlite:///{state / 'ledger.db'}")
    ledger.migrate()
    return ModelRegistry(
        f"sqlite:///{state / 'mlflow.db'}", NAME, ledger, artifact_root=state / "mlartifacts"
    )


def run_dirs(state: Path) -> set[str]:
    return {p.name for p in (state / "mlartifacts").iterdir()}


def close(registry: ModelRegistry) -> None:
    registry.ledger.dispose()


def test_a_moved_state_dir_loads_its_models_and_writes_in_its_new_place(
    tmp_path, make_record, project_logs
):
    old = tmp_path / "state"
    first = open_registry(old)
    version = first.register_candidate(make_record(), actor="test")
    close(first)
    new = tmp_path / "moved"
    shutil.move(old, new)

    moved = open_registry(new)
    trainer = moved.load_model(version)
    second = moved.register_candidate(make_record(), actor="test")

    assert trainer.booster_ is not None
    assert moved.client.get_model_version(NAME, second).source.startswith(
        (new / "mlartifacts").resolve().as_uri()
    )
    assert not old.exists()
    assert "moved or was copied" in project_logs.text
    close(moved)


def test_a_copied_state_dir_never_writes_into_the_original(tmp_path, make_record):
    original = tmp_path / "state"
    first = open_registry(original)
    version = first.register_candidate(make_record(), actor="test")
    close(first)
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    before = run_dirs(original)

    copied = open_registry(copy)
    copied.register_candidate(make_record(), actor="test")
    source = copied.client.get_model_version(NAME, version).source

    assert run_dirs(original) == before
    assert len(run_dirs(copy)) == len(before) + 1
    assert source.startswith((copy / "mlartifacts").resolve().as_uri())
    assert copied.load_model(version).booster_ is not None
    close(copied)


def test_an_unmoved_state_is_left_as_it_is(tmp_path, make_record, project_logs):
    state = tmp_path / "state"
    registry = open_registry(state)
    version = registry.register_candidate(make_record(), actor="test")
    close(registry)

    again = open_registry(state)

    assert again.load_model(version).booster_ is not None
    assert "moved or was copied" not in project_logs.text
    close(again)
