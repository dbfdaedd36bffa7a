"""The ledger's PostgreSQL server restarted in the middle of a retrain and of a transaction.

These tests restart a PostgreSQL server of their own: a throw-away cluster (``initdb`` in a
temporary directory, on a free port, trust auth) started for this module and removed after it,
never the shared server of RETRAIN_TEST_POSTGRES_URL, whose other users would be cut off too.
They are ``slow`` and ``postgres``; under CI a missing PostgreSQL installation fails them.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
import yaml

from retrain.ledger import Ledger, model_locks, now, process_owner
from tests.conftest import free_port, postgres_schema

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def pg_bin() -> Path:
    """The directory of PostgreSQL's server binaries (initdb, pg_ctl)."""
    found = shutil.which("initdb") or next(
        iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)), None
    )
    if found is None:
        message = "no PostgreSQL server binaries (initdb) here: install postgresql"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return Path(found).parent


class OwnPostgres:
    """A PostgreSQL cluster in a temporary directory, run as the ``postgres`` user when root
    (initdb refuses root)."""

    def __init__(self) -> None:
        self.bin = pg_bin()
        self.dir = Path(tempfile.mkdtemp(prefix="retrain-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=120)

    def init(self) -> OwnPostgres:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust")
        return self

    def pg_ctl(self, action: str) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"),
            "-o", options, "-w", action,
        )  # fmt: skip

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # not running
            self.pg_ctl("stop")
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[OwnPostgres]:
    server = OwnPostgres().init()
    try:
        server.pg_ctl("start")
        wait_until_up(server.url)
        yield server
    finally:
        server.remove()


def wait_until_up(url: str, timeout: float = 60) -> None:
    engine = sa.create_engine(url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                with engine.connect() as conn:
                    conn.execute(sa.text("SELECT 1"))
                return
            except sa.exc.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        engine.dispose()


@pytest.fixture
def restart_postgres(own_postgres: OwnPostgres) -> Iterator[Callable[[], None]]:
    """Restart this module's own server now; whatever happens, it runs again afterwards."""

    def restart() -> None:
        own_postgres.pg_ctl("restart")
        wait_until_up(own_postgres.url)

    try:
        yield restart
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # already running
            own_postgres.pg_ctl("start")
        wait_until_up(own_postgres.url)


@pytest.fixture
def ledger_url(own_postgres: OwnPostgres) -> Iterator[str]:
    with postgres_schema(own_postgres.url, "test_restart") as url:
        yield url


def dead_owner() -> str:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return process_owner().rsplit(":", 1)[0] + ":" + gone.stdout.strip()


def test_a_restart_inside_a_ledger_transaction_leaves_nothing_half_written(
    ledger_url, restart_postgres
):
    """Taking over a dead run's claim is two writes (run failed, claim deleted) in one
    transaction: the server restarting between them must leave neither."""
    ledger = Ledger(ledger_url)
    ledger.migrate()
    killed = ledger.start_run("bike", "manual", "killed mid-train")
    with ledger.engine.begin() as conn:
        conn.execute(
            model_locks.insert().values(
                model="bike", run_id=killed, owner=dead_owner(), acquired_at=now()
            )
        )
    rerun = ledger.start_run("bike", "manual", "rerun")
    restarted = []

    @sa.event.listens_for(ledger.engine, "before_cursor_execute")
    def restart_before_the_second_write(conn, cursor, statement, *args):
        if statement.startswith("DELETE FROM model_locks") and not restarted:
            restarted.append(statement)
            restart_postgres()  # the UPDATE of the killed run is done but not committed

    with pytest.raises(sa.exc.OperationalError):
        ledger.claim_model("bike", rerun, pd.Timedelta(days=2))

    assert restarted
    runs = {r.id: r for r in ledger.runs("bike")}
    assert runs[killed].status == "running"  # the UPDATE was rolled back with the DELETE
    with ledger.engine.connect() as conn:
        holders = conn.execute(sa.select(model_locks.c.run_id)).scalars().all()
    assert holders == [killed]
    # the server is back: the same call now completes the takeover as a whole
    assert ledger.claim_model("bike", rerun, pd.Timedelta(days=2)) is None
    runs = {r.id: r for r in ledger.runs("bike")}
    assert (runs[killed].status, runs[killed].error) == ("failed", "abandoned: its process died")
    with ledger.engine.connect() as conn:
        holders = conn.execute(sa.select(model_locks.c.run_id)).scalars().all()
    assert holders == [rerun]
    ledger.dispose()


def test_a_retrain_survives_the_ledger_server_restarting_mid_run(
    tmp_path: Path, bike_dir: Path, ledger_url, restart_postgres, monkeypatch, prefect_harness
):
    """The restart cuts the pooled ledger connections while the model trains: the run's next
    ledger writes reconnect (pool pre-ping) and the run ends promoted, with a consistent
    ledger and registry."""
    import flows.retrain_flow as retrain_flow_module
    from flows.retrain_flow import make_registry, retrain_flow
    from flows.settings import resolve_spec
    from tests.conftest import spec_dict

    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec_dict(bike_dir, tmp_path / "state")))
    monkeypatch.setenv("RETRAIN_LEDGER_URL", ledger_url)
    real_fit = retrain_flow_module.train_candidate
    restarts = []

    def fit_with_a_restart(*args, **kwargs):
        restart_postgres()
        restarts.append(time.monotonic())
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(retrain_flow_module, "train_candidate", fit_with_a_restart)

    outcome = retrain_flow(str(spec_path), as_of="2011-04-29", auto_approve=True)

    assert len(restarts) == 1
    assert outcome["promoted"]
    ledger = Ledger(ledger_url)
    [run] = ledger.runs("bike-test")
    assert (run.status, run.model_version, run.promoted) == ("promoted", outcome["version"], True)
    assert run.data_version == outcome["data_version"]  # written after the restart
    assert ledger.retrain_in_flight("bike-test") is None
    with ledger.engine.connect() as conn:
        assert conn.execute(sa.select(model_locks)).all() == []  # the claim was released
    registry = make_registry(resolve_spec(spec_path), ledger)
    assert registry.aliases()["champion"] == outcome["version"]
    champion_moves = [a for a in ledger.alias_history("bike-test") if a["alias"] == "champion"]
    assert [a["to_version"] for a in champion_moves] == [outcome["version"]]
    ledger.dispose()
