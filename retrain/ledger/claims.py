"""The claim protocol: at most one retrain per model at a time, across processes and machines.

A run claims its model with one INSERT on the ``model_locks`` primary key, so of two processes
claiming at the same moment exactly one wins (on PostgreSQL as on SQLite). The claim is released
when the run ends, kept (owner ``suspended:<run>``) while the run waits for its operator with no
process, and taken over when its holder died or is older than the stale limit: that run is then
marked failed. Every step that changes a claim and a run's status does both in one transaction.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import sqlalchemy as sa

from retrain.errors import LedgerError
from retrain.ledger.database import Store
from retrain.ledger.owners import owner_is_dead, process_owner
from retrain.ledger.runs import RunRecord, run_record
from retrain.ledger.schema import model_locks, now, retrain_runs
from retrain.statuses import HOLDING

logger = logging.getLogger("retrain.ledger")

SUSPENDED_OWNER = "suspended"


class ClaimStore(Store):
    """Claim, release, suspend and resume a model's one retrain; find runs that hold a claim."""

    def claim_model(self, model: str, run_id: int, stale_after: timedelta) -> int | None:
        """Claim the model for run ``run_id``; returns None on success, else the holder's run id.

        The claim is one INSERT on a primary key, so of two processes claiming at the same
        moment exactly one wins (on PostgreSQL as on SQLite). A claim older than
        ``stale_after`` whose run is no longer running (a crashed process) is taken over.
        """
        self.db.require_schema()
        for _ in range(3):
            try:
                with self.db.engine.begin() as conn:
                    conn.execute(
                        model_locks.insert().values(
                            model=model, run_id=run_id, owner=process_owner(), acquired_at=now()
                        )
                    )
                return None
            except sa.exc.IntegrityError:
                pass
            with self.db.engine.begin() as conn:
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
        with self.db.engine.begin() as conn:
            conn.execute(
                model_locks.delete().where(
                    model_locks.c.model == model, model_locks.c.run_id == run_id
                )
            )

    def suspend_run(self, model: str, run_id: int) -> None:
        """The run's process is about to exit while it waits for an operator: keep its claim
        (stamped now: ``gate.approval_timeout`` counts from here) for the resumed run."""
        with self.db.engine.begin() as conn:
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
        with self.db.engine.begin() as conn:
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

    def expired_suspensions(self, model: str, timeout: timedelta) -> list[RunRecord]:
        """Suspended runs of ``model`` whose operator did not answer within ``timeout``."""
        self.db.require_schema()
        with self.db.engine.connect() as conn:
            rows = conn.execute(
                sa.select(retrain_runs)
                .join(model_locks, model_locks.c.run_id == retrain_runs.c.id)
                .where(
                    retrain_runs.c.model == model,
                    retrain_runs.c.status == "suspended",
                    model_locks.c.acquired_at < now() - timeout,
                )
            ).all()
        return [run_record(r) for r in rows]

    def retrain_in_flight(self, model: str) -> RunRecord | None:
        """A retrain of this model that is still running (the newest), if any."""
        self.db.require_schema()
        with self.db.engine.connect() as conn:
            rows = conn.execute(
                sa.select(retrain_runs)
                .where(retrain_runs.c.model == model)
                .order_by(retrain_runs.c.id.desc())
                .limit(5)
            ).all()
        running = [run_record(r) for r in rows if r.status in HOLDING]
        return running[0] if running else None
