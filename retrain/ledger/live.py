"""Live traffic: what the serving gateway answered (one row per arm that scored a request) and
the outcomes that came back for it (labels, clicks) by request id."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from retrain.ledger.database import Store
from retrain.ledger.schema import live_feedback, live_predictions, now


class LiveStore(Store):
    """Record and read the gateway's predictions and their feedback."""

    def record_predictions(self, rows: Sequence[dict[str, Any]]) -> int:
        """Store answers of the gateway (``inputs`` and ``output`` as JSON-able values)."""
        if not rows:
            return 0
        self.db.require_schema()
        payload = [
            {
                **row,
                "inputs": None if row.get("inputs") is None else json.dumps(row["inputs"]),
                "output": None if row.get("output") is None else json.dumps(row["output"]),
            }
            for row in rows
        ]
        with self.db.engine.begin() as conn:
            conn.execute(live_predictions.insert(), payload)
        return len(payload)

    def record_feedback(self, rows: Sequence[dict[str, Any]]) -> int:
        """Store outcomes (``request_id``, ``outcome``, optional ``model``, ``at``)."""
        if not rows:
            return 0
        self.db.require_schema()
        payload = [
            {
                "request_id": str(row["request_id"]),
                "model": row.get("model"),
                "outcome": json.dumps(row["outcome"]),
                "at": row.get("at") or now(),
            }
            for row in rows
        ]
        with self.db.engine.begin() as conn:
            conn.execute(live_feedback.insert(), payload)
        return len(payload)

    def predictions(
        self, model: str, since: datetime | None = None, with_inputs: bool = False
    ) -> list[dict[str, Any]]:
        """Logged answers of ``model`` (oldest first), ``output`` (and ``inputs``) parsed."""
        self.db.require_schema()
        columns = [c for c in live_predictions.c if with_inputs or c.name != "inputs"]
        query = (
            sa.select(*columns)
            .where(live_predictions.c.model == model)
            .order_by(live_predictions.c.id)
        )
        if since is not None:
            query = query.where(live_predictions.c.at >= since)
        with self.db.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        for row in rows:
            row["output"] = json.loads(row["output"]) if row["output"] else None
            if with_inputs:
                row["inputs"] = json.loads(row["inputs"]) if row["inputs"] else None
        return rows

    def feedback(self, request_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Feedback rows (all, or those of ``request_ids``), ``outcome`` parsed, oldest first."""
        self.db.require_schema()
        query = sa.select(live_feedback).order_by(live_feedback.c.id)
        with self.db.engine.connect() as conn:
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
        self.db.require_schema()
        query = sa.select(sa.func.count()).select_from(live_predictions)
        if model is not None:
            query = query.where(live_predictions.c.model == model)
        with self.db.engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)
