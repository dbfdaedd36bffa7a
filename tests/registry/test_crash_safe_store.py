"""A process killed while MLflow builds its SQLite schema must not leave a broken database."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from registry import ModelRegistry
from retrain.ledger import Ledger

# Dies with SIGKILL in the middle of MLflow's migrations (after the initial tables, before the
# alembic upgrades that rebuild them): the moment a real kill hit in CI.
DIE_MID_MIGRATION = textwrap.dedent(
    """
    import os, signal, sys
    import mlflow.store.db.utils as utils
    from registry import ModelRegistry
    from retrain.ledger import Ledger

    def upgrade_then_die(engine):
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE _alembic_tmp_tags (key VARCHAR(250))")
        os.kill(os.getpid(), signal.SIGKILL)

    utils._upgrade_db = upgrade_then_die
    ledger = Ledger("sqlite:///" + sys.argv[2])
    ledger.migrate()
    ModelRegistry(sys.argv[1], "model", ledger).aliases()
    """
)


@pytest.mark.slow
def test_a_process_killed_while_mlflow_creates_its_database_leaves_a_usable_store(
    tmp_path: Path,
) -> None:
    db = tmp_path / "state" / "mlflow.db"
    uri = f"sqlite:///{db}"
    dying = subprocess.run(
        [sys.executable, "-c", DIE_MID_MIGRATION, uri, str(tmp_path / "ledger.db")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert dying.returncode == -9, dying.stderr

    assert not db.exists()  # the half-made schema never took the real name
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    registry = ModelRegistry(uri, "model", ledger)
    assert registry.aliases() == {}
    assert registry.versions() == []
    assert db.exists()
    assert not list(db.parent.glob(f".{db.name}.init-*"))  # the dead process's scratch is gone


def test_an_existing_mlflow_database_is_used_as_it_is(tmp_path: Path, tracking_uri: str) -> None:
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    ModelRegistry(tracking_uri, "model", Ledger(f"sqlite:///{tmp_path / 'l.db'}")).aliases()
    before = db.stat().st_ino
    ModelRegistry(tracking_uri, "other", Ledger(f"sqlite:///{tmp_path / 'l.db'}")).aliases()
    assert db.stat().st_ino == before


def _journal_mode(path: Path) -> str:
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
    finally:
        conn.close()


def test_the_mlflow_database_is_kept_in_wal_mode_and_a_database_in_use_is_left_as_it_is(
    tmp_path: Path,
) -> None:
    import sqlite3

    from registry.client import use_wal_journal

    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.migrate()
    path = tmp_path / "mlflow.db"
    ModelRegistry(f"sqlite:///{path}", "model", ledger).aliases()
    assert _journal_mode(path) == "wal"

    other = tmp_path / "other.db"
    holder = sqlite3.connect(other, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")  # another process writing: the mode cannot change now
    use_wal_journal(f"sqlite:///{other}")  # no error: the store works as it is
    holder.execute("COMMIT")
    holder.close()
    assert _journal_mode(other) == "delete"
