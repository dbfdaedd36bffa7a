"""The ledger's schema: every table, and the ordered migrations that create them.

The tables and migrations are the ledger's on-disk contract (SQLite and PostgreSQL alike):
append a migration, never edit one, and bump nothing by hand (``SCHEMA_VERSION`` counts them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

metadata = sa.MetaData()

schema_version = sa.Table(
    "retrain_schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", sa.DateTime, nullable=False),
)

ingest_manifest = sa.Table(
    "ingest_manifest",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("partition_key", sa.String(64), nullable=False),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # ok | quarantined
    sa.Column("reason", sa.Text),
    sa.Column("recorded_at", sa.DateTime, nullable=False),
    sa.UniqueConstraint("model", "partition_key", "fingerprint", "status", name="uq_manifest"),
)

retrain_runs = sa.Table(
    "retrain_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(200), nullable=False, index=True),
    sa.Column("mode", sa.String(32), nullable=False),
    sa.Column("reason", sa.Text),
    # a RunStatus (retrain/statuses.py): running | suspended | promoted | rejected | failed | ...
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("data_version", sa.String(64)),
    sa.Column("train_start", sa.DateTime),
    sa.Column("train_end", sa.DateTime),
    sa.Column("rows", sa.Integer),
    sa.Column("model_version", sa.String(32)),
    sa.Column("promoted", sa.Boolean),
    sa.Column("metrics", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("actor", sa.String(200)),
    sa.Column("flow_run_id", sa.String(64)),
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("finished_at", sa.DateTime),
)

alias_audit = sa.Table(
    "alias_audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(200), nullable=False, index=True),
    sa.Column("alias", sa.String(64), nullable=False),
    sa.Column("from_version", sa.String(32)),
    sa.Column("to_version", sa.String(32)),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("flow_run_id", sa.String(64)),
    sa.Column("at", sa.DateTime, nullable=False),
)


monitor_checks = sa.Table(
    "monitor_checks",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(200), nullable=False, index=True),
    sa.Column("as_of", sa.DateTime, nullable=False),
    sa.Column("champion_version", sa.String(32)),
    sa.Column("retrain", sa.Boolean, nullable=False),
    sa.Column("fired", sa.Text),  # comma-separated signal names
    sa.Column("reasons", sa.Text),
    sa.Column("blocked_by", sa.Text),
    sa.Column("flow_run_id", sa.String(64)),
    sa.Column("checked_at", sa.DateTime, nullable=False),
)

signals = sa.Table(
    "signals",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("check_id", sa.Integer, sa.ForeignKey("monitor_checks.id"), nullable=False),
    sa.Column("model", sa.String(200), nullable=False, index=True),
    sa.Column("as_of", sa.DateTime, nullable=False),
    sa.Column("name", sa.String(32), nullable=False),
    sa.Column("feature", sa.String(200)),
    sa.Column("value", sa.Float),
    sa.Column("threshold", sa.Float),
    sa.Column("p_value", sa.Float),
    sa.Column("fired", sa.Boolean, nullable=False),
    sa.Column("detail", sa.Text),
)


model_locks = sa.Table(
    "model_locks",
    metadata,
    # one row per model while a retrain of it runs: the primary key makes the claim atomic
    sa.Column("model", sa.String(200), primary_key=True),
    sa.Column("run_id", sa.Integer, nullable=False),
    sa.Column("owner", sa.String(300), nullable=False),  # host:pid of the claiming process
    sa.Column("acquired_at", sa.DateTime, nullable=False),
)


# what the serving gateway answered (one row per arm that scored a request) and the outcomes that
# came back for it (labels, clicks) by request id: the data of live tests and the next training
live_predictions = sa.Table(
    "live_predictions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(64), nullable=False, index=True),
    sa.Column("model", sa.String(200), nullable=False, index=True),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("arm", sa.String(16), nullable=False),  # champion | challenger | interleaved
    sa.Column("role", sa.String(16), nullable=False),  # served | shadow
    sa.Column("routing", sa.String(16), nullable=False),
    sa.Column("routing_key", sa.String(200)),
    sa.Column("at", sa.DateTime, nullable=False, index=True),
    sa.Column("inputs", sa.Text),  # JSON, when live.log_inputs
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("output", sa.Text),  # JSON
    sa.Column("latency_ms", sa.Float),
    sa.Column("error", sa.Text),
)

live_feedback = sa.Table(
    "live_feedback",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(64), nullable=False, index=True),
    sa.Column("model", sa.String(200)),
    sa.Column("outcome", sa.Text, nullable=False),  # JSON: {"label": ...} / {"clicks": [...]}
    sa.Column("at", sa.DateTime, nullable=False),
)


# One alias change (a promotion, a rollback, a registration's challenger, a revert) in the
# making: written BEFORE the registry moves anything, marked done (with its audit rows, in one
# transaction) after; a pending row found later is an interrupted change to complete.
alias_intents = sa.Table(
    "alias_intents",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(200), nullable=False, index=True),
    sa.Column("moves", sa.Text, nullable=False),  # JSON: [{alias, from, to, reason}, ...]
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("flow_run_id", sa.String(64)),
    sa.Column("owner", sa.String(300), nullable=False),  # host:pid of the process making it
    sa.Column("status", sa.String(16), nullable=False),  # pending | done | reverted
    sa.Column("note", sa.Text),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("finished_at", sa.DateTime),
)


def _v1(conn: Connection) -> None:
    metadata.create_all(conn, tables=[ingest_manifest, retrain_runs, alias_audit])


def _v2(conn: Connection) -> None:
    metadata.create_all(conn, tables=[monitor_checks, signals])


def _v3(conn: Connection) -> None:
    metadata.create_all(conn, tables=[model_locks])


def _v4(conn: Connection) -> None:
    metadata.create_all(conn, tables=[live_predictions, live_feedback])


def _v5(conn: Connection) -> None:
    metadata.create_all(conn, tables=[alias_intents])


# Ordered migrations: index i brings the schema to version i + 1. Append, never edit.
MIGRATIONS: Sequence[Callable[[Connection], None]] = (_v1, _v2, _v3, _v4, _v5)
SCHEMA_VERSION = len(MIGRATIONS)
# the PostgreSQL advisory lock that serialises migrations (any fixed 64-bit key)
MIGRATE_LOCK = 0x7265747261696E  # "retrain"


def now() -> datetime:
    """The ledger's clock: naive UTC, as every timestamp column stores it."""
    return datetime.now(UTC).replace(tzinfo=None)


def timestamp(value: Any) -> datetime | None:
    """A datetime (or pandas Timestamp, or None) as a column value."""
    if value is None:
        return None
    return value.to_pydatetime() if hasattr(value, "to_pydatetime") else value
