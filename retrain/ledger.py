"""The ledger: retrain's own state in a relational database through SQLAlchemy.

Ingest manifest, retrain runs and the audit of every alias change. SQLite in the state directory
by default, any SQLAlchemy URL in config (PostgreSQL in production). The schema is created and
migrated by :meth:`Ledger.migrate`, never at import.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from retrain.errors import LedgerError, LedgerUnreachable
from retrain.redact import redact_url

logger = logging.getLogger(__name__)

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
    # running | suspended (waiting for its operator) | promoted | rejected | failed | skipped
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


# run statuses that keep the model's claim: a suspended run waits for its operator with no process
HOLDING = ("running", "suspended")
SUSPENDED_OWNER = "suspended"


def process_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_is_dead(owner: str) -> bool:
    """True when the owner is a process of this host that no longer exists."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine: only the stale limit can tell
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


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
    return datetime.now(UTC).replace(tzinfo=None)


def _ts(value: Any) -> datetime | None:
    if value is None:
        return None
    return value.to_pydatetime() if hasattr(value, "to_pydatetime") else value


@dataclass(frozen=True)
class AliasMove:
    """One alias of one model going from one version (None: unset) to another (None: removed)."""

    alias: str
    from_version: str | None
    to_version: str | None
    reason: str


@dataclass(frozen=True)
class AliasIntent:
    """A pending (or finished) alias change as the ledger holds it."""

    id: int
    model: str
    moves: tuple[AliasMove, ...]
    actor: str
    flow_run_id: str | None
    owner: str
    status: str
    created_at: datetime


def _intent(r: Any) -> AliasIntent:
    return AliasIntent(
        id=r.id,
        model=r.model,
        moves=tuple(
            AliasMove(m["alias"], m["from"], m["to"], m["reason"]) for m in json.loads(r.moves)
        ),
        actor=r.actor,
        flow_run_id=r.flow_run_id,
        owner=r.owner,
        status=r.status,
        created_at=r.created_at,
    )


@dataclass(frozen=True)
class RunRecord:
    id: int
    model: str
    mode: str
    reason: str | None
    status: str
    data_version: str | None
    model_version: str | None
    promoted: bool | None
    metrics: dict[str, Any]
    error: str | None
    actor: str | None
    started_at: datetime
    finished_at: datetime | None


# ended runs that neither fail nor succeed: a skip (nothing to do, or another run held the model)
NEUTRAL = ("skipped",)


def failures_in_a_row(runs: Sequence[RunRecord]) -> int:
    """The failed runs at the head of ``runs`` (newest first) before one that ended otherwise
    (promoted, rejected, live): a run still going (running, suspended) or skipped neither
    counts nor breaks the streak.

    >>> def run(i, status):
    ...     return RunRecord(i, "m", "manual", None, status, None, None, None, {}, None, None,
    ...                      datetime(2026, 1, 1), None)
    >>> failures_in_a_row([run(4, "failed"), run(3, "skipped"), run(2, "failed"),
    ...                    run(1, "promoted"), run(0, "failed")])
    2
    >>> failures_in_a_row([run(2, "failed"), run(1, "rejected"), run(0, "failed")])
    1
    """
    streak = 0
    for run in runs:
        if run.status in HOLDING or run.status in NEUTRAL:
            continue
        if run.status != "failed":
            break
        streak += 1
    return streak


def _record(r: Any) -> RunRecord:
    return RunRecord(
        id=r.id,
        model=r.model,
        mode=r.mode,
        reason=r.reason,
        status=r.status,
        data_version=r.data_version,
        model_version=r.model_version,
        promoted=r.promoted,
        metrics=json.loads(r.metrics) if r.metrics else {},
        error=r.error,
        actor=r.actor,
        started_at=r.started_at,
        finished_at=r.finished_at,
    )


class Ledger:
    """Access to the ledger database. Call :meth:`migrate` once before use."""

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
        return self._engine

    def safe_url(self) -> str:
        """The URL with any password masked, for messages and logs."""
        return redact_url(self.url)

    def dispose(self) -> None:
        """Close the pooled connections (the ledger reconnects if used again)."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.dispose()

    # -- schema -----------------------------------------------------------------------------
    def current_version(self) -> int:
        try:
            with self.engine.connect() as conn:
                if not sa.inspect(conn).has_table(schema_version.name):
                    return 0
                value = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar()
                return int(value or 0)
        except sa.exc.OperationalError as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, exc: sa.exc.OperationalError) -> LedgerUnreachable:
        return LedgerUnreachable(
            f"cannot reach the ledger at {self.safe_url()}: {exc.orig}; start the database or "
            "fix state.ledger_url / RETRAIN_LEDGER_URL"
        )

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
                metadata.create_all(conn, tables=[schema_version])
                current = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar()
                current = int(current or 0)
                if current > SCHEMA_VERSION:
                    raise LedgerError(
                        f"the ledger at {self.safe_url()} has schema version {current}, newer "
                        f"than this retrain ({SCHEMA_VERSION}): upgrade retrain"
                    )
                for version in range(current, SCHEMA_VERSION):
                    MIGRATIONS[version](conn)
                    conn.execute(
                        schema_version.insert().values(version=version + 1, applied_at=now())
                    )
                applied = SCHEMA_VERSION - current
        except sa.exc.OperationalError as exc:
            raise self._unreachable(exc) from None
        if applied:
            logger.info("ledger %s migrated to schema version %d", self.safe_url(), SCHEMA_VERSION)
        self._schema_checked = True
        return applied

    def _require_schema(self) -> None:
        if self._schema_checked:
            return  # checked once per Ledger object: the schema never goes backwards
        version = self.current_version()
        if version != SCHEMA_VERSION:
            raise LedgerError(
                f"the ledger at {self.safe_url()} is at schema version {version}, expected "
                f"{SCHEMA_VERSION}: run `retrain ledger migrate --spec FILE` (or Ledger.migrate())"
            )
        self._schema_checked = True

    # -- ingest manifest --------------------------------------------------------------------
    def record_partitions(
        self, model: str, rows: Sequence[tuple[str, str, int, str, str | None]]
    ) -> int:
        """Record (partition, fingerprint, rows, status, reason); returns how many were new."""
        self._require_schema()
        new = 0
        with self.engine.begin() as conn:
            seen = {
                (r.partition_key, r.fingerprint, r.status)
                for r in conn.execute(
                    sa.select(
                        ingest_manifest.c.partition_key,
                        ingest_manifest.c.fingerprint,
                        ingest_manifest.c.status,
                    ).where(ingest_manifest.c.model == model)
                )
            }
            fresh = [
                {
                    "model": model,
                    "partition_key": key,
                    "fingerprint": fp,
                    "rows": n,
                    "status": status,
                    "reason": reason,
                    "recorded_at": now(),
                }
                for key, fp, n, status, reason in rows
                if (key, fp, status) not in seen
            ]
            if fresh:
                conn.execute(ingest_manifest.insert(), fresh)
                new = len(fresh)
        return new

    def manifest(self, model: str) -> list[dict[str, Any]]:
        self._require_schema()
        with self.engine.connect() as conn:
            result = conn.execute(
                sa.select(ingest_manifest)
                .where(ingest_manifest.c.model == model)
                .order_by(ingest_manifest.c.partition_key, ingest_manifest.c.id)
            )
            return [dict(r._mapping) for r in result]

    # -- retrain runs -----------------------------------------------------------------------
    def start_run(
        self,
        model: str,
        mode: str,
        reason: str | None,
        actor: str | None = None,
        flow_run_id: str | None = None,
    ) -> int:
        self._require_schema()
        with self.engine.begin() as conn:
            result = conn.execute(
                retrain_runs.insert().values(
                    model=model,
                    mode=mode,
                    reason=reason,
                    status="running",
                    actor=actor,
                    flow_run_id=flow_run_id,
                    started_at=now(),
                )
            )
            run_id = result.inserted_primary_key
            assert run_id is not None
            return int(run_id[0])

    def update_run(self, run_id: int, **values: Any) -> None:
        allowed = set(retrain_runs.c.keys()) - {"id", "model", "started_at"}
        unknown = set(values) - allowed
        if unknown:
            raise LedgerError(f"unknown retrain_runs column(s) {sorted(unknown)}")
        if "metrics" in values and not isinstance(values["metrics"], str | None):
            values["metrics"] = json.dumps(values["metrics"], sort_keys=True, default=str)
        for key in ("train_start", "train_end"):
            if key in values:
                values[key] = _ts(values[key])
        self._require_schema()
        with self.engine.begin() as conn:
            conn.execute(retrain_runs.update().where(retrain_runs.c.id == run_id).values(**values))

    def finish_run(self, run_id: int, status: str, **values: Any) -> None:
        self.update_run(run_id, status=status, finished_at=now(), **values)

    def runs(self, model: str | None = None, limit: int = 20) -> list[RunRecord]:
        query = sa.select(retrain_runs).order_by(retrain_runs.c.id.desc()).limit(limit)
        if model is not None:
            query = query.where(retrain_runs.c.model == model)
        self._require_schema()
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [_record(r) for r in rows]

    def failures_in_a_row(self, model: str, limit: int = 100) -> int:
        """How many of ``model``'s latest ended runs failed one after the other (0: the newest
        ended run did not fail); see :func:`failures_in_a_row`."""
        return failures_in_a_row(self.runs(model, limit=limit))

    # -- alias audit ------------------------------------------------------------------------
    def record_alias_change(
        self,
        model: str,
        alias: str,
        from_version: str | None,
        to_version: str | None,
        actor: str,
        reason: str,
        flow_run_id: str | None = None,
    ) -> None:
        self._require_schema()
        with self.engine.begin() as conn:
            conn.execute(
                alias_audit.insert().values(
                    model=model,
                    alias=alias,
                    from_version=from_version,
                    to_version=to_version,
                    actor=actor,
                    reason=reason,
                    flow_run_id=flow_run_id,
                    at=now(),
                )
            )

    def _refused(
        self, exc: sa.exc.DBAPIError, what: str, consequence: str = "nothing was moved"
    ) -> LedgerError:
        first = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else "no answer"
        return LedgerUnreachable(
            f"the ledger at {self.safe_url()} refused to record {what} ({first}): it is down "
            f"or read only; {consequence}. Make the ledger writable (file permissions, "
            "`default_transaction_read_only`, the server) and retry"
        )

    def begin_alias_change(
        self,
        model: str,
        moves: Sequence[AliasMove],
        actor: str,
        flow_run_id: str | None = None,
    ) -> int:
        """Write the intent of an alias change (nothing else in its transaction); its id.

        Raises LedgerError if the ledger cannot write it: then nothing may move.
        """
        self._require_schema()
        payload = json.dumps(
            [
                {"alias": m.alias, "from": m.from_version, "to": m.to_version, "reason": m.reason}
                for m in moves
            ]
        )
        try:
            with self.engine.begin() as conn:
                result = conn.execute(
                    alias_intents.insert().values(
                        model=model,
                        moves=payload,
                        actor=actor,
                        flow_run_id=flow_run_id,
                        owner=process_owner(),
                        status="pending",
                        created_at=now(),
                    )
                )
                key = result.inserted_primary_key
                assert key is not None
                return int(key[0])
        except sa.exc.DBAPIError as exc:
            raise self._refused(exc, f"the alias change of {model}") from None

    def finish_alias_change(
        self,
        intent_id: int,
        status: str = "done",
        note: str = "",
        audit: Sequence[AliasMove] | None = None,
    ) -> bool:
        """Mark a pending intent done or reverted and write its audit rows, in one transaction:
        ``audit`` (default: the intent's own moves). False if it was no longer pending (another
        process finished it first): then nothing is written."""
        if status not in ("done", "reverted"):
            raise LedgerError(f"an alias change ends done or reverted, not {status!r}")
        self._require_schema()
        try:
            return self._finish_alias_change(intent_id, status, note, audit)
        except sa.exc.DBAPIError as exc:
            raise self._refused(
                exc,
                f"the end of alias change {intent_id}",
                "it stays pending and the next recovery reverts it",
            ) from None

    def _finish_alias_change(
        self, intent_id: int, status: str, note: str, audit: Sequence[AliasMove] | None
    ) -> bool:
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(alias_intents).where(alias_intents.c.id == intent_id)
            ).first()
            if row is None:
                raise LedgerError(f"no alias change {intent_id} in the ledger")
            claimed = conn.execute(
                alias_intents.update()
                .where(alias_intents.c.id == intent_id, alias_intents.c.status == "pending")
                .values(status=status, note=note or None, finished_at=now())
            )
            if claimed.rowcount != 1:
                return False
            intent = _intent(row)
            rows = [
                {
                    "model": intent.model,
                    "alias": m.alias,
                    "from_version": m.from_version,
                    "to_version": m.to_version,
                    "actor": intent.actor,
                    "reason": m.reason,
                    "flow_run_id": intent.flow_run_id,
                    "at": now(),
                }
                for m in (intent.moves if audit is None else audit)
            ]
            if rows:
                conn.execute(alias_audit.insert(), rows)
        return True

    def pending_alias_changes(self, model: str) -> list[AliasIntent]:
        """Alias changes of ``model`` that were begun and never finished, oldest first."""
        self._require_schema()
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(alias_intents)
                .where(alias_intents.c.model == model, alias_intents.c.status == "pending")
                .order_by(alias_intents.c.id)
            ).all()
        return [_intent(r) for r in rows]

    def alias_changes(self, model: str) -> list[dict[str, Any]]:
        """Every alias change of ``model`` begun, with its status and note, oldest first."""
        self._require_schema()
        with self.engine.connect() as conn:
            result = conn.execute(
                sa.select(alias_intents)
                .where(alias_intents.c.model == model)
                .order_by(alias_intents.c.id)
            )
            return [dict(r._mapping) for r in result]

    def audited_aliases(self, model: str) -> dict[str, str | None]:
        """Where the audit says each alias of ``model`` is: the last audited move's target
        (None: removed). Aliases never audited are absent."""
        return {row["alias"]: row["to_version"] for row in self.alias_history(model)}

    def alias_history(self, model: str) -> list[dict[str, Any]]:
        self._require_schema()
        with self.engine.connect() as conn:
            result = conn.execute(
                sa.select(alias_audit)
                .where(alias_audit.c.model == model)
                .order_by(alias_audit.c.id)
            )
            return [dict(r._mapping) for r in result]

    # -- monitor checks and signals ---------------------------------------------------------
    def record_check(
        self,
        model: str,
        as_of: Any,
        champion_version: str | None,
        measured: Sequence[Any],
        retrain: bool,
        fired: Sequence[str],
        reasons: Sequence[str],
        blocked_by: Sequence[str] = (),
        flow_run_id: str | None = None,
    ) -> int:
        """Store one monitor check and every signal it measured (one transaction)."""
        self._require_schema()
        at = _ts(as_of)
        with self.engine.begin() as conn:
            result = conn.execute(
                monitor_checks.insert().values(
                    model=model,
                    as_of=at,
                    champion_version=champion_version,
                    retrain=retrain,
                    fired=",".join(fired),
                    reasons="\n".join(reasons),
                    blocked_by="\n".join(blocked_by),
                    flow_run_id=flow_run_id,
                    checked_at=now(),
                )
            )
            key = result.inserted_primary_key
            assert key is not None
            check_id = int(key[0])
            rows = [
                {
                    "check_id": check_id,
                    "model": model,
                    "as_of": at,
                    "name": sig.name,
                    "feature": sig.feature,
                    "value": sig.value,
                    "threshold": sig.threshold,
                    "p_value": sig.p_value,
                    "fired": sig.fired,
                    "detail": sig.detail,
                }
                for sig in measured
            ]
            if rows:
                conn.execute(signals.insert(), rows)
        return check_id

    def recent_checks(self, model: str, limit: int = 20) -> list[dict[str, Any]]:
        """The last monitor checks of a model, oldest first."""
        self._require_schema()
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(monitor_checks)
                .where(monitor_checks.c.model == model)
                .order_by(monitor_checks.c.id.desc())
                .limit(limit)
            ).all()
        return [dict(r._mapping) for r in reversed(rows)]

    def last_triggered(self, model: str) -> datetime | None:
        """``as_of`` of the last check that decided to retrain."""
        self._require_schema()
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(sa.func.max(monitor_checks.c.as_of)).where(
                    monitor_checks.c.model == model, monitor_checks.c.retrain.is_(True)
                )
            ).scalar()
        return value

    def signal_history(self, model: str, name: str | None = None) -> list[dict[str, Any]]:
        """Every stored signal of a model (a time series per signal and feature)."""
        self._require_schema()
        query = sa.select(signals).where(signals.c.model == model).order_by(signals.c.id)
        if name is not None:
            query = query.where(signals.c.name == name)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    # -- one retrain per model ----------------------------------------------------------------
    def claim_model(self, model: str, run_id: int, stale_after: timedelta) -> int | None:
        """Claim the model for run ``run_id``; returns None on success, else the holder's run id.

        The claim is one INSERT on a primary key, so of two processes claiming at the same
        moment exactly one wins (on PostgreSQL as on SQLite). A claim older than
        ``stale_after`` whose run is no longer running (a crashed process) is taken over.
        """
        self._require_schema()
        for _ in range(3):
            try:
                with self.engine.begin() as conn:
                    conn.execute(
                        model_locks.insert().values(
                            model=model, run_id=run_id, owner=process_owner(), acquired_at=now()
                        )
                    )
                return None
            except sa.exc.IntegrityError:
                pass
            with self.engine.begin() as conn:
                holder = conn.execute(
                    sa.select(model_locks).where(model_locks.c.model == model)
                ).first()
                if holder is None:
                    continue  # released in between: try again
                status = conn.execute(
                    sa.select(retrain_runs.c.status).where(retrain_runs.c.id == holder.run_id)
                ).scalar()
                expired = now() - holder.acquired_at > stale_after
                dead = owner_is_dead(holder.owner)
                if status in HOLDING and not expired and not dead:
                    return int(holder.run_id)
                # the holder died (killed), finished without releasing, or is older than
                # stale_after: its run failed, whatever it said
                if status in HOLDING:
                    why = "its process died" if dead else f"no end after {stale_after}"
                    conn.execute(
                        retrain_runs.update()
                        .where(retrain_runs.c.id == holder.run_id)
                        .values(status="failed", finished_at=now(), error=f"abandoned: {why}")
                    )
                conn.execute(
                    model_locks.delete().where(
                        model_locks.c.model == model, model_locks.c.run_id == holder.run_id
                    )
                )
                logger.warning("took over the stale claim of run %s on %s", holder.run_id, model)
        raise LedgerError(f"could not claim {model}: the claim kept changing hands; retry")

    def release_model(self, model: str, run_id: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                model_locks.delete().where(
                    model_locks.c.model == model, model_locks.c.run_id == run_id
                )
            )

    def suspend_run(self, model: str, run_id: int) -> None:
        """The run's process is about to exit while it waits for an operator: keep its claim
        (stamped now: ``gate.approval_timeout`` counts from here) for the resumed run."""
        with self.engine.begin() as conn:
            conn.execute(
                retrain_runs.update().where(retrain_runs.c.id == run_id).values(status="suspended")
            )
            claimed = conn.execute(
                model_locks.update()
                .where(model_locks.c.model == model, model_locks.c.run_id == run_id)
                .values(owner=f"{SUSPENDED_OWNER}:{run_id}", acquired_at=now())
            )
            if claimed.rowcount != 1:
                raise LedgerError(f"run {run_id} does not hold the claim on {model}")

    def resume_run(self, model: str, run_id: int) -> None:
        """A suspended run is back (its operator answered): this process holds its claim."""
        with self.engine.begin() as conn:
            claimed = conn.execute(
                model_locks.update()
                .where(model_locks.c.model == model, model_locks.c.run_id == run_id)
                .values(owner=process_owner())
            )
            if claimed.rowcount != 1:
                raise LedgerError(
                    f"suspended run {run_id} lost its claim on {model} (timed out or taken over)"
                )
            conn.execute(
                retrain_runs.update().where(retrain_runs.c.id == run_id).values(status="running")
            )

    def run_of_flow_run(self, flow_run_id: str) -> RunRecord | None:
        """The ledger run a Prefect flow run started (a resumed flow run starts over)."""
        self._require_schema()
        with self.engine.connect() as conn:
            run_id = conn.execute(
                sa.select(sa.func.max(retrain_runs.c.id)).where(
                    retrain_runs.c.flow_run_id == flow_run_id
                )
            ).scalar()
        if run_id is None:
            return None
        return self.run(int(run_id))

    def waiting_flow_run(self, model: str, version: str) -> tuple[int, str] | None:
        """The newest run of ``model`` that registered ``version`` and has not finished (it
        waits for its approval, paused or suspended): its ledger id and Prefect flow run id."""
        self._require_schema()
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(retrain_runs.c.id, retrain_runs.c.flow_run_id)
                .where(
                    retrain_runs.c.model == model,
                    retrain_runs.c.model_version == version,
                    retrain_runs.c.status.in_(HOLDING),
                    retrain_runs.c.flow_run_id.is_not(None),
                )
                .order_by(retrain_runs.c.id.desc())
                .limit(1)
            ).first()
        return None if row is None else (int(row.id), str(row.flow_run_id))

    def run(self, run_id: int) -> RunRecord:
        self._require_schema()
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(retrain_runs).where(retrain_runs.c.id == run_id)).first()
        if row is None:
            raise LedgerError(f"no retrain run {run_id} in the ledger")
        return _record(row)

    def expired_suspensions(self, model: str, timeout: timedelta) -> list[RunRecord]:
        """Suspended runs of ``model`` whose operator did not answer within ``timeout``."""
        self._require_schema()
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(retrain_runs)
                .join(model_locks, model_locks.c.run_id == retrain_runs.c.id)
                .where(
                    retrain_runs.c.model == model,
                    retrain_runs.c.status == "suspended",
                    model_locks.c.acquired_at < now() - timeout,
                )
            ).all()
        return [_record(r) for r in rows]

    def retrain_in_flight(self, model: str) -> RunRecord | None:
        """A retrain of this model that is still running (the newest), if any."""
        running = [r for r in self.runs(model, limit=5) if r.status in HOLDING]
        return running[0] if running else None

    # -- live predictions and feedback ------------------------------------------------------
    def record_predictions(self, rows: Sequence[dict[str, Any]]) -> int:
        """Store answers of the gateway (``inputs`` and ``output`` as JSON-able values)."""
        if not rows:
            return 0
        self._require_schema()
        payload = [
            {
                **row,
                "inputs": None if row.get("inputs") is None else json.dumps(row["inputs"]),
                "output": None if row.get("output") is None else json.dumps(row["output"]),
            }
            for row in rows
        ]
        with self.engine.begin() as conn:
            conn.execute(live_predictions.insert(), payload)
        return len(payload)

    def record_feedback(self, rows: Sequence[dict[str, Any]]) -> int:
        """Store outcomes (``request_id``, ``outcome``, optional ``model``, ``at``)."""
        if not rows:
            return 0
        self._require_schema()
        payload = [
            {
                "request_id": str(row["request_id"]),
                "model": row.get("model"),
                "outcome": json.dumps(row["outcome"]),
                "at": row.get("at") or now(),
            }
            for row in rows
        ]
        with self.engine.begin() as conn:
            conn.execute(live_feedback.insert(), payload)
        return len(payload)

    def predictions(
        self, model: str, since: datetime | None = None, with_inputs: bool = False
    ) -> list[dict[str, Any]]:
        """Logged answers of ``model`` (oldest first), ``output`` (and ``inputs``) parsed."""
        self._require_schema()
        columns = [c for c in live_predictions.c if with_inputs or c.name != "inputs"]
        query = (
            sa.select(*columns)
            .where(live_predictions.c.model == model)
            .order_by(live_predictions.c.id)
        )
        if since is not None:
            query = query.where(live_predictions.c.at >= since)
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        for row in rows:
            row["output"] = json.loads(row["output"]) if row["output"] else None
            if with_inputs:
                row["inputs"] = json.loads(row["inputs"]) if row["inputs"] else None
        return rows

    def feedback(self, request_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Feedback rows (all, or those of ``request_ids``), ``outcome`` parsed, oldest first."""
        self._require_schema()
        query = sa.select(live_feedback).order_by(live_feedback.c.id)
        with self.engine.connect() as conn:
            if request_ids is None:
                rows = [dict(r._mapping) for r in conn.execute(query)]
            else:
                ids, rows = list(request_ids), []
                for start in range(0, len(ids), 500):
                    chunk = query.where(live_feedback.c.request_id.in_(ids[start : start + 500]))
                    rows += [dict(r._mapping) for r in conn.execute(chunk)]
        for row in rows:
            row["outcome"] = json.loads(row["outcome"])
        return rows

    def prediction_count(self, model: str | None = None) -> int:
        self._require_schema()
        query = sa.select(sa.func.count()).select_from(live_predictions)
        if model is not None:
            query = query.where(live_predictions.c.model == model)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)
