"""A fleet of models on one process work pool, run by two `prefect worker` processes.

What production runs past one machine (docs/scale.md): a Prefect server on PostgreSQL (a
fresh database of the test PostgreSQL, created and dropped here), every model's deployments
registered on a process work pool by ``python deploy/serve.py SPEC ... --work-pool NAME``, and
two ``prefect worker start --pool NAME --limit 1`` processes that each run one retrain at a time.
"""

from __future__ import annotations

import itertools
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from prefect.client.schemas.objects import FlowRun, StateType

from retrain.config import load_spec
from retrain.ledger import Ledger
from tests.conftest import ROOT, spec_dict
from tests.flows.conftest import (
    BIN,
    PrefectServer,
    client_of,
    prefect_server_on,
    running_intervals,
    start,
    stop,
    tail,
)

POOL = "fleet"
# two models, the least that can overlap; a third would add a round of ~45 s to the suite
MODELS = 2
RUN_TIMEOUT = 300
LIMIT_REACHED = "Deployment concurrency limit reached."
FINAL = {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}


@pytest.fixture(scope="module")
def postgres_database(postgres_url: str) -> Iterator[sa.URL]:
    """A fresh database on the test PostgreSQL server (CREATE DATABASE), dropped afterwards."""
    import psycopg

    try:
        import asyncpg  # noqa: F401
    except ImportError:  # prefect depends on it: a broken install, not a reason to skip
        pytest.fail("the Prefect server on PostgreSQL needs asyncpg: pip install asyncpg")

    server = sa.make_url(postgres_url)
    admin = server.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"retrain_fleet_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server.set(database=name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def postgres_server(postgres_database: sa.URL, tmp_path_factory) -> Iterator[PrefectServer]:
    """``prefect server start`` on the fresh PostgreSQL database."""
    root = tmp_path_factory.mktemp("prefect-postgres")
    url = postgres_database.set(drivername="postgresql+asyncpg")
    with prefect_server_on(root, url.render_as_string(hide_password=False)) as server:
        yield server


def write_specs(folder: Path, bike_dir: Path) -> list[Path]:
    paths = []
    for i in range(MODELS):
        path = folder / f"fleet-{i}.yaml"
        spec = spec_dict(
            bike_dir,
            folder / f"state-{i}",
            name=f"fleet-{i}",
            seed=i,
            # never due while the test runs: only the runs the test asks for run
            **{"schedule.cron": "0 2 29 2 *"},
        )
        path.write_text(yaml.safe_dump(spec))
        paths.append(path)
    return paths


def wait_until_final(
    server: PrefectServer, run_ids: list, workers: dict[str, tuple[subprocess.Popen, Path]]
) -> list[FlowRun]:
    deadline = time.monotonic() + RUN_TIMEOUT
    with client_of(server) as client:
        while True:
            for name, (process, log) in workers.items():
                if process.poll() is not None:
                    pytest.fail(f"{name} exited with {process.returncode}:\n{tail(log)}")
            runs = [client.read_flow_run(run_id) for run_id in run_ids]
            if all(run.state_type in FINAL for run in runs):
                return runs
            if time.monotonic() > deadline:
                states = {run.name: run.state_type for run in runs}
                logs = "\n".join(tail(log, 30) for _, log in workers.values())
                pytest.fail(f"runs not finished within {RUN_TIMEOUT} s: {states}\n{logs}")
            time.sleep(2)


def wait_for_workers(
    server: PrefectServer, workers: dict[str, tuple[subprocess.Popen, Path]]
) -> None:
    """Until both workers polled the pool (a run asked for earlier could all go to one)."""
    deadline = time.monotonic() + RUN_TIMEOUT
    with client_of(server) as client:
        while {w.name for w in client.read_workers_for_work_pool(POOL)} < set(workers):
            for name, (process, log) in workers.items():
                if process.poll() is not None:
                    pytest.fail(f"{name} exited with {process.returncode}:\n{tail(log)}")
            if time.monotonic() > deadline:
                pytest.fail(f"the workers did not poll {POOL!r} within {RUN_TIMEOUT} s")
            time.sleep(1)


def ran_by(run: FlowRun, workers: dict[str, tuple[subprocess.Popen, Path]]) -> str:
    """The worker whose process ran ``run``: a process worker streams its runs' output, and the
    engine's last line names the run ("Flow run 'name' - Finished in state ..."). Not the
    "submitting" line: two workers may both try to submit one run, and one of them loses."""
    finished = f"Flow run '{run.name}' - Finished in state"
    deadline = time.monotonic() + 60  # the server may know the final state before the line lands
    while True:
        names = [
            name
            for name, (_, log) in workers.items()
            if finished in log.read_text(errors="replace")
        ]
        if names or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(names) == 1, f"run {run.name} finished in the output of {names or 'no worker'}"
    return names[0]


@pytest.mark.slow
@pytest.mark.postgres
def test_two_workers_run_a_fleet_of_models_concurrently_and_each_model_one_at_a_time(
    postgres_server, tmp_path, bike_dir
):
    env = {**postgres_server.env(), "PREFECT_WORKER_QUERY_SECONDS": "2"}
    workers: dict[str, tuple[subprocess.Popen, Path]] = {}
    try:
        for i in range(2):
            name, log = f"worker-{i}", tmp_path / f"worker-{i}.log"
            command = [
                str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process",
                "--limit", "1", "--name", name,
            ]  # fmt: skip
            workers[name] = (start(command, env, log, tmp_path), log)
        specs = write_specs(tmp_path, bike_dir)
        deploy = subprocess.run(
            [BIN / "python", ROOT / "deploy" / "serve.py", *specs, "--work-pool", POOL],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        wait_for_workers(postgres_server, workers)
        with client_of(postgres_server) as client:
            deployments = [
                client.read_deployment_by_name(f"retrain/fleet-{i}-scheduled")
                for i in range(MODELS)
            ]
            # one run per model, and a second run of the first model asked for right after its
            # first: a free worker picks it up while the first runs (and the server cancels
            # it), or after the first has finished
            first, again, *others = [
                client.create_flow_run_from_deployment(d.id)
                for d in [deployments[0], deployments[0], *deployments[1:]]
            ]
        ids = [run.id for run in [first, *others, again]]
        runs = wait_until_final(postgres_server, ids, workers)
        with client_of(postgres_server) as client:
            histories = {run.name: client.read_flow_run_states(run.id) for run in runs}
        # before the workers stop: the server knows a final state before the run's process has
        # printed its last line, and stopping a worker then cuts that line off
        runners = {run.name: ran_by(run, workers) for run in runs[:MODELS]}
    finally:
        for process, _ in workers.values():
            stop(process)

    *model_runs, second = runs
    logs = "\n".join(tail(log, 30) for _, log in workers.values())
    for run in model_runs:
        assert run.state_type == StateType.COMPLETED, f"{run.name}: {run.state}\n{logs}"
    for deployment, run in zip(deployments, model_runs, strict=True):
        assert run.deployment_id == deployment.id and run.work_pool_name == POOL
    # the second run of the first model ran after the first, or the server refused it
    assert second.state_type == StateType.COMPLETED or (
        second.state_type == StateType.CANCELLED and second.state.message == LIMIT_REACHED
    ), f"{second.name}: {second.state}"

    # both workers ran retrains, and retrains of different models ran at the same time
    assert set(runners.values()) == set(workers), runners
    model_of = {run.name: str(run.deployment_id) for run in runs}
    running = sorted(running_intervals(histories))
    overlapping = [
        (a, b)
        for (start_a, end_a, a), (start_b, end_b, b) in itertools.combinations(running, 2)
        if start_a < end_b and start_b < end_a
    ]
    assert any(model_of[a] != model_of[b] for a, b in overlapping), running
    # never two runs of one model at once
    assert all(model_of[a] != model_of[b] for a, b in overlapping), overlapping

    # every model's retrain did its work: a promoted version in its own ledger
    for spec_path in tmp_path.glob("fleet-*.yaml"):
        spec = load_spec(spec_path)
        statuses = [r.status for r in Ledger(spec.state.ledger).runs(spec.name, limit=10)]
        assert "promoted" in statuses, (spec.name, statuses)
