"""The scheduled (stateless) mode: the retrain flow served as one Prefect deployment per model.

Each deployment, ``<model>-scheduled``, runs the retrain flow on the cron schedule of the spec's
``[schedule]`` table (nightly at 02:00 UTC by default). It retrains from scratch on the sliding
window that ends at the newest complete partition: ``as_of`` is left empty, so ingest drops a
partition that is still filling up and the windows end where the complete data ends.

Promotion: the gate always applies. ``schedule.require_approval`` (when set) overrides
``gate.require_approval`` for scheduled runs; when it is not set the flow reads
``gate.require_approval`` from the spec file at run time. ``auto_approve`` is true only when the
spec says ``schedule.require_approval = false``.

One retrain per model at a time: the deployment carries a Prefect *deployment concurrency limit*
of 1 with the ``CANCEL_NEW`` collision strategy. The Prefect server enforces it when a run of the
deployment moves to Pending (``SecureFlowConcurrencySlots``): while one run holds the slot, the
next scheduled run is cancelled ("Deployment concurrency limit reached") instead of queueing
behind it; a stateless retrain that is skipped loses nothing, the next one trains on newer data.
Prefect releases the slot when a run leaves Running, so a run paused for approval does not block
the next night's retrain.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import serve
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger
from prefect.schedules import Cron, Interval, Schedule
from prefect.settings import get_current_settings
from prefect.types.entrypoint import EntrypointType

from flows.errors import PrefectUnreachable
from flows.live_flow import live_evaluate_flow
from flows.monitor_flow import RETRAIN_EVENT, model_resource, monitor_flow
from flows.retrain_flow import retrain_flow
from flows.settings import resolve_spec
from retrain.config import ModelSpec, ScheduleSpec
from retrain.errors import RetrainError, SpecError
from retrain.statuses import Mode

SCHEDULED_MODE: Mode = "scheduled"
CONTINUAL_MODE: Mode = "continual"  # what a monitor's retrain request runs
SCHEDULER_ACTOR = "scheduler"
# At most one run of a model's scheduled deployment at a time; a run that would overlap is
# cancelled, not queued.
CONCURRENCY = ConcurrencyLimitConfig(
    limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW
)


def deployment_name(spec: ModelSpec) -> str:
    return f"{spec.name}-scheduled"


def schedule_reason(schedule: ScheduleSpec, interval_seconds: float | None = None) -> str:
    if interval_seconds is not None:
        return f"interval schedule (every {interval_seconds:g} s)"
    if schedule.cron == ScheduleSpec().cron:
        return "nightly schedule"
    return f"cron schedule {schedule.cron!r} ({schedule.timezone})"


def scheduled_parameters(
    spec: ModelSpec, spec_path: str | Path, interval_seconds: float | None = None
) -> dict[str, Any]:
    """The flow parameters of a scheduled run: the spec by absolute path, no ``as_of``."""
    parameters: dict[str, Any] = {
        "spec_path": str(Path(spec_path).resolve()),
        "mode": SCHEDULED_MODE,
        "reason": schedule_reason(spec.schedule, interval_seconds),
        "actor": SCHEDULER_ACTOR,
        "auto_approve": spec.schedule.require_approval is False,
    }
    if spec.schedule.require_approval is not None:
        parameters["overrides"] = {"gate.require_approval": spec.schedule.require_approval}
    return parameters


def cron_schedule(spec: ModelSpec) -> Schedule:
    try:
        return Cron(spec.schedule.cron, timezone=spec.schedule.timezone)
    except ValueError as exc:
        raise SpecError(
            f"schedule.cron {spec.schedule.cron!r} of model {spec.name!r} is refused by "
            f"Prefect ({exc}); write five cron fields such as '0 2 * * *'"
        ) from None


# What a worker-started run gets, as `retrain` sets for itself (flows/cli.py EMBEDDED_ENV): see
# deploy/prefect.yaml, which carries the same variables.
WORKER_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "retrain,registry",
}


def pool_options(work_pool: str | None, working_dir: str | Path | None = None) -> dict[str, Any]:
    """``to_deployment`` options that put a deployment on a process work pool.

    The flow is named by module path (``flows.retrain_flow.retrain_flow``), so any worker with
    retrain installed imports it; no code is copied. Runs start in ``working_dir`` (default:
    the current directory), where relative spec paths and state directories resolve.
    """
    if work_pool is None:
        return {}
    return {
        "work_pool_name": work_pool,
        "entrypoint_type": EntrypointType.MODULE_PATH,
        "job_variables": {
            "working_dir": str(Path(working_dir or Path.cwd()).resolve()),
            "env": dict(WORKER_ENV),
        },
    }


def build_deployment(
    spec_path: str | Path,
    interval_seconds: float | None = None,
    work_pool: str | None = None,
) -> RunnerDeployment:
    """The scheduled deployment of one model spec (``interval_seconds`` replaces the cron)."""
    spec = resolve_spec(spec_path)
    if interval_seconds is not None:
        if interval_seconds <= 0:
            raise RetrainError(
                f"--interval must be a positive number of seconds, got {interval_seconds:g}"
            )
        schedule = Interval(datetime.timedelta(seconds=interval_seconds))
        when = f"every {interval_seconds:g} s"
    else:
        schedule = cron_schedule(spec)
        when = f"cron '{spec.schedule.cron}' ({spec.schedule.timezone})"
    approval = (
        "waits for an operator's approval in the Prefect UI"
        if spec.schedule.requires_approval(spec.gate)
        else "is promoted without an operator"
    )
    description = (
        f"Scheduled retrain of {spec.name}, {when}: from scratch on the newest "
        f"{spec.windows.train} training + {spec.windows.holdout} holdout window ending at the "
        f"newest complete partition; a candidate that passes the gate {approval}. "
        "At most one run at a time (an overlapping run is cancelled)."
    )
    deployment = retrain_flow.to_deployment(
        name=deployment_name(spec),
        schedule=schedule,
        parameters=scheduled_parameters(spec, spec_path, interval_seconds),
        concurrency_limit=CONCURRENCY,
        description=description,
        tags=["retrain", f"model:{spec.name}", f"mode:{SCHEDULED_MODE}"],
        **pool_options(work_pool),
    )
    assert isinstance(deployment, RunnerDeployment)  # to_deployment is sync here
    return deployment


def continual_deployments(
    spec_path: str | Path,
    monitor_interval_seconds: float | None = None,
    work_pool: str | None = None,
) -> list[RunnerDeployment]:
    """The continual mode of one model: a monitor on a short schedule, and a stateful retrain
    triggered by the monitor's ``retrain.model.retrain-requested`` event for this model.

    The retrain deployment has a concurrency limit of one (an event while a retrain of the same
    model runs is cancelled by the server; the monitor also checks the ledger before emitting).
    """
    spec = resolve_spec(spec_path)
    path = str(Path(spec_path).resolve())
    seconds = monitor_interval_seconds or pd.Timedelta(spec.monitor.interval).total_seconds()
    if seconds <= 0:
        raise RetrainError(f"the monitor interval must be positive, got {seconds:g} s")
    monitor = monitor_flow.to_deployment(
        name=f"{spec.name}-monitor",
        schedule=Interval(datetime.timedelta(seconds=seconds)),
        parameters={"spec_path": path},
        concurrency_limit=CONCURRENCY,
        description=f"Signals of {spec.name} every {seconds:g} s; emits {RETRAIN_EVENT}.",
        tags=["retrain", f"model:{spec.name}", "mode:monitor"],
        **pool_options(work_pool),
    )
    trigger = DeploymentEventTrigger(
        name=f"{spec.name} retrain requested",
        expect={RETRAIN_EVENT},
        match={"prefect.resource.id": model_resource(spec.name)["prefect.resource.id"]},
        parameters={
            "spec_path": path,
            "mode": CONTINUAL_MODE,
            "reason": "{{ event.payload.reason }}",
            "as_of": "{{ event.payload.as_of }}",
            "trigger_check": "{{ event.payload.check_id }}",
            "actor": "monitor",
            "auto_approve": not spec.gate.require_approval,
        },
    )
    continual = retrain_flow.to_deployment(
        name=f"{spec.name}-continual",
        triggers=[trigger],
        concurrency_limit=CONCURRENCY,
        description=f"Stateful retrain of {spec.name} when its monitor requests one.",
        tags=["retrain", f"model:{spec.name}", "mode:continual"],
        **pool_options(work_pool),
    )
    for deployment in (monitor, continual):
        assert isinstance(deployment, RunnerDeployment)
    return [monitor, continual]  # type: ignore[list-item]


def live_deployment(spec_path: str | Path, work_pool: str | None = None) -> RunnerDeployment | None:
    """The online evaluation of one model's live test, every ``live.evaluate_every``.

    None when ``live.routing`` is ``off`` (no live test to evaluate). A run joins the gateway's
    logged answers with their feedback, decides (continue, promote, roll back) and carries the
    decision out; a promotion asks the operator when ``gate.require_approval`` says so.
    """
    spec = resolve_spec(spec_path)
    if spec.live.routing == "off":
        return None
    seconds = pd.Timedelta(spec.live.evaluate_every).total_seconds()
    approval = (
        "waits for an operator's approval in the Prefect UI"
        if spec.gate.require_approval
        else "is carried out without an operator"
    )
    deployment = live_evaluate_flow.to_deployment(
        name=live_deployment_name(spec),
        schedule=Interval(datetime.timedelta(seconds=seconds)),
        parameters={
            "spec_path": str(Path(spec_path).resolve()),
            "auto_approve": not spec.gate.require_approval,
            "actor": "online-evaluation",
        },
        concurrency_limit=CONCURRENCY,
        description=(
            f"Online evaluation of {spec.name}'s {spec.live.routing} test every "
            f"{spec.live.evaluate_every}: joins the gateway's answers with their feedback and "
            f"decides; a promotion {approval}. At most one run at a time."
        ),
        tags=["retrain", f"model:{spec.name}", "mode:live-evaluate"],
        **pool_options(work_pool),
    )
    assert isinstance(deployment, RunnerDeployment)
    return deployment


def live_deployment_name(spec: ModelSpec) -> str:
    return f"{spec.name}-live-evaluate"


def check_server() -> str:
    """The configured Prefect API URL, after checking that the server answers."""
    url = get_current_settings().api.url
    if not url:
        raise PrefectUnreachable(
            "PREFECT_API_URL is not set: scheduled deployments need a running Prefect server. "
            "Start one with `prefect server start` and "
            "`export PREFECT_API_URL=http://127.0.0.1:4200/api` (or `prefect config set`)."
        )
    with get_client(sync_client=True) as client:
        failure = client.api_healthcheck()
    if failure is not None:
        raise PrefectUnreachable(
            f"the Prefect server at {url} does not answer ({failure}): start it with "
            "`prefect server start` or point PREFECT_API_URL at a running one"
        )
    return url


def build_deployments(
    spec_paths: Sequence[str | Path],
    interval_seconds: float | None = None,
    work_pool: str | None = None,
) -> list[RunnerDeployment]:
    if not spec_paths:
        raise RetrainError("no model spec given: pass at least one --spec FILE")
    deployments = [build_deployment(path, interval_seconds, work_pool) for path in spec_paths]
    seen: dict[str, str | Path] = {}
    for path, deployment in zip(spec_paths, deployments, strict=True):
        if deployment.name in seen:
            raise RetrainError(
                f"{seen[deployment.name]} and {path} both define the deployment "
                f"{deployment.name!r} (the same model name): give each model its own name"
            )
        seen[deployment.name] = path
    # every model with a live test also gets its online evaluation on a schedule
    for path in spec_paths:
        live = live_deployment(path, work_pool)
        if live is not None:
            deployments.append(live)
    return deployments


def serve_models(
    spec_paths: Sequence[str | Path],
    interval_seconds: float | None = None,
    continual: bool = False,
    monitor_interval_seconds: float | None = None,
) -> None:
    """Serve the scheduled deployment of every spec until interrupted (Ctrl-C).

    Runs are executed by this process (as subprocesses), so it must be able to read the specs,
    the data and the state directory. ``interval_seconds`` replaces the cron (tests, demos).
    Stopping it pauses the schedules.
    """
    deployments = build_deployments(spec_paths, interval_seconds)
    if continual:
        for path in spec_paths:
            deployments += continual_deployments(path, monitor_interval_seconds)
    check_server()
    serve(*deployments)


def ensure_process_pool(name: str) -> None:
    """Create the process work pool ``name`` if the server has none of that name."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(
                    name=name,
                    type=ProcessWorker.type,
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                    description="retrain: every model's deployments; `prefect worker start "
                    f"--pool {name}` on each machine that runs retrains",
                )
            )
            return
    if pool.type != ProcessWorker.type:
        raise RetrainError(
            f"work pool {name!r} is of type {pool.type!r}, not 'process': pick another "
            "--work-pool name or delete that pool"
        )


SWEEP_DEPLOYMENT = "sweep"


def deploy_sweep(work_pool: str, working_dir: str | Path | None = None) -> str:
    """Register the sweep deployment (``retrain-sweep/sweep``) on the process work pool.

    A run of it retrains the models it is given (``spec_paths``, ``mode``, ``as_of``,
    ``auto_approve``) in one worker process, each a retrain subflow (flows/sweep_flow.py): N
    runs with a share of the fleet each spread it over N workers and pay the start-up N times,
    not once per model. No deployment concurrency limit: sweeps run side by side, and each
    model's retrain still claims the model in the ledger (one retrain per model at a time).
    Returns the deployment's full name.
    """
    from flows.sweep_flow import sweep_flow

    check_server()
    ensure_process_pool(work_pool)
    deployment = sweep_flow.to_deployment(
        name=SWEEP_DEPLOYMENT,
        description="Retrain many models in one process, each a retrain subflow run "
        "(flows/sweep_flow.py); parameters: spec_paths, mode, as_of, auto_approve.",
        tags=["retrain", "sweep"],
        **pool_options(work_pool, working_dir),
    )
    assert isinstance(deployment, RunnerDeployment)
    deployment.apply(work_pool_name=work_pool)
    return deployment.full_name


def deploy_models(
    spec_paths: Sequence[str | Path],
    work_pool: str,
    interval_seconds: float | None = None,
    continual: bool = False,
    monitor_interval_seconds: float | None = None,
) -> list[str]:
    """Register every model's deployments on the process work pool ``work_pool`` and return.

    Unlike :func:`serve_models` nothing runs here: the workers started with `prefect worker
    start --pool NAME`, on any machine with retrain installed, pick the runs up, several models
    at once; each deployment keeps its concurrency limit of one. Returns the deployment names.
    """
    deployments = build_deployments(spec_paths, interval_seconds, work_pool)
    if continual:
        for path in spec_paths:
            deployments += continual_deployments(path, monitor_interval_seconds, work_pool)
    check_server()
    ensure_process_pool(work_pool)
    for deployment in deployments:
        deployment.apply(work_pool_name=work_pool)
    return [deployment.full_name for deployment in deployments]
