"""The ingest manifest: every partition ingest saw, with its fingerprint, rows and status."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from retrain.errors import LedgerError
from retrain.ledger.database import Store
from retrain.ledger.schema import ingest_manifest, now
from retrain.statuses import PARTITION_STATUSES


class PartitionStore(Store):
    """Record and read the partitions of a model's source (ok or quarantined)."""

    def record_partitions(
        self, model: str, rows: Sequence[tuple[str, str, int, str, str | None]]
    ) -> int:
        """Record (partition, fingerprint, rows, status, reason); returns how many were new.

        ``status`` is a :data:`retrain.statuses.PartitionStatus` (ok or quarantined)."""
        wrong = sorted({row[3] for row in rows} - set(PARTITION_STATUSES))
        if wrong:
            raise LedgerError(
                f"partition status {', '.join(map(repr, wrong))} is not one of "
                f"{', '.join(PARTITION_STATUSES)}"
            )
        self.db.require_schema()
        new = 0
        with self.db.engine.begin() as conn:
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
        self.db.require_schema()
        with self.db.engine.connect() as conn:
            result = conn.execute(
                sa.select(ingest_manifest)
                .where(ingest_manifest.c.model == model)
                .order_by(ingest_manifest.c.partition_key, ingest_manifest.c.id)
            )
            return [dict(r._mapping) for r in result]
