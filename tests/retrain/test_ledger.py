from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from retrain.errors import LedgerError
from retrain.ledger import SCHEMA_VERSION, AliasMove, Ledger, retrain_runs, schema_version
from tests.conftest import postgres_schema


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty ledger database: a new SQLite file, or a fresh schema of the test PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state' / 'ledger.db'}"
        return
    with postgres_schema(request.getfixturevalue("postgres_url"), "test_ledger") as url:
        yield url


@pytest.fixture
def fresh(ledger_url: str) -> Iterator[Ledger]:
    """A ledger that has not been migrated."""
    ledger = Ledger(ledger_url)
    yield ledger
    ledger.dispose()


@pytest.fixture
def ledger(fresh: Ledger) -> Ledger:
    fresh.migrate()
    return fresh


@pytest.fixture
def model() -> str:
    # Unique per test: rows of other tests or runs can never match.
    return f"model-{uuid.uuid4().hex[:10]}"


def test_migrate_creates_the_schema_once_and_then_has_nothing_to_do(fresh):
    assert fresh.current_version() == 0

    assert fresh.migrate() == SCHEMA_VERSION
    assert fresh.migrate() == 0
    assert fresh.current_version() == SCHEMA_VERSION
    tables = set(sa.inspect(fresh.engine).get_table_names())
    assert {
        "retrain_schema_version",
        "ingest_manifest",
        "retrain_runs",
        "alias_audit",
        "monitor_checks",
        "signals",
    } <= tables


def test_a_ledger_at_an_older_version_is_upgraded_step_by_step(fresh):
    from retrain import ledger as ledger_module

    with fresh.engine.begin() as conn:
        ledger_module.metadata.create_all(conn, tables=[ledger_module.schema_version])
        ledger_module.MIGRATIONS[0](conn)
        conn.execute(
            ledger_module.schema_version.insert().values(version=1, applied_at=ledger_module.now())
        )
    assert fresh.current_version() == 1

    assert fresh.migrate() == SCHEMA_VERSION - 1
    assert "signals" in set(sa.inspect(fresh.engine).get_table_names())


def test_nothing_is_created_at_import_or_construction(tmp_path):
    db = tmp_path / "state" / "ledger.db"
    subprocess.run(
        [sys.executable, "-c", "import retrain.ledger"],
        cwd=tmp_path,
        check=True,
    )
    ledger = Ledger(f"sqlite:///{db}")
    ledger.safe_url()

    assert list(tmp_path.iterdir()) == []
    ledger.migrate()
    assert db.is_file()


METHODS: dict[str, Callable[[Ledger], Any]] = {
    "start_run": lambda ledger: ledger.start_run("m", "manual", "test"),
    "update_run": lambda ledger: ledger.update_run(1, status="failed"),
    "finish_run": lambda ledger: ledger.finish_run(1, "failed"),
    "runs": lambda ledger: ledger.runs("m"),
    "record_partitions": lambda ledger: ledger.record_partitions("m", [("k", "f", 1, "ok", None)]),
    "manifest": lambda ledger: ledger.manifest("m"),
    "record_alias_change": lambda ledger: ledger.record_alias_change(
        "m", "champion", None, "1", "ana", "test"
    ),
    "alias_history": lambda ledger: ledger.alias_history("m"),
}


@pytest.mark.parametrize("method", METHODS)
def test_using_the_ledger_before_migrate_is_a_ledger_error_telling_to_migrate(fresh, method):
    with pytest.raises(
        LedgerError,
        match=rf"schema version 0, expected {SCHEMA_VERSION}: run `retrain ledger migrate",
    ):
        METHODS[method](fresh)


def test_a_run_round_trips_with_its_metrics_and_status(ledger, model):
    run_id = ledger.start_run(model, "manual", "operator asked", actor="ana", flow_run_id="fr-1")
    [running] = ledger.runs(model)
    ledger.update_run(
        run_id,
        data_version="dv-123",
        train_start=pd.Timestamp("2011-03-01"),
        train_end=pd.Timestamp("2011-03-22"),
        rows=480,
    )
    metrics = {"backtest_mae": 12.5, "baseline_mae": 40.0, "reasons": ["beats the baseline"]}
    ledger.finish_run(run_id, "promoted", model_version="3", promoted=True, metrics=metrics)

    [run] = ledger.runs(model)
    assert running.status == "running"
    assert running.finished_at is None
    assert running.metrics == {}
    assert (run.id, run.model, run.mode, run.reason, run.actor) == (
        run_id,
        model,
        "manual",
        "operator asked",
        "ana",
    )
    assert (run.status, run.data_version, run.model_version, run.promoted) == (
        "promoted",
        "dv-123",
        "3",
        True,
    )
    assert run.metrics == metrics
    assert run.error is None
    assert run.finished_at >= run.started_at
    with ledger.engine.connect() as conn:
        row = conn.execute(sa.select(retrain_runs).where(retrain_runs.c.id == run_id)).one()
    assert (row.train_start, row.train_end, row.rows, row.flow_run_id) == (
        pd.Timestamp("2011-03-01").to_pydatetime(),
        pd.Timestamp("2011-03-22").to_pydatetime(),
        480,
        "fr-1",
    )


def test_a_failed_run_keeps_its_error(ledger, model):
    run_id = ledger.start_run(model, "scheduled", "nightly")

    ledger.finish_run(run_id, "failed", error="EmptyWindowError: holds no usable partition")

    [run] = ledger.runs(model)
    assert run.status == "failed"
    assert run.promoted is None
    assert run.error == "EmptyWindowError: holds no usable partition"


def test_runs_are_listed_newest_first_per_model_and_limited(ledger, model):
    other = model + "-other"
    ids = [ledger.start_run(model, "manual", f"run {i}") for i in range(3)]
    ledger.start_run(other, "manual", "someone else's")

    assert [r.id for r in ledger.runs(model)] == ids[::-1]
    assert [r.id for r in ledger.runs(model, limit=2)] == ids[:0:-1]
    assert [r.reason for r in ledger.runs(other)] == ["someone else's"]


def test_update_run_refuses_an_unknown_column_naming_it(ledger, model):
    run_id = ledger.start_run(model, "manual", "test")

    with pytest.raises(LedgerError, match=r"unknown retrain_runs column\(s\) \['colour'\]"):
        ledger.update_run(run_id, colour="blue")


def test_record_partitions_is_idempotent_and_records_a_changed_fingerprint(ledger, model):
    rows = [
        ("2011-03-01", "fp-a", 24, "ok", None),
        ("2011-03-02", "-", 23, "quarantined", "label 'cnt' is null in every row"),
    ]

    assert ledger.record_partitions(model, rows) == 2
    assert ledger.record_partitions(model, rows) == 0
    assert ledger.record_partitions(model, [("2011-03-01", "fp-b", 24, "ok", None)]) == 1

    manifest = ledger.manifest(model)
    assert [(m["partition_key"], m["fingerprint"], m["status"]) for m in manifest] == [
        ("2011-03-01", "fp-a", "ok"),
        ("2011-03-01", "fp-b", "ok"),
        ("2011-03-02", "-", "quarantined"),
    ]
    assert manifest[2]["reason"] == "label 'cnt' is null in every row"
    assert ledger.manifest(model + "-other") == []


def test_alias_changes_are_audited_in_order(ledger, model):
    ledger.record_alias_change(model, "challenger", None, "1", "flow", "registered")
    ledger.record_alias_change(model, "champion", None, "1", "ana", "approved", flow_run_id="fr-9")
    ledger.record_alias_change(model, "champion", "1", "2", "ana", "approved")

    history = ledger.alias_history(model)

    assert [(h["alias"], h["from_version"], h["to_version"], h["actor"]) for h in history] == [
        ("challenger", None, "1", "flow"),
        ("champion", None, "1", "ana"),
        ("champion", "1", "2", "ana"),
    ]
    assert history[1]["flow_run_id"] == "fr-9"
    assert history[0]["at"] <= history[2]["at"]


def test_an_alias_change_is_pending_until_done_and_then_audited_once(ledger, model):
    moves = [
        AliasMove("champion", "1", "2", "approved by ana"),
        AliasMove("previous", None, "1", "replaced by version 2"),
    ]
    intent = ledger.begin_alias_change(model, moves, "ana", flow_run_id="fr-1")

    [pending] = ledger.pending_alias_changes(model)
    assert (pending.id, pending.moves, pending.actor) == (intent, tuple(moves), "ana")
    assert ledger.alias_history(model) == []  # nothing audited before it is done

    assert ledger.finish_alias_change(intent) is True
    assert ledger.finish_alias_change(intent) is False  # a second finisher writes nothing
    assert ledger.pending_alias_changes(model) == []
    history = ledger.alias_history(model)
    assert [(h["alias"], h["from_version"], h["to_version"]) for h in history] == [
        ("champion", "1", "2"),
        ("previous", None, "1"),
    ]
    assert {h["flow_run_id"] for h in history} == {"fr-1"}
    assert ledger.audited_aliases(model) == {"champion": "2", "previous": "1"}


def test_a_reverted_alias_change_audits_only_what_it_is_given(ledger, model):
    intent = ledger.begin_alias_change(model, [AliasMove("champion", "1", "2", "x")], "ana")

    assert ledger.finish_alias_change(intent, "reverted", "nothing had moved yet", audit=[])

    assert ledger.alias_history(model) == []
    [change] = ledger.alias_changes(model)
    assert (change["status"], change["note"]) == ("reverted", "nothing had moved yet")


def test_a_ledger_newer_than_this_code_is_refused(ledger):
    with ledger.engine.begin() as conn:
        conn.execute(schema_version.insert().values(version=99, applied_at=pd.Timestamp.now()))

    with pytest.raises(LedgerError, match=r"schema version 99, newer than this retrain"):
        ledger.migrate()


def test_safe_url_hides_the_password():
    ledger = Ledger("postgresql+psycopg://retrain:s3cret@db.example:5432/ledger")

    assert "s3cret" not in ledger.safe_url()
    assert ledger.safe_url() == "postgresql+psycopg://retrain:***@db.example:5432/ledger"


def test_an_unreachable_ledger_is_a_ledger_error_without_the_password():
    ledger = Ledger("postgresql+psycopg://retrain:s3cret@127.0.0.1:1/ledger?connect_timeout=2")

    with pytest.raises(LedgerError, match=r"cannot reach the ledger at .*retrain:\*\*\*@") as info:
        ledger.migrate()
    assert "s3cret" not in str(info.value)


def test_monitor_checks_and_signals_are_stored_as_a_time_series(ledger, model):
    from retrain.monitor import Signal

    for day, fired in (("2012-01-01", False), ("2012-01-02", True)):
        ledger.record_check(
            model,
            pd.Timestamp(day),
            "3",
            [Signal("drift", 0.3 if fired else 0.01, 0.2, fired, feature="temp", p_value=0.001)],
            retrain=fired,
            fired=["drift"] if fired else [],
            reasons=["drift: drift in temp"] if fired else ["no rule fired"],
        )

    checks = ledger.recent_checks(model)
    assert [c["retrain"] for c in checks] == [False, True]
    assert ledger.last_triggered(model) == pd.Timestamp("2012-01-02")
    history = ledger.signal_history(model, "drift")
    assert [(h["feature"], h["fired"]) for h in history] == [("temp", False), ("temp", True)]
    assert history[1]["value"] == pytest.approx(0.3)


# -- one retrain per model ---------------------------------------------------------------------

HOUR = pd.Timedelta(hours=1)


def test_a_model_claimed_by_a_running_retrain_cannot_be_claimed_again(ledger, model):
    first = ledger.start_run(model, "continual", "drift")
    second = ledger.start_run(model, "continual", "drift again")

    assert ledger.claim_model(model, first, HOUR) is None
    assert ledger.claim_model(model, second, HOUR) == first
    ledger.release_model(model, first)
    assert ledger.claim_model(model, second, HOUR) is None


def test_a_claim_left_by_a_crashed_run_is_taken_over(ledger, model):
    crashed = ledger.start_run(model, "stateful", "night")
    assert ledger.claim_model(model, crashed, HOUR) is None
    ledger.finish_run(crashed, "failed", error="killed")  # it never released its claim

    later = ledger.start_run(model, "stateful", "next night")
    assert ledger.claim_model(model, later, HOUR) is None


def test_a_claim_older_than_the_stale_limit_is_taken_over(ledger, model):
    hung = ledger.start_run(model, "stateful", "night")
    assert ledger.claim_model(model, hung, HOUR) is None
    later = ledger.start_run(model, "stateful", "next night")
    assert ledger.claim_model(model, later, pd.Timedelta(0)) is None


def _claim_at_once(url: str, model: str, barrier: Any, out: Any) -> None:
    ledger = Ledger(url)
    run_id = ledger.start_run(model, "continual", "same moment")
    barrier.wait(timeout=30)
    out.put((run_id, ledger.claim_model(model, run_id, HOUR)))
    ledger.dispose()


def test_two_processes_claiming_at_the_same_moment_get_exactly_one_claim(ledger, model):
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_claim_at_once, args=(ledger.url, model, barrier, out)) for _ in range(2)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=60)
    results = [out.get(timeout=5) for _ in procs]

    winners = [run for run, holder in results if holder is None]
    losers = [(run, holder) for run, holder in results if holder is not None]
    assert len(winners) == 1
    assert losers == [(losers[0][0], winners[0])]


def test_a_claim_of_a_killed_process_is_taken_over_and_its_run_marked_failed(ledger, model):
    from retrain.ledger import model_locks, now, process_owner

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_owner = process_owner().rsplit(":", 1)[0] + ":" + gone.stdout.strip()
    killed = ledger.start_run(model, "manual", "killed mid-train")
    with ledger.engine.begin() as conn:
        conn.execute(
            model_locks.insert().values(
                model=model, run_id=killed, owner=dead_owner, acquired_at=now()
            )
        )

    rerun = ledger.start_run(model, "manual", "rerun")
    assert ledger.claim_model(model, rerun, pd.Timedelta(days=2)) is None
    [old] = [r for r in ledger.runs(model) if r.id == killed]
    assert (old.status, old.error) == ("failed", "abandoned: its process died")


def test_a_suspended_run_keeps_its_claim_with_no_process_until_its_timeout(ledger, model):
    waiting = ledger.start_run(model, "scheduled", "night", flow_run_id="flow-1")
    assert ledger.claim_model(model, waiting, HOUR) is None
    ledger.update_run(waiting, model_version="7")
    ledger.suspend_run(model, waiting)  # its process exits: only the ledger remembers it

    other = ledger.start_run(model, "manual", "operator")
    assert ledger.claim_model(model, other, HOUR) == waiting
    ledger.finish_run(other, "skipped", error="another retrain is running")
    assert ledger.retrain_in_flight(model).id == waiting
    assert ledger.expired_suspensions(model, HOUR) == []
    record = ledger.run_of_flow_run("flow-1")
    assert (record.id, record.status, record.model_version) == (waiting, "suspended", "7")

    ledger.resume_run(model, waiting)  # the operator answered: this process holds the claim
    assert ledger.run(waiting).status == "running"
    assert ledger.claim_model(model, ledger.start_run(model, "manual", "again"), HOUR) == waiting


def test_a_suspension_past_its_timeout_is_listed_as_expired(ledger, model):
    waiting = ledger.start_run(model, "scheduled", "night")
    assert ledger.claim_model(model, waiting, HOUR) is None
    ledger.suspend_run(model, waiting)

    [expired] = ledger.expired_suspensions(model, pd.Timedelta(0))
    assert (expired.id, expired.status) == (waiting, "suspended")
    assert ledger.expired_suspensions("another-model", pd.Timedelta(0)) == []


def test_resuming_a_run_whose_claim_was_taken_over_names_the_problem(ledger, model):
    waiting = ledger.start_run(model, "scheduled", "night")
    assert ledger.claim_model(model, waiting, HOUR) is None
    ledger.suspend_run(model, waiting)
    later = ledger.start_run(model, "manual", "much later")
    assert ledger.claim_model(model, later, pd.Timedelta(0)) is None  # stale: taken over

    with pytest.raises(LedgerError, match=f"suspended run {waiting} lost its claim on {model}"):
        ledger.resume_run(model, waiting)
    assert ledger.run(waiting).status == "failed"


def test_suspending_a_run_that_holds_no_claim_is_refused(ledger, model):
    run_id = ledger.start_run(model, "scheduled", "night")
    with pytest.raises(LedgerError, match=f"run {run_id} does not hold the claim on {model}"):
        ledger.suspend_run(model, run_id)


@pytest.mark.postgres
def test_concurrent_first_migrations_on_postgresql_all_succeed_once(postgres_url):
    """Four processes running their first `ledger migrate` at once on an empty PostgreSQL
    schema used to race on CREATE TABLE (IntegrityError on pg_type_typname_nsp_index)."""
    import threading

    with postgres_schema(postgres_url, "test_migrate_race") as url:
        ledgers = [Ledger(url) for _ in range(4)]
        start = threading.Barrier(len(ledgers))
        applied: list[int] = []
        errors: list[BaseException] = []

        def migrate(ledger: Ledger) -> None:
            start.wait()
            try:
                applied.append(ledger.migrate())
            except BaseException as exc:  # collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=migrate, args=(x,)) for x in ledgers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        assert sorted(applied) == [0, 0, 0, SCHEMA_VERSION]
        assert ledgers[0].current_version() == SCHEMA_VERSION
        for ledger in ledgers:
            ledger.dispose()


def _journal_mode(path: Path) -> str:
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
    finally:
        conn.close()


def test_a_sqlite_ledger_is_kept_in_wal_mode_and_still_reads_through_a_read_only_uri(
    tmp_path: Path,
):
    """Each ledger write commits on its own: in WAL mode a commit appends to the log instead
    of creating, syncing and deleting a journal file. An existing file in the default mode is
    switched at its next use; a read-only ``file:`` URI reads it as it is and writes nothing."""
    import sqlite3

    path = tmp_path / "state" / "ledger.db"
    ledger = Ledger(f"sqlite:///{path}")
    ledger.migrate()
    run = ledger.start_run("m", "manual", "test", actor="t")
    ledger.dispose()
    assert _journal_mode(path) == "wal"

    old = tmp_path / "old.db"  # a ledger made before: rollback-journal mode
    conn = sqlite3.connect(old)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()
    Ledger(f"sqlite:///{old}").migrate()
    assert _journal_mode(old) == "wal"

    read_only = Ledger(f"sqlite:///file:{path}?mode=ro&uri=true")
    assert read_only.run(run).model == "m"
    with pytest.raises(sa.exc.OperationalError, match="readonly"):
        read_only.start_run("m", "manual", "test", actor="t")
    read_only.dispose()
