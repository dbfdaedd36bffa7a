"""The scheduled mode: deployments of the retrain flow, served on a real Prefect server.

The unit tests build deployments in-process. The slow tests start their own ``prefect server
start`` on a fresh SQLite database (not the session's test harness) and talk to it only through
subprocesses given PREFECT_API_URL explicitly, and through the Prefect client pointed at it.
"""

from __future__ import annotations

import datetime
import itertools
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId
from prefect.client.schemas.objects import ConcurrencyLimitStrategy
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings
from typer.testing import CliRunner

from flows.cli import EMBEDDED_ENV, app
from flows.deployments import build_deployment, build_deployments, check_server
from registry import ModelRegistry
from retrain.config import load_spec
from retrain.errors import RetrainError
from retrain.ledger import Ledger
from tests.conftest import ROOT, als_spec_dict, spec_dict
from tests.flows.conftest import (
    BIN,
    PrefectServer,
    client_of,
    completed_run,
    free_port,
    read_deployment,
    running_intervals,
    start,
    stop,
)

DEMO_SPEC = ROOT / "retrain" / "demo" / "bike.toml"
PREFECT_YAML = ROOT / "deploy" / "prefect.yaml"
LIMIT_REACHED = "Deployment concurrency limit reached."


def write_spec(tmp_path: Path, bike_dir: Path, name: str = "spec.yaml", **overrides: Any) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec_dict(bike_dir, tmp_path / "state", **overrides)))
    return path


# --- deployments built in-process -------------------------------------------------------------


def test_the_scheduled_deployment_runs_the_flow_nightly_with_one_run_at_a_time():
    deployment = build_deployment(DEMO_SPEC)

    assert deployment.name == "bike-demand-scheduled"
    assert deployment.entrypoint == "flows/retrain_flow.py:retrain_flow"
    [schedule] = deployment.schedules
    assert schedule.schedule == CronSchedule(cron="0 2 * * *", timezone="UTC")
    assert schedule.active
    assert deployment.parameters == {
        "spec_path": str(DEMO_SPEC),
        "mode": "scheduled",
        "reason": "nightly schedule",
        "actor": "scheduler",
        "auto_approve": False,  # the demo spec requires approval
    }
    assert deployment.concurrency_limit == 1
    assert deployment.concurrency_options is not None
    assert deployment.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.CANCEL_NEW
    assert set(deployment.tags) == {"retrain", "model:bike-demand", "mode:scheduled"}
    assert "waits for an operator's approval" in (deployment.description or "")


def test_an_interval_replaces_the_cron(tmp_path, bike_dir):
    deployment = build_deployment(write_spec(tmp_path, bike_dir), interval_seconds=5)

    [schedule] = deployment.schedules
    assert isinstance(schedule.schedule, IntervalSchedule)
    assert schedule.schedule.interval == datetime.timedelta(seconds=5)
    assert deployment.parameters["reason"] == "interval schedule (every 5 s)"


def test_the_spec_path_is_made_absolute(tmp_path, bike_dir, monkeypatch):
    write_spec(tmp_path, bike_dir)
    monkeypatch.chdir(tmp_path)

    deployment = build_deployment("spec.yaml")

    assert deployment.parameters["spec_path"] == str(tmp_path / "spec.yaml")


@pytest.mark.parametrize(
    ("gate", "schedule", "auto_approve", "overrides"),
    [
        # not set in [schedule]: the flow reads gate.require_approval from the file at run time
        (True, None, False, None),
        (False, None, False, None),
        # set in [schedule]: it wins over the gate for scheduled runs
        (True, False, True, {"gate.require_approval": False}),
        (False, True, False, {"gate.require_approval": True}),
    ],
)
def test_scheduled_runs_auto_approve_only_when_the_spec_says_no_approval(
    tmp_path, bike_dir, gate, schedule, auto_approve, overrides
):
    path = write_spec(
        tmp_path,
        bike_dir,
        **{"gate.require_approval": gate, "schedule.require_approval": schedule},
    )

    parameters = build_deployment(path).parameters

    assert parameters["auto_approve"] is auto_approve
    assert parameters.get("overrides") == overrides


def test_a_custom_cron_and_time_zone_reach_the_schedule(tmp_path, bike_dir):
    path = write_spec(
        tmp_path,
        bike_dir,
        **{"schedule.cron": "30 4 * * 1-5", "schedule.timezone": "Europe/Berlin"},
    )

    deployment = build_deployment(path)

    assert deployment.schedules[0].schedule == CronSchedule(
        cron="30 4 * * 1-5", timezone="Europe/Berlin"
    )
    assert deployment.parameters["reason"] == "cron schedule '30 4 * * 1-5' (Europe/Berlin)"


def test_a_model_with_a_live_test_gets_its_online_evaluation_on_a_schedule(tmp_path, bike_dir):
    path = write_spec(
        tmp_path,
        bike_dir,
        **{"live.routing": "shadow", "live.evaluate_every": "30min", "gate.require_approval": True},
    )

    scheduled, live = build_deployments([path])

    assert scheduled.name == "bike-test-scheduled"
    assert live.name == "bike-test-live-evaluate"
    assert live.entrypoint == "flows/live_flow.py:live_evaluate_flow"
    [schedule] = live.schedules
    assert schedule.schedule.interval == datetime.timedelta(minutes=30)
    assert live.parameters == {
        "spec_path": str(path.resolve()),
        "auto_approve": False,
        "actor": "online-evaluation",
    }
    assert live.concurrency_limit == 1
    assert set(live.tags) == {"retrain", "model:bike-test", "mode:live-evaluate"}
    assert "waits for an operator's approval" in (live.description or "")


def test_a_model_without_a_live_test_gets_no_online_evaluation(tmp_path, bike_dir):
    path = write_spec(tmp_path, bike_dir, **{"gate.require_approval": False})

    assert [d.name for d in build_deployments([path])] == ["bike-test-scheduled"]


def test_two_specs_of_the_same_model_are_refused(tmp_path, bike_dir):
    first = write_spec(tmp_path, bike_dir, "a.yaml")
    second = write_spec(tmp_path, bike_dir, "b.yaml")

    with pytest.raises(RetrainError, match="both define the deployment 'bike-test-scheduled'"):
        build_deployments([first, second])


def test_a_non_positive_interval_is_refused(tmp_path, bike_dir):
    with pytest.raises(RetrainError, match="--interval must be a positive number of seconds"):
        build_deployment(write_spec(tmp_path, bike_dir), interval_seconds=0)


def test_serving_without_a_prefect_server_names_the_fix():
    unset = temporary_settings(restore_defaults={PREFECT_API_URL})
    with unset, pytest.raises(RetrainError, match=r"PREFECT_API_URL is not set.*server start"):
        check_server()
    nobody = f"http://127.0.0.1:{free_port()}/api"
    down = temporary_settings(updates={PREFECT_API_URL: nobody, PREFECT_CLIENT_MAX_RETRIES: 0})
    with down, pytest.raises(RetrainError, match=f"the Prefect server at {nobody} does not answer"):
        check_server()


def test_retrain_serve_refuses_a_spec_with_a_bad_cron(tmp_path, bike_dir):
    path = write_spec(tmp_path, bike_dir, **{"schedule.cron": "0 25 * * *"})

    result = CliRunner().invoke(app, ["serve", "--spec", str(path), "--interval", "5"])

    assert result.exit_code == 3  # a bad spec
    assert "schedule.cron: not a cron expression (Bad hour)" in " ".join(result.output.split())


def test_deploy_prefect_yaml_defines_the_same_deployment_as_retrain_serve():
    config = yaml.safe_load(PREFECT_YAML.read_text())
    [entry] = config["deployments"]
    built = build_deployment(DEMO_SPEC)

    assert entry["name"] == built.name
    assert entry["entrypoint"] == built.entrypoint
    path, function = entry["entrypoint"].split(":")
    assert (ROOT / path).is_file() and f"def {function}(" in (ROOT / path).read_text()
    assert (ROOT / entry["parameters"]["spec_path"]).resolve() == DEMO_SPEC
    assert {**entry["parameters"], "spec_path": str(DEMO_SPEC)} == built.parameters
    [schedule] = entry["schedules"]
    assert CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"]) == (
        built.schedules[0].schedule
    )
    assert entry["concurrency_limit"]["limit"] == built.concurrency_limit
    assert built.concurrency_options is not None
    assert entry["concurrency_limit"]["collision_strategy"] == (
        built.concurrency_options.collision_strategy.value
    )
    assert set(entry["tags"]) == set(built.tags)
    # a worker's runs get the environment the CLI gives its own (bounded MLflow retries)
    env = entry["work_pool"]["job_variables"]["env"]
    assert env == {key: EMBEDDED_ENV[key] for key in env}
    assert env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3"


# --- a real Prefect server in a subprocess (the live_server fixture: conftest.py) -----------


def serve_every_5s(
    server: PrefectServer, spec_path: Path, folder: Path
) -> tuple[subprocess.Popen, Path]:
    """`retrain serve` of one spec against ``server``, its schedule an interval of 5 s."""
    log = folder / "serve.log"
    env = {**server.env(), "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    command = [str(BIN / "retrain"), "serve", "--spec", str(spec_path), "--interval", "5"]
    return start(command, env, log, folder), log


@pytest.mark.slow
def test_a_scheduled_deployment_fires_on_its_schedule_on_a_real_prefect_server(
    live_server, tmp_path, bike_dir
):
    spec_path = write_spec(tmp_path, bike_dir)  # gate.require_approval = false: no pause
    started = time.monotonic()
    serve, serve_log = serve_every_5s(live_server, spec_path, tmp_path)
    try:
        deployment = read_deployment(live_server, "retrain/bike-test-scheduled")
        run = completed_run(live_server, deployment.id, serve_log, serve)
        fired_after = time.monotonic() - started
        stop(serve)
        with client_of(live_server) as client:
            deployment = client.read_deployment(deployment.id)
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    deployment_id=FlowRunFilterDeploymentId(any_=[deployment.id])
                )
            )
            histories = {r.name: client.read_flow_run_states(r.id) for r in runs}
    finally:
        stop(serve)

    # the run came from the deployment's schedule, not from anyone pressing "run"
    assert run.deployment_id == deployment.id
    assert run.auto_scheduled is True
    assert run.parameters["mode"] == "scheduled"
    assert run.parameters["spec_path"] == str(spec_path)
    assert run.parameters["auto_approve"] is False
    [schedule] = deployment.schedules
    assert schedule.schedule.interval == datetime.timedelta(seconds=5)
    # one retrain of the model at a time, enforced by the server
    assert deployment.global_concurrency_limit is not None
    assert deployment.global_concurrency_limit.limit == 1
    assert deployment.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.CANCEL_NEW
    running = sorted(running_intervals(histories))
    assert running, "no run of the deployment was ever Running"
    for (_, end, name), (later, _, other) in itertools.pairwise(running):
        assert end <= later, f"runs {name} and {other} of the deployment overlapped"
    refused = [r for r in runs if r.state and r.state.message == LIMIT_REACHED]

    # the retrain it ran is in the registry and the ledger as a scheduled one
    spec = load_spec(spec_path)
    ledger = Ledger(spec.state.ledger)
    registry = ModelRegistry(spec.state.tracking, spec.name, ledger)
    [moved] = [
        row
        for row in ledger.alias_history(spec.name)
        if row["alias"] == "champion" and row["flow_run_id"] == str(run.id)
    ]
    tags = registry.version(moved["to_version"]).tags
    assert tags["retrain.mode"] == "scheduled"
    assert tags["retrain.approval"] == "approved"
    # sliding window: the bike slice ends 2011-04-30, the 7-day holdout starts on the 24th
    assert tags["retrain.window_end"].startswith("2011-04-24")
    scheduled = [r for r in ledger.runs(spec.name, limit=100) if r.mode == "scheduled"]
    assert any(r.status == "promoted" and r.model_version == moved["to_version"] for r in scheduled)
    assert all(r.actor == "scheduler" for r in scheduled)
    print(
        f"first scheduled run completed {fired_after:.0f} s after `retrain serve` started; "
        f"{len(running)} run(s) ran one at a time, {len(refused)} overlapping one(s) cancelled"
    )


@pytest.mark.slow
def test_a_scheduled_als_deployment_fires_and_recomputes_on_the_sliding_window(
    live_server, tmp_path, taste_csv
):
    spec_path = tmp_path / "als.yaml"
    spec_path.write_text(yaml.safe_dump(als_spec_dict(taste_csv, tmp_path / "state")))
    serve, serve_log = serve_every_5s(live_server, spec_path, tmp_path)
    try:
        deployment = read_deployment(live_server, "retrain/taste-als-scheduled")
        run = completed_run(live_server, deployment.id, serve_log, serve)
    finally:
        stop(serve)

    assert run.auto_scheduled is True and run.parameters["mode"] == "scheduled"
    spec = load_spec(spec_path)
    ledger = Ledger(spec.state.ledger)
    promoted = [r for r in ledger.runs(spec.name, limit=100) if r.status == "promoted"]
    assert promoted, [(r.status, r.error) for r in ledger.runs(spec.name)]
    registry = ModelRegistry(spec.state.tracking, spec.name, ledger)
    tags = registry.version(promoted[-1].model_version).tags
    assert (tags["retrain.family"], tags["retrain.mode"]) == ("als", "scheduled")
    assert tags["retrain.strategy"] == "scratch"  # a full recompute on the window
    # the newest complete day is 2024-02-09 (40 days from 2024-01-01): holdout its last 4 days
    assert tags["retrain.window_end"] == "2024-02-06 00:00:00"


@pytest.mark.slow
def test_deploy_prefect_yaml_deploys_to_a_real_prefect_server(live_server, tmp_path):
    env = {**live_server.env(), "RETRAIN_HOME": str(ROOT)}
    pool = subprocess.run(
        [str(BIN / "prefect"), "work-pool", "create", "retrain", "--type", "process"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pool.returncode == 0, pool.stdout + pool.stderr
    deploy = subprocess.run(
        [
            str(BIN / "prefect"),
            "--no-prompt",
            "deploy",
            "--all",
            "--prefect-file",
            str(PREFECT_YAML),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr

    with client_of(live_server) as client:
        deployment = client.read_deployment_by_name("retrain/bike-demand-scheduled")

    assert deployment.entrypoint == "flows/retrain_flow.py:retrain_flow"
    assert deployment.work_pool_name == "retrain"
    [schedule] = deployment.schedules
    assert schedule.schedule == CronSchedule(cron="0 2 * * *", timezone="UTC")
    assert deployment.global_concurrency_limit is not None
    assert deployment.global_concurrency_limit.limit == 1
    assert deployment.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.CANCEL_NEW
    assert deployment.parameters["mode"] == "scheduled"
    assert deployment.parameters["auto_approve"] is False
    assert deployment.job_variables["env"]["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3"
    # RETRAIN_HOME is read when `prefect deploy` runs: the checkout's path on the workers
    assert deployment.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}
    ]


@pytest.mark.slow
def test_retrain_serve_with_a_work_pool_registers_the_deployments_on_it_and_returns(
    live_server, tmp_path, bike_dir
):
    spec_path = write_spec(tmp_path, bike_dir)

    done = subprocess.run(
        [str(BIN / "retrain"), "serve", "--spec", str(spec_path), "--work-pool", "fleet"],
        env=live_server.env(),
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "deployed retrain/bike-test-scheduled on work pool fleet" in done.stdout
    with client_of(live_server) as client:
        deployment = client.read_deployment_by_name("retrain/bike-test-scheduled")
        pool = client.read_work_pool("fleet")
    assert deployment.work_pool_name == "fleet"
    assert pool.type == "process"
    assert deployment.global_concurrency_limit is not None
    assert deployment.global_concurrency_limit.limit == 1
