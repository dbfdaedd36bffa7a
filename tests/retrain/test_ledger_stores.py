"""The ledger package: stores over one database, the facade's API, and the frozen schema."""

from __future__ import annotations

import hashlib
import inspect
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from retrain.errors import LedgerError
from retrain.ledger import (
    MIGRATIONS,
    AliasStore,
    CheckStore,
    ClaimStore,
    Database,
    Ledger,
    LiveStore,
    PartitionStore,
    RunStore,
    metadata,
)

STORES = (PartitionStore, RunStore, AliasStore, CheckStore, ClaimStore, LiveStore)

# The ledger's public API before it became a package: callers rely on every name.
LEDGER_API = {
    "url", "engine", "safe_url", "dispose", "current_version", "migrate",
    "record_partitions", "manifest",
    "start_run", "update_run", "finish_run", "runs", "run", "run_of_flow_run", "waiting_flow_run",
    "record_alias_change", "begin_alias_change", "finish_alias_change", "pending_alias_changes",
    "alias_changes", "audited_aliases", "alias_history",
    "record_check", "recent_checks", "last_triggered", "signal_history",
    "claim_model", "release_model", "suspend_run", "resume_run", "expired_suspensions",
    "retrain_in_flight",
    "record_predictions", "record_feedback", "predictions", "feedback", "prediction_count",
}  # fmt: skip

# sha256 of the DDL the migrations create (tables and indexes, per dialect). A change here means
# a changed on-disk schema: append a migration (and update these), never edit a table in place.
SCHEMA_DDL_SHA256 = {
    "sqlite": "5765690ea2e43e8b0b15d7914a35791b5ee030b1c92f5f77e732356fde96e3f6",
    "postgresql": "ebd2d6b900ef60fb291df12cf4ea12082d123ecb796eadc4ee11d6cdf3457bdc",
}


def _ddl(dialect: sa.engine.Dialect) -> str:
    ddl = []
    for table in metadata.sorted_tables:
        ddl.append(str(sa.schema.CreateTable(table).compile(dialect=dialect)).strip())
        for index in sorted(table.indexes, key=lambda i: i.name or ""):
            ddl.append(str(sa.schema.CreateIndex(index).compile(dialect=dialect)).strip())
    return "\n".join(ddl)


@pytest.mark.parametrize("dialect", [sqlite.dialect(), postgresql.dialect()], ids=lambda d: d.name)
def test_the_schema_is_the_one_the_migrations_have_always_created(dialect):
    digest = hashlib.sha256(_ddl(dialect).encode()).hexdigest()
    assert digest == SCHEMA_DDL_SHA256[dialect.name], _ddl(dialect)
    assert len(MIGRATIONS) == 5


def test_the_facade_keeps_every_method_of_the_ledger_and_of_each_store():
    public = {name for name, _ in inspect.getmembers(Ledger) if not name.startswith("_")}
    assert not LEDGER_API - public, LEDGER_API - public
    for store in STORES:
        own = {n for n in vars(store) if not n.startswith("_") and callable(vars(store)[n])}
        assert own <= public, store.__name__


def test_the_claim_protocol_works_as_a_store_of_its_own(tmp_path: Path):
    db = Database(f"sqlite:///{tmp_path / 'ledger.db'}")
    db.migrate()
    runs, claims = RunStore(db), ClaimStore(db)
    first = runs.start_run("m", "manual", "first")
    second = runs.start_run("m", "manual", "second")

    assert claims.claim_model("m", first, timedelta(hours=1)) is None
    assert claims.claim_model("m", second, timedelta(hours=1)) == first
    assert claims.retrain_in_flight("m").id == second  # the newest running one

    claims.suspend_run("m", first)
    assert runs.run(first).status == "suspended"
    assert [r.id for r in claims.expired_suspensions("m", timedelta(0))] == [first]
    claims.resume_run("m", first)
    assert runs.run(first).status == "running"
    claims.release_model("m", first)
    assert claims.claim_model("m", second, timedelta(hours=1)) is None
    db.dispose()


def test_every_store_refuses_an_unmigrated_database_through_the_shared_check(tmp_path: Path):
    db = Database(f"sqlite:///{tmp_path / 'ledger.db'}")
    calls = [
        lambda: PartitionStore(db).manifest("m"),
        lambda: RunStore(db).runs("m"),
        lambda: AliasStore(db).alias_history("m"),
        lambda: CheckStore(db).recent_checks("m"),
        lambda: ClaimStore(db).retrain_in_flight("m"),
        lambda: LiveStore(db).prediction_count("m"),
    ]
    for call in calls:
        with pytest.raises(LedgerError, match="schema version 0, expected 5"):
            call()
    db.migrate()  # one migration serves every store over this database
    assert [call() for call in calls] == [[], [], [], [], None, 0]
    db.dispose()
