"""The one database every ledger store works on: its engine, its schema check, its errors.

Nothing connects at construction: the engine (and a SQLite file's folder) appears on first use,
and the schema is created and migrated by :meth:`Database.migrate`, never at import.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from retrain.errors import LedgerError, LedgerUnreachable
from retrain.ledger.schema import MIGRATE_LOCK, MIGRATIONS, SCHEMA_VERSION, metadata, now
from retrain.ledger.schema import schema_version as schema_version_table
from retrain.redact import redact_url

logger = logging.getLogger("retrain.ledger")


def _write_ahead_log(dbapi_connection: Any, _record: Any) -> None:
    """Keep a SQLite ledger file in write-ahead-log mode (a setting of the file, made by the
    first connection that finds it otherwise).

    Every ledger write is a transaction of its own (a run started, a claim, an alias intent,
    its audit: about ten a retrain); in SQLite's default rollback-journal mode each commit
    creates, syncs and deletes a journal file, in WAL mode it appends to the log: 2.4 ms
    against 0.2 ms a commit here, with the same durability (``synchronous`` stays FULL).
    Readers and the writer no longer block each other. A file that another process holds
    busy keeps its mode (the next connection tries again); a ``file:`` URI (read only, say)
    is never connected with this hook. A shared ledger on several machines is PostgreSQL.
    """
    cursor = dbapi_connection.cursor()
    try:
        if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
            cursor.execute("PRAGMA journal_mode=WAL")
    except Exception as exc:  # busy or read only: it works as it is, only slower
        logger.debug("ledger database kept its journal mode: %s", exc)
    finally:
        cursor.close()


class Database:
    """A ledger database by SQLAlchemy URL (SQLite file or PostgreSQL), shared by the stores."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: Engine | None = None
        self._schema_checked = False

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            url = sa.make_url(self.url)
            database = url.database or ""
            # a SQLite URI (file:...?mode=ro&uri=true) names an existing file: no folder to make
            if (
                url.get_backend_name() == "sqlite"
                and database not in ("", ":memory:")
                and not database.startswith("file:")
            ):
                Path(database).parent.mkdir(parents=True, exist_ok=True)
                self._engine = sa.create_engine(url, pool_pre_ping=True)
                sa.event.listen(self._engine, "connect", _write_ahead_log)
            else:
                self._engine = sa.create_engine(url, pool_pre_ping=True)
        return self._engine

    def safe_url(self) -> str:
        """The URL with any password masked, for messages and logs."""
        return redact_url(self.url)

    def dispose(self) -> None:
        """Close the pooled connections (the ledger reconnects if used again)."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    # -- schema -----------------------------------------------------------------------------
    def current_version(self) -> int:
        try:
            with self.engine.connect() as conn:
                if not sa.inspect(conn).has_table(schema_version_table.name):
                    return 0
                value = conn.execute(
                    sa.select(sa.func.max(schema_version_table.c.version))
                ).scalar()
                return int(value or 0)
        except sa.exc.OperationalError as exc:
            raise self.unreachable(exc) from None

    def migrate(self) -> int:
        """Bring the schema to the newest version; returns the number of steps applied."""
        try:
            with self.engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    # one migrator at a time: concurrent first migrations would race on CREATE
                    # TABLE (IntegrityError on pg_type); the lock ends with this transaction
                    conn.execute(
                        sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATE_LOCK}
                    )
                metadata.create_all(conn, tables=[schema_version_table])
                current = conn.execute(
                    sa.select(sa.func.max(schema_version_table.c.version))
                ).scalar()
                current = int(current or 0)
                if current > SCHEMA_VERSION:
                    raise LedgerError(
                        f"the ledger at {self.safe_url()} has schema version {current}, newer "
                        f"than this retrain ({SCHEMA_VERSION}): upgrade retrain"
                    )
                for version in range(current, SCHEMA_VERSION):
                    MIGRATIONS[version](conn)
                    conn.execute(
                        schema_version_table.insert().values(version=version + 1, applied_at=now())
                    )
                applied = SCHEMA_VERSION - current
        except sa.exc.OperationalError as exc:
            raise self.unreachable(exc) from None
        if applied:
            logger.info("ledger %s migrated to schema version %d", self.safe_url(), SCHEMA_VERSION)
        self._schema_checked = True
        return applied

    def require_schema(self) -> None:
        """Refuse to work on a ledger that is not at this retrain's schema version."""
        if self._schema_checked:
            return  # checked once per database object: the schema never goes backwards
        version = self.current_version()
        if version != SCHEMA_VERSION:
            raise LedgerError(
                f"the ledger at {self.safe_url()} is at schema version {version}, expected "
                f"{SCHEMA_VERSION}: run `retrain ledger migrate --spec FILE` (or Ledger.migrate())"
            )
        self._schema_checked = True

    # -- errors -----------------------------------------------------------------------------
    def unreachable(self, exc: sa.exc.OperationalError) -> LedgerUnreachable:
        return LedgerUnreachable(
            f"cannot reach the ledger at {self.safe_url()}: {exc.orig}; start the database or "
            "fix state.ledger_url / RETRAIN_LEDGER_URL"
        )

    def refused(
        self, exc: sa.exc.DBAPIError, what: str, consequence: str = "nothing was moved"
    ) -> LedgerError:
        """The database would not write ``what`` (down, or read only): say so and what to do."""
        first = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else "no answer"
        return LedgerUnreachable(
            f"the ledger at {self.safe_url()} refused to record {what} ({first}): it is down "
            f"or read only; {consequence}. Make the ledger writable (file permissions, "
            "`default_transaction_read_only`, the server) and retry"
        )


class Store:
    """Base of the ledger's stores: each works on one shared :class:`Database`."""

    db: Database

    def __init__(self, db: Database) -> None:
        self.db = db
