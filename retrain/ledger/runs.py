"""The retrain runs: one row per retrain, from its start to its status at the end."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa

from retrain.errors import LedgerError
from retrain.ledger.database import Store
from retrain.ledger.schema import now, retrain_runs, timestamp
from retrain.statuses import HOLDING, RUN_MODES, RUN_STATUSES, FinalStatus, RunMode, RunStatus


@dataclass(frozen=True)
class RunRecord:
    id: int
    model: str
    mode: RunMode
    reason: str | None
    status: RunStatus
    data_version: str | None
    model_version: str | None
    promoted: bool | None
    metrics: dict[str, Any]
    error: str | None
    actor: str | None
    started_at: datetime
    finished_at: datetime | None


def run_record(r: Any) -> RunRecord:
    """A ``retrain_runs`` row as a :class:`RunRecord` (metrics parsed)."""
    return RunRecord(
        id=r.id,
        model=r.model,
        mode=cast(RunMode, r.mode),
        reason=r.reason,
        status=cast(RunStatus, r.status),
        data_version=r.data_version,
        model_version=r.model_version,
        promoted=r.promoted,
        metrics=json.loads(r.metrics) if r.metrics else {},
        error=r.error,
        actor=r.actor,
        started_at=r.started_at,
        finished_at=r.finished_at,
    )


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


class RunStore(Store):
    """Start, update, finish and read retrain runs."""

    def start_run(
        self,
        model: str,
        mode: RunMode,
        reason: str | None,
        actor: str | None = None,
        flow_run_id: str | None = None,
    ) -> int:
        if mode not in RUN_MODES:
            raise LedgerError(f"{mode!r} is not a run mode: one of {', '.join(RUN_MODES)}")
        self.db.require_schema()
        with self.db.engine.begin() as conn:
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
        if "status" in values and values["status"] not in RUN_STATUSES:
            raise LedgerError(
                f"{values['status']!r} is not a run status: one of {', '.join(RUN_STATUSES)}"
            )
        if "metrics" in values and not isinstance(values["metrics"], str | None):
            values["metrics"] = json.dumps(values["metrics"], sort_keys=True, default=str)
        for key in ("train_start", "train_end"):
            if key in values:
                values[key] = timestamp(values[key])
        self.db.require_schema()
        with self.db.engine.begin() as conn:
            conn.execute(retrain_runs.update().where(retrain_runs.c.id == run_id).values(**values))

    def finish_run(self, run_id: int, status: FinalStatus, **values: Any) -> None:
        self.update_run(run_id, status=status, finished_at=now(), **values)

    def runs(self, model: str | None = None, limit: int = 20) -> list[RunRecord]:
        query = sa.select(retrain_runs).order_by(retrain_runs.c.id.desc()).limit(limit)
        if model is not None:
            query = query.where(retrain_runs.c.model == model)
        self.db.require_schema()
        with self.db.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [run_record(r) for r in rows]

    def failures_in_a_row(self, model: str, limit: int = 100) -> int:
        """How many of ``model``'s latest ended runs failed one after the other (0: the newest
        ended run did not fail); see :func:`failures_in_a_row`."""
        return failures_in_a_row(self.runs(model, limit=limit))

    def run(self, run_id: int) -> RunRecord:
        self.db.require_schema()
        with self.db.engine.connect() as conn:
            row = conn.execute(sa.select(retrain_runs).where(retrain_runs.c.id == run_id)).first()
        if row is None:
            raise LedgerError(f"no retrain run {run_id} in the ledger")
        return run_record(row)

    def run_of_flow_run(self, flow_run_id: str) -> RunRecord | None:
        """The ledger run a Prefect flow run started (a resumed flow run starts over)."""
        self.db.require_schema()
        with self.db.engine.connect() as conn:
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
        self.db.require_schema()
        with self.db.engine.connect() as conn:
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
