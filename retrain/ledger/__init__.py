"""The ledger: retrain's own state in a relational database through SQLAlchemy.

Ingest manifest, retrain runs, alias changes and their audit, monitor checks and signals, the
claim that keeps one retrain per model, and the live traffic of the gateway. SQLite in the state
directory by default, any SQLAlchemy URL in config (PostgreSQL in production). The schema is
created and migrated by :meth:`Ledger.migrate`, never at import.

Each store is a small class over one shared :class:`Database` (``retrain.ledger.runs``,
``partitions``, ``aliases``, ``checks``, ``claims``, ``live``); :class:`Ledger` is all of them
over one database, the object the rest of retrain passes around.
"""

from __future__ import annotations

from sqlalchemy.engine import Engine

from retrain.ledger.aliases import AliasIntent, AliasMove, AliasStore
from retrain.ledger.checks import CheckStore
from retrain.ledger.claims import SUSPENDED_OWNER, ClaimStore
from retrain.ledger.database import Database
from retrain.ledger.live import LiveStore
from retrain.ledger.owners import owner_is_dead, process_owner
from retrain.ledger.partitions import PartitionStore
from retrain.ledger.runs import RunRecord, RunStore, failures_in_a_row
from retrain.ledger.schema import (
    MIGRATE_LOCK,
    MIGRATIONS,
    SCHEMA_VERSION,
    alias_audit,
    alias_intents,
    ingest_manifest,
    live_feedback,
    live_predictions,
    metadata,
    model_locks,
    monitor_checks,
    now,
    retrain_runs,
    schema_version,
    signals,
)
from retrain.statuses import HOLDING

__all__ = [
    "HOLDING",
    "MIGRATE_LOCK",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SUSPENDED_OWNER",
    "AliasIntent",
    "AliasMove",
    "AliasStore",
    "CheckStore",
    "ClaimStore",
    "Database",
    "Ledger",
    "LiveStore",
    "PartitionStore",
    "RunRecord",
    "RunStore",
    "alias_audit",
    "alias_intents",
    "failures_in_a_row",
    "ingest_manifest",
    "live_feedback",
    "live_predictions",
    "metadata",
    "model_locks",
    "monitor_checks",
    "now",
    "owner_is_dead",
    "process_owner",
    "retrain_runs",
    "schema_version",
    "signals",
]


class Ledger(PartitionStore, RunStore, AliasStore, CheckStore, ClaimStore, LiveStore):
    """Access to the ledger database: every store over one :class:`Database`.

    Call :meth:`migrate` once before use. The stores share the engine and the schema check, so
    ``Ledger(url).claim_model(...)`` and ``ClaimStore(Database(url)).claim_model(...)`` do the
    same thing.
    """

    def __init__(self, url: str) -> None:
        super().__init__(Database(url))

    @property
    def url(self) -> str:
        return self.db.url

    @property
    def engine(self) -> Engine:
        return self.db.engine

    def safe_url(self) -> str:
        """The URL with any password masked, for messages and logs."""
        return self.db.safe_url()

    def dispose(self) -> None:
        """Close the pooled connections (the ledger reconnects if used again)."""
        self.db.dispose()

    def current_version(self) -> int:
        return self.db.current_version()

    def migrate(self) -> int:
        """Bring the schema to the newest version; returns the number of steps applied."""
        return self.db.migrate()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.dispose()
