"""A fleet of models on a Prefect process work pool (flows.deployments.deploy_models): a real
Prefect server on PostgreSQL and two `prefect worker start` processes run several models'
retrains at once, one run per model."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import StateType

from tests.conftest import spec_dict
from tests.flows.conftest import (
    BIN,
    PrefectServer,
    base_env,
    client_of,
    free_port,
    start,
    stop,
    tail,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
MODELS = 3
POOL = "fleet"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def pg_server(postgres_url: str, tmp_path: Path) -> Iterator[PrefectServer]:
    """``prefect server start`` on a fresh PostgreSQL database, dropped afterwards."""
    database = f"prefect_fleet_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{database}"'))
    url = sa.make_url(postgres_url).set(drivername="postgresql+asyncpg", database=database)
    root = tmp_path / "prefect-server"
    root.mkdir()
    env = base_env(root / "home")
    env.update(
        PREFECT_API_DATABASE_CONNECTION_URL=url.render_as_string(hide_password=False),
        PREFECT_UI_ENABLED="false",
    )
    port = free_port()
    log = root / "server.log"
    process = start(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env,
        log,
        root,
    )
    api = f"http://127.0.0.1:{port}/api"
    try:
        import urllib.request

        deadline = time.monotonic() + 240
        while True:
            if process.poll() is not None:
                pytest.fail(f"prefect server exited:\n{tail(log)}")
            try:
                with urllib.request.urlopen(f"{api}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the Prefect server did not answer:\n{tail(log)}")
            time.sleep(1)
        yield PrefectServer(api, root / "home", log)
    finally:
        stop(process)
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()


def test_two_workers_run_a_fleets_retrains_concurrently_one_run_per_model(
    pg_server: PrefectServer, bike_dir: Path, tmp_path: Path
):
    specs = []
    for i in range(MODELS):
        data = spec_dict(bike_dir, tmp_path / f"state-{i}", name=f"fleet-{i}", seed=40 + i)
        path = tmp_path / f"fleet-{i}.yaml"
        path.write_text(yaml.safe_dump(data))
        specs.append(path)
    env = {**pg_server.env(), "PYTHONPATH": str(ROOT)}
    deploy = subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "serve.py"), *map(str, specs), "--work-pool", POOL],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    assert deploy.stdout.count(f"on work pool {POOL}") == MODELS
    workers = [
        start(
            [
                str(BIN / "prefect"),
                "worker",
                "start",
                "--pool",
                POOL,
                "--name",
                f"w{i}",
                "--limit",
                "1",
            ],
            env,
            tmp_path / f"worker-{i}.log",
            tmp_path,
        )
        for i in range(2)
    ]
    try:
        with client_of(pg_server) as client:
            deployments = [
                client.read_deployment_by_name(f"retrain/fleet-{i}-scheduled")
                for i in range(MODELS)
            ]
            assert {d.work_pool_name for d in deployments} == {POOL}
            limits = [d.global_concurrency_limit for d in deployments]
            assert all(limit is not None and limit.limit == 1 for limit in limits)
            assert all(
                d.concurrency_options is not None
                and d.concurrency_options.collision_strategy == "CANCEL_NEW"
                for d in deployments
            )
            ids = [d.id for d in deployments]
            # the night's runs of every model, plus a second run of model 0 at the same time
            # (only these runs are watched: the cron schedules also create future runs)
            created = [
                client.create_flow_run_from_deployment(deployment_id).id
                for deployment_id in [*ids, ids[0]]
            ]
            deadline = time.monotonic() + 900
            while True:
                runs = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=created))
                )
                if all(r.state_type in {StateType.COMPLETED, StateType.CANCELLED} for r in runs):
                    break
                bad = [r for r in runs if r.state_type in {StateType.FAILED, StateType.CRASHED}]
                assert not bad, "\n".join(tail(tmp_path / f"worker-{i}.log") for i in range(2))
                assert time.monotonic() < deadline, [r.state_type for r in runs]
                time.sleep(3)
    finally:
        for worker in workers:
            stop(worker)

    completed = [r for r in runs if r.state_type == StateType.COMPLETED]
    assert {r.deployment_id for r in completed} == set(ids)  # every model retrained
    # one run per model at a time: no two runs of one deployment overlapped
    for deployment_id in ids:
        spans = sorted(
            (r.start_time, r.end_time) for r in completed if r.deployment_id == deployment_id
        )
        assert all(a[1] <= b[0] for a, b in pairwise(spans))
    # both workers ran retrains, and runs of different models overlapped in time
    logs = [(tmp_path / f"worker-{i}.log").read_text(errors="replace") for i in range(2)]
    assert all("submitting flow run" in log.lower() for log in logs), logs
    spans = sorted((r.start_time, r.end_time) for r in completed)
    assert any(a[1] > b[0] for a, b in pairwise(spans))
