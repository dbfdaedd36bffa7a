"""Alias changes: the intent written before the registry moves anything, and the audit after.

An intent is pending until it is finished (done or reverted) together with its audit rows in one
transaction; a pending intent found later is an interrupted change for recovery to complete.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa

from retrain.errors import LedgerError
from retrain.ledger.database import Store
from retrain.ledger.owners import process_owner
from retrain.ledger.schema import alias_audit, alias_intents, now
from retrain.statuses import ALIAS_CHANGE_ENDS, AliasChangeEnd, AliasChangeStatus


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
    status: AliasChangeStatus
    created_at: datetime


def alias_intent(r: Any) -> AliasIntent:
    """An ``alias_intents`` row as an :class:`AliasIntent` (moves parsed)."""
    return AliasIntent(
        id=r.id,
        model=r.model,
        moves=tuple(
            AliasMove(m["alias"], m["from"], m["to"], m["reason"]) for m in json.loads(r.moves)
        ),
        actor=r.actor,
        flow_run_id=r.flow_run_id,
        owner=r.owner,
        status=cast(AliasChangeStatus, r.status),
        created_at=r.created_at,
    )


class AliasStore(Store):
    """Begin, finish and read alias changes, and the audit of every alias move."""

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
        self.db.require_schema()
        with self.db.engine.begin() as conn:
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
        self.db.require_schema()
        payload = json.dumps(
            [
                {"alias": m.alias, "from": m.from_version, "to": m.to_version, "reason": m.reason}
                for m in moves
            ]
        )
        try:
            with self.db.engine.begin() as conn:
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
            raise self.db.refused(exc, f"the alias change of {model}") from None

    def finish_alias_change(
        self,
        intent_id: int,
        status: AliasChangeEnd = "done",
        note: str = "",
        audit: Sequence[AliasMove] | None = None,
    ) -> bool:
        """Mark a pending intent done or reverted and write its audit rows, in one transaction:
        ``audit`` (default: the intent's own moves). False if it was no longer pending (another
        process finished it first): then nothing is written."""
        if status not in ALIAS_CHANGE_ENDS:
            raise LedgerError(f"an alias change ends done or reverted, not {status!r}")
        self.db.require_schema()
        try:
            return self._finish_alias_change(intent_id, status, note, audit)
        except sa.exc.DBAPIError as exc:
            raise self.db.refused(
                exc,
                f"the end of alias change {intent_id}",
                "it stays pending and the next recovery reverts it",
            ) from None

    def _finish_alias_change(
        self,
        intent_id: int,
        status: AliasChangeEnd,
        note: str,
        audit: Sequence[AliasMove] | None,
    ) -> bool:
        with self.db.engine.begin() as conn:
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
            intent = alias_intent(row)
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
        self.db.require_schema()
        with self.db.engine.connect() as conn:
            rows = conn.execute(
                sa.select(alias_intents)
                .where(alias_intents.c.model == model, alias_intents.c.status == "pending")
                .order_by(alias_intents.c.id)
            ).all()
        return [alias_intent(r) for r in rows]

    def alias_changes(self, model: str) -> list[dict[str, Any]]:
        """Every alias change of ``model`` begun, with its status and note, oldest first."""
        self.db.require_schema()
        with self.db.engine.connect() as conn:
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
        self.db.require_schema()
        with self.db.engine.connect() as conn:
            result = conn.execute(
                sa.select(alias_audit)
                .where(alias_audit.c.model == model)
                .order_by(alias_audit.c.id)
            )
            return [dict(r._mapping) for r in result]
