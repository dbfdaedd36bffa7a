"""The ``retrain`` command line (typer + rich)."""

from __future__ import annotations

import getpass
import os
import shutil
import warnings
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from flows.cli_edge import (
    ExitCode,
    emit_json,
    fail,
    handled,
    metric,
    on_terminate,
    quiet_environment,
    quiet_flow_runs,
    state,
)
from flows.errors import ApprovalNotAllowed, CannotWait, FlowError
from flows.gateway_cli import gateway_command, live_evaluate_command
from flows.settings import resolve_spec
from flows.simulate_cli import simulate_command
from retrain.errors import RetrainError

if TYPE_CHECKING:  # pandas, MLflow and Prefect load only when a command needs them
    from retrain.config import ModelSpec
    from retrain.ledger import Ledger
    from retrain.statuses import Mode

EXIT_CODES = (
    "Exit codes: 0 ok, 1 error, 2 usage, 3 bad spec, 4 bad data, 5 refused (gate, approver, "
    "registry), 6 skipped, 7 infrastructure down (ledger, MLflow, Prefect, disk), "
    "130 interrupted, 143 terminated. See docs/cli.md."
)
app = typer.Typer(
    help=f"Continual retraining: train, backtest and promote models.\n\n{EXIT_CODES}",
    no_args_is_help=True,
)
run_app = typer.Typer(help="Run one retrain now.", no_args_is_help=True)
ledger_app = typer.Typer(help="The ledger database.", no_args_is_help=True)
app.add_typer(run_app, name="run")
app.add_typer(ledger_app, name="ledger")
console = Console(width=None if os.isatty(1) else 120)

STATE_MARKER = ".retrain-state"
# Defaults for the embedded setup, applied before Prefect or MLflow is imported; an operator's
# own environment always wins.
EMBEDDED_ENV = {
    # the first start of Prefect's temporary server migrates its database: give it time
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # a tracking server that does not answer: 3 retries with backoff (1, 2, 4 s), then fail
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "retrain,registry",
}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"retrain {metadata.version('retrain')}")
        raise typer.Exit()


@app.callback()
def _edge_environment(
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v", help="Show Prefect's and MLflow's logs and full tracebacks."
        ),
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Continual retraining: train, backtest and promote models."""
    state.verbose = verbose
    state.json = False
    for key, value in EMBEDDED_ENV.items():
        os.environ.setdefault(key, value)
    quiet_environment(verbose)
    if state.standalone:  # not in an in-process runner: its signals are not ours
        on_terminate()
    # MLflow nags about type hints on every PythonModel; our models take DataFrames on purpose.
    warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method.*")


SpecOption = Annotated[Path, typer.Option("--spec", "-s", help="Model spec file (.toml or .yaml).")]
StateOption = Annotated[
    Path | None, typer.Option("--state-dir", help="State directory (overrides the spec).")
]
SpecsOption = Annotated[
    list[Path],
    typer.Option(
        "--spec",
        "-s",
        help="Model spec file (.toml or .yaml); repeat it to sweep several models in one "
        "process (each its own retrain, one after the other).",
    ),
]


def demo_spec_path(family: str = "lightgbm") -> Path:
    name = "movielens.toml" if family == "als" else "bike.toml"
    return Path(str(resources.files("retrain.demo").joinpath(name)))


def _overrides(state_dir: Path | None) -> dict[str, Any]:
    return {"state.dir": str(state_dir)} if state_dir is not None else {}


def _load(spec: Path | None, state_dir: Path | None) -> ModelSpec:
    return resolve_spec(spec or demo_spec_path(), _overrides(state_dir))


def _ledger(model_spec: ModelSpec) -> Ledger:
    from retrain.ledger import Ledger

    return Ledger(model_spec.state.ledger)


def _run_flow(spec_path: Path, **kwargs: Any) -> dict[str, Any]:
    from flows.retrain_flow import retrain_flow

    quiet_flow_runs()  # Prefect's logging setup (at its import) replaced the root's handlers
    return retrain_flow(spec_path=str(spec_path), **kwargs)


def _outcome_table(title: str, rows: list[dict[str, Any]]) -> Table:
    name = rows[0]["outcome"]["metric"] if rows else ""
    table = Table(title=title)
    for col in (
        "step",
        "as of",
        "version",
        f"candidate {name}",
        f"champion {name}",
        f"baseline {name}",
        "gate",
        "promoted",
        "champion after",
    ):
        table.add_column(col)
    for row in rows:
        o = row["outcome"]
        table.add_row(
            row["step"],
            row["as_of"] or "latest",
            o["version"],
            metric(o["candidate"]),
            metric(o["champion"]),
            metric(o["baseline"]),
            "passed" if o["gate_passed"] else "[red]failed[/]",
            "[green]yes[/]" if o["promoted"] else "no",
            row["champion_after"] or "-",
        )
    return table


AsOfOption = Annotated[
    str | None, typer.Option(help="Pretend now is this time: rows at or after it are unseen.")
]
AutoApproveOption = Annotated[
    bool, typer.Option(help="Approve automatically if the gate passes (scripted runs).")
]
ReasonOption = Annotated[str, typer.Option(help="Why this retrain (recorded).")]
ActorOption = Annotated[str, typer.Option(help="Who asked for it (recorded).")]
VerboseOption = Annotated[
    bool, typer.Option("--verbose", "-v", help="Show Prefect's and MLflow's logs and tracebacks.")
]
JsonOption = Annotated[
    bool,
    typer.Option("--json", help="Print the result as JSON on stdout (full precision), only that."),
]


def _check_as_of(as_of: str | None) -> None:
    """A bad --as-of is a usage error, before any work."""
    if as_of is None:
        return
    from retrain.errors import DataError
    from retrain.families.spine import parse_as_of

    try:
        parse_as_of(as_of)
    except DataError as exc:
        raise fail(str(exc), ExitCode.USAGE) from None


def _prefect_ui_url() -> str | None:
    """PREFECT_API_URL (environment or Prefect profile): a server with a UI and a run page."""
    from prefect.settings import get_current_settings

    return get_current_settings().api.url or None


def refuse_unanswerable_wait(model_spec: ModelSpec, auto_approve: bool) -> None:
    """Without a Prefect server, nobody can answer an approval (the temporary server has no
    UI and dies with this process): refuse before any work, saying what to do instead."""
    if not model_spec.gate.require_approval or auto_approve or _prefect_ui_url():
        return
    raise CannotWait(
        f"{model_spec.name} needs an operator's approval (gate.require_approval) and no Prefect "
        "server is configured, so nobody could answer: pass --auto-approve, or start one "
        "(`prefect server start`; `export PREFECT_API_URL=http://127.0.0.1:4200/api`) and "
        f"answer in its UI or with `retrain approve {model_spec.name} VERSION`"
    )


@dataclass(frozen=True)
class RunRequest:
    """What `retrain run manual|stateful` was asked for, beside the specs."""

    mode: Mode
    as_of: str | None
    auto_approve: bool
    reason: str
    actor: str
    state_dir: Path | None
    as_json: bool = False
    force: bool = False


def _run_mode(spec: Path, request: RunRequest) -> None:
    mode, as_of, auto_approve = request.mode, request.as_of, request.auto_approve
    _check_as_of(as_of)
    model_spec = _load(spec, request.state_dir)  # validate before starting a flow run
    refuse_unanswerable_wait(model_spec, auto_approve)
    outcome = _run_flow(
        spec,
        mode=mode,
        reason=request.reason,
        as_of=as_of,
        auto_approve=auto_approve,
        actor=request.actor,
        overrides=_overrides(request.state_dir),
        force=request.force,
    )
    code = outcome_code(outcome)
    if request.as_json:
        emit_json(outcome)
        raise typer.Exit(code=int(code))
    if outcome["status"] == "skipped":
        console.print(f"{mode} retrain skipped: {outcome['decision']}")
        raise typer.Exit(code=int(code))
    if "candidate" in outcome:
        row = {
            "step": f"{mode} ({outcome['strategy']})",
            "as_of": as_of,
            "outcome": outcome,
            "champion_after": outcome["version"] if outcome["promoted"] else None,
        }
        console.print(_outcome_table(f"{mode} retrain", [row]))
    console.print(f"decision: {outcome['decision']}")
    raise typer.Exit(code=int(code))


def _run_modes(specs: list[Path], request: RunRequest) -> None:
    """One spec: that model's retrain. Several: a sweep (flows/sweep_flow.py), every model's
    retrain in this process, one after the other."""
    if len(specs) == 1:
        _run_mode(specs[0], request)
        return
    mode, as_of, auto_approve = request.mode, request.as_of, request.auto_approve
    if request.force:
        raise fail("--force retrains one model: give a single --spec with it", ExitCode.USAGE)
    if request.state_dir is not None:
        raise fail(
            "--state-dir names one model's state: each model of a sweep keeps its spec's own "
            "(state.dir in each spec, or RETRAIN_STATE_DIR)",
            ExitCode.USAGE,
        )
    _check_as_of(as_of)
    for path in specs:  # every spec validated before the first retrain starts
        refuse_unanswerable_wait(_load(path, None), auto_approve)
    from flows.sweep_flow import check_sweep, sweep_flow

    check_sweep([str(p) for p in specs], auto_approve)
    quiet_flow_runs()
    outcomes = sweep_flow(
        spec_paths=[str(p) for p in specs],
        mode=mode,
        reason=request.reason,
        as_of=as_of,
        auto_approve=auto_approve,
        actor=request.actor,
    )
    code = sweep_code(outcomes)
    if request.as_json:
        emit_json(outcomes)
        raise typer.Exit(code=int(code))
    table = Table(title=f"{mode} sweep of {len(outcomes)} models")
    for col in ("model", "status", "version", "decision"):
        table.add_column(col)
    for outcome in outcomes:
        table.add_row(
            outcome.get("model", outcome.get("spec_path", "?")),
            outcome["status"],
            outcome.get("version", "-"),
            outcome.get("decision", outcome.get("error", "")),
        )
    console.print(table)
    raise typer.Exit(code=int(code))


def sweep_code(outcomes: list[dict[str, Any]]) -> ExitCode:
    """A sweep's exit code: 1 if a model's retrain failed, else 5 if a candidate was refused,
    else 6 if every model was skipped, else 0."""
    if any(o["status"] == "failed" for o in outcomes):
        return ExitCode.FAILED
    codes = [outcome_code(o) for o in outcomes]
    if ExitCode.REFUSED in codes:
        return ExitCode.REFUSED
    if codes and all(c == ExitCode.SKIPPED for c in codes):
        return ExitCode.SKIPPED
    return ExitCode.OK


def outcome_code(outcome: dict[str, Any]) -> ExitCode:
    """0 promoted (or handed to its live test), 5 not promoted, 6 skipped."""
    if outcome["status"] == "skipped":
        return ExitCode.SKIPPED
    if outcome["status"] == "live" or outcome.get("promoted"):
        return ExitCode.OK
    return ExitCode.REFUSED


@run_app.command("manual")
@handled
def run_manual(
    spec: SpecsOption,
    as_of: AsOfOption = None,
    auto_approve: AutoApproveOption = False,
    reason: ReasonOption = "operator request",
    actor: ActorOption = "operator",
    state_dir: StateOption = None,
    verbose: VerboseOption = False,
    as_json: JsonOption = False,
    force: Annotated[
        bool, typer.Option(help="Retrain even if the data and spec are the champion's.")
    ] = False,
) -> None:
    """Retrain from scratch now; wait for approval in the Prefect UI unless --auto-approve.
    Skipped when the data and spec are the champion's (same model), unless --force.
    Several --spec: a sweep, every model retrained in this one process (docs/scale.md).

    Exits 0 when the candidate is promoted, 5 when it is not (gate or approver), 6 skipped;
    a sweep: 1 if a model failed, else 5 if one was refused, 6 if all were skipped, else 0.
    """
    _run_modes(
        spec, RunRequest("manual", as_of, auto_approve, reason, actor, state_dir, as_json, force)
    )


@run_app.command("stateful")
@handled
def run_stateful(
    spec: SpecsOption,
    as_of: AsOfOption = None,
    auto_approve: AutoApproveOption = False,
    reason: ReasonOption = "operator request",
    actor: ActorOption = "operator",
    state_dir: StateOption = None,
    verbose: VerboseOption = False,
    as_json: JsonOption = False,
) -> None:
    """Warm-start (or refit) from the champion on the data since its training end.
    Several --spec: a sweep, every model retrained in this one process (docs/scale.md).

    Exits 0 when the candidate is promoted, 5 when it is not (gate or approver), 6 skipped;
    a sweep: 1 if a model failed, else 5 if one was refused, 6 if all were skipped, else 0.
    """
    _run_modes(spec, RunRequest("stateful", as_of, auto_approve, reason, actor, state_dir, as_json))


def _registry(model_spec: ModelSpec) -> Any:
    from registry import ModelRegistry

    return ModelRegistry.for_spec(model_spec.state, model_spec.name, _ledger(model_spec))


def _for_model(spec: Path | None, state_dir: Path | None, model: str) -> ModelSpec:
    model_spec = _load(spec, state_dir)
    if model != model_spec.name:
        model_spec = model_spec.model_copy(update={"name": model})
    return model_spec


@app.command()
@handled
def lineage(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="Model version.")],
    spec: Annotated[Path | None, typer.Option("--spec", "-s", help="Model spec file.")] = None,
    state_dir: StateOption = None,
    as_json: JsonOption = False,
) -> None:
    """The chain of a version back to the first scratch model: windows, data versions, metrics."""
    from retrain.families.lineage import NONE, Lineage, Tag, backtest_key

    model_spec = _for_model(spec, state_dir, model)
    chain = _registry(model_spec).lineage(version)
    if as_json:
        emit_json(
            [
                {
                    "version": info.version,
                    "strategy": Lineage(info.tags).strategy,
                    "parent": Lineage(info.tags).parent_version,
                    "tags": dict(info.tags),
                }
                for info in chain
            ]
        )
        return
    table = Table(title=f"lineage of {model} v{version} (newest first)")
    for col in (
        "version",
        "strategy",
        "increments",
        "window",
        "rows",
        "data version",
        "metric",
        "gate",
        "parent",
    ):
        table.add_column(col)
    for info in chain:
        t = Lineage(info.tags)
        metric = t.metric
        table.add_row(
            info.version,
            t.strategy,
            str(t.increments),
            f"{t.get(Tag.WINDOW_START)[:10]} .. {t.get(Tag.WINDOW_END)[:10]}",
            t.get(Tag.ROWS),
            t.get(Tag.DATA_VERSION),
            f"{metric} {t.get(backtest_key(metric, 'candidate'))}" if metric else " ",
            t.gate,
            t.parent_version or NONE,
        )
    console.print(table)
    data_versions = Lineage(chain[0].tags).get(Tag.DATA_VERSIONS)
    console.print(f"data versions in v{version}'s weights: {data_versions.replace(',', ' -> ')}")


@app.command()
@handled
def rebuild(
    version: Annotated[str, typer.Argument(help="Model version to rebuild.")],
    spec: SpecOption,
    state_dir: StateOption = None,
) -> None:
    """Retrain a registered version from the feature cache and check it is byte-identical."""
    from retrain.families import family_of
    from retrain.families.lineage import Lineage

    model_spec = _load(spec, state_dir)
    if model_spec.family != "lightgbm":
        raise fail(
            f"`retrain rebuild` checks LightGBM boosters only; {model_spec.name} has family = "
            f"{model_spec.family!r}. Its lineage is in `retrain lineage`",
            ExitCode.USAGE,
        )
    registry = _registry(model_spec)
    info = registry.version(version)
    parent_version = Lineage(info.tags).parent_version
    parent = registry.load_model(parent_version) if parent_version is not None else None
    registered = registry.load_model(version)
    rebuilt = family_of(model_spec).rebuild(model_spec, info.tags, registered, parent)
    same = rebuilt.model.model_string() == registered.model_string()
    console.print(
        f"v{version}: rebuilt from data version {rebuilt.window.version} "
        f"({rebuilt.rows} rows): " + ("[green]byte-identical[/]" if same else "[red]DIFFERENT[/]")
    )
    if not same:
        raise typer.Exit(code=int(ExitCode.FAILED))


def _seconds(age: Any) -> float | None:
    return None if age is None else float(age.total_seconds())


def _metrics_of(tags: dict[str, str]) -> dict[str, float]:
    """The backtest metrics among a version's tags (``retrain.backtest.mae.candidate`` ...), as
    floats (tags hold 6 significant digits; the ledger run's ``backtest`` holds them all)."""
    from retrain.families.lineage import Lineage

    return Lineage(tags).backtests()


@app.command()
@handled
def status(
    spec: Annotated[Path | None, typer.Option("--spec", "-s", help="Model spec file.")] = None,
    state_dir: StateOption = None,
    limit: Annotated[int, typer.Option(help="How many recent runs to show.")] = 10,
    check: Annotated[
        bool, typer.Option(help="Exit 1 if an alias was moved outside retrain.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Aliases, versions and the last retrain runs of a model (the demo model by default).
    An alias moved outside retrain (not where retrain's audit says) is shown in red."""
    from registry import ModelRegistry
    from registry.errors import RegistryError
    from retrain.families.lineage import Lineage, Tag
    from retrain.freshness import data_age, data_end, format_age
    from retrain.ingest import utc_now

    model_spec = _load(spec, state_dir)
    ledger = _ledger(model_spec)
    if ledger.current_version() == 0:
        raise fail(f"no ledger at {ledger.safe_url()} yet: run a retrain first")
    registry = ModelRegistry.for_spec(model_spec.state, model_spec.name, ledger)
    drift: tuple[Any, ...] = ()
    notes: list[str] = []
    try:
        notes += [
            f"recovered an interrupted alias change: {n}" for n in registry.recover_alias_changes()
        ]
        drift = registry.alias_drift()
    except (RetrainError, RegistryError) as exc:
        notes.append(f"interrupted alias changes not recovered: {exc}")
    if not as_json:
        for note in notes:
            console.print(f"[yellow]{note}[/]")
    aliases = registry.aliases()
    all_versions = registry.versions()
    champion_version = aliases.get("champion")
    now = utc_now()
    champion_tags = next((v.tags for v in all_versions if v.version == champion_version), {})
    champion_end = data_end(champion_tags) if champion_version is not None else None
    recent = ledger.runs(model_spec.name, limit=limit)
    if as_json:
        emit_json(
            {
                "model": model_spec.name,
                "aliases": aliases,
                "versions": [
                    {
                        "version": v.version,
                        "aliases": sorted(a for a, ver in aliases.items() if ver == v.version),
                        "mode": Lineage(v.tags).mode,
                        "data_version": v.tags.get(str(Tag.DATA_VERSION)),
                        "window_start": v.tags.get(str(Tag.WINDOW_START)),
                        "window_end": v.tags.get(str(Tag.WINDOW_END)),
                        "data_end": data_end(v.tags),
                        "rows": v.tags.get(str(Tag.ROWS)),
                        "gate": Lineage(v.tags).gate,
                        "approval": v.tags.get(str(Tag.APPROVAL), "pending"),
                        "parent": v.tags.get(str(Tag.PARENT_VERSION)),
                        "metrics": _metrics_of(v.tags),
                    }
                    for v in all_versions
                ],
                "champion": None
                if champion_version is None
                else {
                    "version": champion_version,
                    "data_end": champion_end,
                    "data_age_seconds": _seconds(data_age(now, champion_end)),
                },
                "runs": [
                    {
                        "run": r.id,
                        "mode": r.mode,
                        "status": r.status,
                        "version": r.model_version,
                        "data_version": r.data_version,
                        "actor": r.actor,
                        "started_at": r.started_at,
                        "finished_at": r.finished_at,
                        "reason": r.reason,
                        "error": r.error,
                        # the backtest as computed (full precision): what the gate decided on
                        "backtest": {
                            k: v
                            for k, v in r.metrics.items()
                            if isinstance(v, int | float) and not isinstance(v, bool)
                        },
                    }
                    for r in recent
                ],
                "notes": notes,
                "alias_drift": [d.describe(model_spec.name) for d in drift],
            }
        )
        if check and drift:
            raise typer.Exit(code=1)
        return
    versions = Table(title=f"{model_spec.name}: model versions")
    for col in (
        "version",
        "aliases",
        "mode",
        "data version",
        "window",
        "data end",
        "rows",
        "gate",
        "approval",
        "parent",
    ):
        versions.add_column(col)
    for v in all_versions:
        t = Lineage(v.tags)
        versions.add_row(
            v.version,
            ", ".join(sorted(a for a, ver in aliases.items() if ver == v.version)),
            t.mode,
            t.get(Tag.DATA_VERSION),
            f"{t.get(Tag.WINDOW_START)[:10]} .. {t.get(Tag.WINDOW_END)[:10]}",
            str(data_end(v.tags) or "")[:16],
            t.get(Tag.ROWS),
            t.gate,
            t.get(Tag.APPROVAL, "pending"),
            t.get(Tag.PARENT_VERSION),
        )
    console.print(versions)
    if champion_version is not None:
        console.print(
            f"champion v{champion_version}: data age {format_age(data_age(now, champion_end))} "
            f"(now {now:%Y-%m-%d %H:%M} UTC minus its last training row {champion_end})"
        )
    runs = Table(title=f"{model_spec.name}: last retrain runs (ledger)")
    for col in ("run", "mode", "status", "version", "data version", "actor", "started", "note"):
        runs.add_column(col)
    for r in recent:
        runs.add_row(
            str(r.id),
            r.mode,
            r.status,
            r.model_version or "-",
            r.data_version or "-",
            r.actor or "-",
            f"{r.started_at:%Y-%m-%d %H:%M:%S}",
            (r.error or r.reason or "")[:70],
        )
    console.print(runs)
    for d in drift:
        console.print(
            f"[bold red]{d.describe(model_spec.name)}[/]: move it back with `retrain rollback "
            f"{model_spec.name} --to VERSION`, or let the monitor do it "
            "(monitor.revert_tampered_alias = true)"
        )
    if check and drift:
        raise typer.Exit(code=1)


@app.command()
@handled
def rollback(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the audit).")] = "operator rollback",
    actor: Annotated[str, typer.Option(help="Who (recorded in the audit).")] = "operator",
    spec: Annotated[Path | None, typer.Option("--spec", "-s", help="Model spec file.")] = None,
    state_dir: StateOption = None,
    to: Annotated[
        str | None, typer.Option("--to", help="Roll back to this (approved) version.")
    ] = None,
) -> None:
    """Move `champion` back to `previous` (or --to VERSION) in one audited step."""
    model_spec = _for_model(spec, state_dir, model)
    _ledger(model_spec).migrate()
    registry = _registry(model_spec)
    for note in registry.recover_alias_changes():
        console.print(f"[yellow]recovered:[/] {note}")
    was, now = registry.rollback(actor=actor, reason=reason, to=to)
    previous = registry.alias_version("previous")
    from flows.events import rolled_back

    rolled_back(model, was, now, actor, reason)
    kept = f"v{was} is now `previous`" if previous == was else f"`previous` stays v{previous}"
    console.print(f"{model}: champion v{was} -> v{now} ({kept}); audited")


ApproverOption = Annotated[
    str | None,
    typer.Option(help="Who answers (recorded; checked against gate.approvers). Default: $USER."),
]
CommentOption = Annotated[str, typer.Option(help="Why (recorded with the decision).")]
ModelArgument = Annotated[str, typer.Argument(help="Registered model name.")]
WaitingVersionArgument = Annotated[str, typer.Argument(help="The version that waits for approval.")]
OptionalSpecOption = Annotated[Path | None, typer.Option("--spec", "-s", help="Model spec file.")]


def answer_waiting_run(
    model_spec: ModelSpec, version: str, decision: str, approver: str, comment: str
) -> str:
    """Answer the paused or suspended run that waits for ``version``'s approval, as the form in
    the Prefect UI would; returns its flow run id."""
    from uuid import UUID

    from prefect import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.flow_runs import resume_flow_run

    from flows.deployments import check_server

    if not model_spec.gate.approver_allowed(approver):
        raise ApprovalNotAllowed(
            f"{approver!r} may not answer for {model_spec.name}: gate.approvers allows only "
            f"{', '.join(model_spec.gate.approvers)}; ask one of them, or add the name to "
            "[gate] approvers in the spec"
        )
    ledger = _ledger(model_spec)
    waiting = ledger.waiting_flow_run(model_spec.name, version)
    if waiting is None:
        raise FlowError(
            f"no retrain of {model_spec.name} waits for approval of version {version}: see "
            f"`retrain status` for the runs and their versions"
        )
    run_id, flow_run_id = waiting
    check_server()
    with get_client(sync_client=True) as client:
        try:
            flow_run = client.read_flow_run(UUID(flow_run_id))
        except ObjectNotFound:
            raise FlowError(
                f"flow run {flow_run_id} of ledger run {run_id} is not on the Prefect server at "
                f"{_prefect_ui_url()}: point PREFECT_API_URL at the server the run used"
            ) from None
    if flow_run.state is None or not flow_run.state.is_paused():
        shown = flow_run.state.name if flow_run.state else "unknown"
        raise FlowError(
            f"flow run {flow_run_id} of {model_spec.name} v{version} is {shown}, not waiting "
            "for an answer: see `retrain status`"
        )
    resume_flow_run(
        UUID(flow_run_id),
        run_input={"decision": decision, "approver": approver, "comment": comment},
    )
    return flow_run_id


def _answer(
    decision: str,
    model: str,
    version: str,
    approver: str | None,
    comment: str,
    spec: Path | None,
    state_dir: Path | None,
) -> None:
    model_spec = _for_model(spec, state_dir, model)
    who = (approver or getpass.getuser()).strip()
    flow_run_id = answer_waiting_run(model_spec, version, decision, who, comment)
    verb = "approved" if decision == "approve" else "rejected"
    console.print(
        f"{model} v{version}: {verb} by {who}; the waiting run (flow run {flow_run_id}) "
        "goes on with the decision"
    )


@app.command()
@handled
def approve(
    model: ModelArgument,
    version: WaitingVersionArgument,
    approver: ApproverOption = None,
    comment: CommentOption = "",
    spec: OptionalSpecOption = None,
    state_dir: StateOption = None,
) -> None:
    """Approve the candidate a paused or suspended retrain waits on (as the Prefect UI form)."""
    _answer("approve", model, version, approver, comment, spec, state_dir)


@app.command()
@handled
def reject(
    model: ModelArgument,
    version: WaitingVersionArgument,
    approver: ApproverOption = None,
    comment: CommentOption = "",
    spec: OptionalSpecOption = None,
    state_dir: StateOption = None,
) -> None:
    """Reject the candidate a paused or suspended retrain waits on (as the Prefect UI form)."""
    _answer("reject", model, version, approver, comment, spec, state_dir)


@ledger_app.command("migrate")
@handled
def ledger_migrate(spec: SpecOption, state_dir: StateOption = None) -> None:
    """Create or upgrade the ledger schema."""
    model_spec = _load(spec, state_dir)
    ledger = _ledger(model_spec)
    applied = ledger.migrate()
    console.print(f"ledger {ledger.safe_url()}: {applied} migration(s) applied")


@app.command()
@handled
def serve(
    spec: Annotated[
        list[Path],
        typer.Option("--spec", "-s", help="Model spec file; repeat it to serve several models."),
    ],
    interval: Annotated[
        float | None,
        typer.Option(help="Fire every SECONDS instead of the spec's cron (tests, demos)."),
    ] = None,
    continual: Annotated[
        bool, typer.Option(help="Also serve the monitor and the event-triggered retrain.")
    ] = False,
    monitor_interval: Annotated[
        float | None, typer.Option(help="Monitor every SECONDS instead of monitor.interval.")
    ] = None,
    work_pool: Annotated[
        str | None,
        typer.Option(
            help="Register the deployments on this process work pool (created if missing) and "
            "return: `prefect worker start --pool NAME` processes run them."
        ),
    ] = None,
    verbose: VerboseOption = False,
) -> None:
    """Serve the scheduled retrain of each model on the Prefect server at PREFECT_API_URL."""
    from flows.deployments import deploy_models, serve_models

    for path in spec:
        _load(path, None)  # validate every spec before registering anything
    if work_pool:
        names = deploy_models(
            spec,
            work_pool,
            interval_seconds=interval,
            continual=continual,
            monitor_interval_seconds=monitor_interval,
        )
        for name in names:
            console.print(f"deployed {name} on work pool {work_pool}")
        return
    quiet_flow_runs()
    serve_models(
        spec,
        interval_seconds=interval,
        continual=continual,
        monitor_interval_seconds=monitor_interval,
    )


@app.command()
@handled
def monitor(
    spec: SpecOption,
    as_of: AsOfOption = None,
    state_dir: StateOption = None,
    verbose: VerboseOption = False,
    as_json: JsonOption = False,
) -> None:
    """Run one monitor check now: print the signals and the decision (and emit the event)."""
    from flows.monitor_flow import monitor_flow

    _check_as_of(as_of)
    model_spec = _load(spec, state_dir)
    quiet_flow_runs()
    out = monitor_flow(str(spec), as_of=as_of, overrides=_overrides(state_dir))
    if out["status"] == "no-champion":
        raise RetrainError(out["reasons"][0])
    ledger = _ledger(model_spec)
    rows = [r for r in ledger.signal_history(model_spec.name) if r["check_id"] == out["check_id"]]
    if as_json:
        emit_json({**out, "signals": rows})
        return
    console.print(_signal_table(f"signals of check {out['check_id']}", rows))
    verdict = "[bold red]retrain requested[/]" if out["retrain"] else "no retrain"
    console.print(f"decision: {verdict}: " + "; ".join(out["reasons"]))


def _signal_table(title: str, rows: list[dict[str, Any]]) -> Table:
    table = Table(title=title)
    for col in ("as of", "signal", "feature", "value", "threshold", "p", "fired", "detail"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            f"{r['as_of']:%Y-%m-%d %H:%M}",
            r["name"],
            r["feature"] or "",
            f"{r['value']:.4g}" if r["value"] is not None else "",
            f"{r['threshold']:.4g}" if r["threshold"] is not None else "",
            f"{r['p_value']:.2g}" if r["p_value"] is not None else "",
            "[red]yes[/]" if r["fired"] else "no",
            (r["detail"] or "")[:60],
        )
    return table


@app.command()
@handled
def signals(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    spec: Annotated[Path | None, typer.Option("--spec", "-s", help="Model spec file.")] = None,
    state_dir: StateOption = None,
    name: Annotated[str | None, typer.Option(help="Only this signal (e.g. drift).")] = None,
    as_json: JsonOption = False,
) -> None:
    """The history of a model's monitor signals and trigger decisions."""
    model_spec = _load(spec, state_dir)
    ledger = _ledger(model_spec)
    ledger.migrate()
    rows = ledger.signal_history(model, name)
    checks = ledger.recent_checks(model, limit=1000)
    if as_json:
        emit_json({"model": model, "signals": rows, "decisions": checks})
        return
    console.print(_signal_table(f"{model}: signal history", rows))
    decisions = Table(title=f"{model}: trigger decisions")
    for col in ("check", "as of", "champion", "retrain", "fired", "reasons"):
        decisions.add_column(col)
    for c in checks:
        decisions.add_row(
            str(c["id"]),
            f"{c['as_of']:%Y-%m-%d %H:%M}",
            c["champion_version"] or "",
            "[red]yes[/]" if c["retrain"] else "no",
            c["fired"] or "",
            (c["reasons"] or "").replace("\n", "; ")[:80],
        )
    console.print(decisions)


DEMO_STEPS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("1 first model", "2011-05-01", {}),
    ("2 fresh data", "2011-09-01", {}),
    ("3 careless (3 trees)", "2011-10-01", {"lightgbm.num_boost_round": 3}),
)
# the ALS demo on MovieLens latest-small: step, as of, mode, spec overrides
ALS_DEMO_STEPS: tuple[tuple[str, str, str, dict[str, Any]], ...] = (
    ("1 first model", "2009-01-01", "manual", {}),
    ("2 fold-in", "2009-07-01", "stateful", {}),
    ("3 fold-in", "2010-01-01", "stateful", {}),
)
DEMO_TITLES = {
    "lightgbm": "retrain demo: Bike Sharing hourly, LightGBM, MAE",
    "als": "retrain demo: MovieLens latest-small, implicit ALS, NDCG@10",
}


@app.command()
@handled
def demo(
    state_dir: Annotated[Path, typer.Option(help="Where the demo keeps its state.")] = Path(
        ".retrain"
    ),
    reset: Annotated[bool, typer.Option(help="Delete the demo state first.")] = False,
    verbose: VerboseOption = False,
    family: Annotated[
        str, typer.Option(help="lightgbm: Bike Sharing demand; als: MovieLens recommendations.")
    ] = "lightgbm",
) -> None:
    """Train, backtest and promote a bundled model step by step (Bike Sharing or MovieLens)."""
    if family not in DEMO_TITLES:
        raise fail(
            f"--family {family!r} is unknown; use one of {sorted(DEMO_TITLES)}", ExitCode.USAGE
        )
    spec_path = demo_spec_path(family)
    steps = (
        ALS_DEMO_STEPS
        if family == "als"
        else tuple((step, as_of, "manual", extra) for step, as_of, extra in DEMO_STEPS)
    )
    if reset and state_dir.exists():
        if not (state_dir / STATE_MARKER).exists() and any(state_dir.iterdir()):
            raise RetrainError(f"{state_dir} is not a retrain state directory; not deleting it")
        shutil.rmtree(state_dir)
    model_spec = _load(spec_path, state_dir)
    ledger = _ledger(model_spec)
    if ledger.current_version() and ledger.runs(model_spec.name, limit=1):
        raise RetrainError(
            f"the demo already ran in {state_dir}: see "
            f"`retrain status --state-dir {state_dir} --spec {spec_path}`, "
            "or start over with `retrain demo --reset`"
        )
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / STATE_MARKER).touch()
    rows = []
    from registry import ModelRegistry

    registry = ModelRegistry.for_spec(model_spec.state, model_spec.name, ledger)
    for step, as_of, mode, extra in steps:
        console.rule(f"[bold]step {step}[/]: {mode} retrain as of {as_of}")
        outcome = _run_flow(
            spec_path,
            mode=mode,
            reason=f"demo step {step}",
            as_of=as_of,
            auto_approve=True,
            actor="demo",
            overrides={**_overrides(state_dir), **extra},
        )
        rows.append(
            {
                "step": step,
                "as_of": as_of,
                "outcome": outcome,
                "champion_after": registry.alias_version("champion"),
            }
        )
        console.print(f"  decision: {outcome['decision']}")
    console.print(_outcome_table(DEMO_TITLES[family], rows))
    aliases = registry.aliases()
    console.print("aliases now: " + ", ".join(f"{a} -> v{v}" for a, v in sorted(aliases.items())))
    hints = [f"`retrain status --state-dir {state_dir}`"]
    if family == "als":
        hints = [
            f"`retrain status --state-dir {state_dir} --spec {spec_path}`",
            f"`retrain recommend --user 1 --state-dir {state_dir}`",
        ]
    console.print(
        f"state in {state_dir.resolve()}; {'; '.join(hints)}; "
        f"MLflow UI: `mlflow ui --backend-store-uri {model_spec.state.tracking}`"
    )


@app.command()
@handled
def recommend(
    user: Annotated[
        list[str], typer.Option("--user", "-u", help="External user id (repeat for several).")
    ],
    k: Annotated[int, typer.Option("--k", "-k", help="Items per user.")] = 10,
    spec: Annotated[
        Path | None,
        typer.Option("--spec", "-s", help="ALS model spec (default: the MovieLens demo)."),
    ] = None,
    version: Annotated[
        str | None, typer.Option(help="Model version (default: the champion).")
    ] = None,
    state_dir: StateOption = None,
) -> None:
    """Top-k items for users from the champion ALS model (unknown users: popularity fallback)."""
    model_spec = _load(spec or demo_spec_path("als"), state_dir)
    if model_spec.family != "als":
        raise fail(
            f"{model_spec.name} is a {model_spec.family} model: `retrain recommend` needs "
            "an ALS spec (family = 'als')",
            ExitCode.USAGE,
        )
    if k < 1:
        raise fail(f"--k must be a positive number of items, got {k}", ExitCode.USAGE)
    registry = _registry(model_spec)
    chosen = version or registry.alias_version("champion")
    if chosen is None:
        raise RetrainError(
            f"{model_spec.name} has no champion yet: train one with "
            "`retrain demo --family als` or `retrain run manual --spec SPEC`"
        )
    model = registry.load_model(chosen)
    recs = model.recommend(user, k=k)
    table = Table(title=f"top {k} items of {model_spec.name} v{chosen}")
    for col in ("user", "rank", "item", "score", "source"):
        table.add_column(col)
    for row in recs.itertuples(index=False):
        table.add_row(str(row.user), str(row.rank), str(row.item), f"{row.score:.4f}", row.source)
    console.print(table)
    fallback = sorted({str(u) for u in recs.loc[recs["source"] == "popularity", "user"]})
    if fallback:
        console.print(
            f"popularity fallback for user(s) {', '.join(fallback)}: unknown to v{chosen} (or "
            f"no positive left), they get the most popular items of the last "
            f"{model.popularity_window} of its training data, not personal recommendations"
        )


# `retrain simulate` lives in its own module (issue #7); registered here.
app.command("simulate")(simulate_command)
app.command("gateway")(gateway_command)
app.command("live-evaluate")(live_evaluate_command)


def main() -> None:
    """The ``retrain`` console script: the app, in a process of its own (an interrupted run
    stops its children and exits at once)."""
    state.standalone = True
    app()


if __name__ == "__main__":
    main()
