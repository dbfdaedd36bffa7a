"""Monitor checks and the signals each measured (a time series per signal and feature)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from retrain.ledger.database import Store
from retrain.ledger.schema import monitor_checks, now, signals, timestamp


class CheckStore(Store):
    """Record and read monitor checks and their signals."""

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
        self.db.require_schema()
        at = timestamp(as_of)
        with self.db.engine.begin() as conn:
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
        self.db.require_schema()
        with self.db.engine.connect() as conn:
            rows = conn.execute(
                sa.select(monitor_checks)
                .where(monitor_checks.c.model == model)
                .order_by(monitor_checks.c.id.desc())
                .limit(limit)
            ).all()
        return [dict(r._mapping) for r in reversed(rows)]

    def last_triggered(self, model: str) -> datetime | None:
        """``as_of`` of the last check that decided to retrain."""
        self.db.require_schema()
        with self.db.engine.connect() as conn:
            value = conn.execute(
                sa.select(sa.func.max(monitor_checks.c.as_of)).where(
                    monitor_checks.c.model == model, monitor_checks.c.retrain.is_(True)
                )
            ).scalar()
        return value

    def signal_history(self, model: str, name: str | None = None) -> list[dict[str, Any]]:
        """Every stored signal of a model (a time series per signal and feature)."""
        self.db.require_schema()
        query = sa.select(signals).where(signals.c.model == model).order_by(signals.c.id)
        if name is not None:
            query = query.where(signals.c.name == name)
        with self.db.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]
