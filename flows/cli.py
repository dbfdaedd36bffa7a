"""The ``retrain`` command line (typer + rich)."""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from flows.gateway_cli import gateway_command, live_evaluate_command
from flows.settings import resolve_spec
from flows.simulate_cli import simulate_command
from retrain.config import ModelSpec
from retrain.errors import RetrainError
from retrain.families.lineage import NONE, Lineage, Tag
from retrain.ledger import Ledger

app = typer.Typer(
    help="Continual retraining: train, backtest and promote models.", no_args_is_help=True
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


@app.callback()
def _edge_environment() -> None:
    for key, value in EMBEDDED_ENV.items():
        os.environ.setdefault(key, value)
    # MLflow nags about type hints on every PythonModel; our models take DataFrames on purpose.
    warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method.*")


SpecOption = Annotated[Path, typer.Option("--spec", "-s", help="Model spec file (.toml or .yaml).")]
StateOption = Annotated[
    Path | None, typer.Option("--state-dir", help="State directory (overrides the spec).")
]


def demo_spec_path(family: str = "lightgbm") -> Path:
    name = "movielens.toml" if family == "als" else "bike.toml"
    return Path(str(resources.files("retrain.demo").joinpath(name)))


def _overrides(state_dir: Path | None) -> dict[str, Any]:
    return {"state.dir": str(state_dir)} if state_dir is not None else {}


def _load(spec: Path | None, state_dir: Path | None) -> ModelSpec:
    try:
        return resolve_spec(spec or demo_spec_path(), _overrides(state_dir))
    except RetrainError as exc:
        _fail(exc)


def _fail(exc: Exception) -> NoReturn:
    console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(code=2)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


def _run_flow(spec_path: Path, **kwargs: Any) -> dict[str, Any]:
    from flows.retrain_flow import retrain_flow

    return retrain_flow(spec_path=str(spec_path), **kwargs)


def _outcome_table(title: str, rows: list[dict[str, Any]]) -> Table:
    metric = rows[0]["outcome"]["metric"] if rows else ""
    table = Table(title=title)
    for col in (
        "step",
        "as of",
        "version",
        f"candidate {metric}",
        f"champion {metric}",
        f"baseline {metric}",
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
            f"{o['candidate']:.2f}",
            "-" if o["champion"] is None else f"{o['champion']:.2f}",
            f"{o['baseline']:.2f}",
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
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v")]


def _run_mode(
    mode: str,
    spec: Path,
    as_of: str | None,
    auto_approve: bool,
    reason: str,
    actor: str,
    state_dir: Path | None,
    verbose: bool,
) -> None:
    from registry.errors import RegistryError

    _setup_logging(verbose)
    _load(spec, state_dir)  # validate before starting a flow run
    try:
        outcome = _run_flow(
            spec,
            mode=mode,
            reason=reason,
            as_of=as_of,
            auto_approve=auto_approve,
            actor=actor,
            overrides=_overrides(state_dir),
        )
    except (RetrainError, RegistryError) as exc:
        _fail(exc)
    if outcome["status"] == "skipped":
        console.print(f"{mode} retrain skipped: {outcome['decision']}")
        return
    row = {
        "step": f"{mode} ({outcome['strategy']})",
        "as_of": as_of,
        "outcome": outcome,
        "champion_after": outcome["version"] if outcome["promoted"] else None,
    }
    console.print(_outcome_table(f"{mode} retrain", [row]))
    console.print(f"decision: {outcome['decision']}")


@run_app.command("manual")
def run_manual(
    spec: SpecOption,
    as_of: AsOfOption = None,
    auto_approve: AutoApproveOption = False,
    reason: ReasonOption = "operator request",
    actor: ActorOption = "operator",
    state_dir: StateOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Retrain from scratch now; wait for approval in the Prefect UI unless --auto-approve."""
    _run_mode("manual", spec, as_of, auto_approve, reason, actor, state_dir, verbose)


@run_app.command("stateful")
def run_stateful(
    spec: SpecOption,
    as_of: AsOfOption = None,
    auto_approve: AutoApproveOption = False,
    reason: ReasonOption = "operator request",
    actor: ActorOption = "operator",
    state_dir: StateOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Warm-start (or refit) from the champion on the data since its training end."""
    _run_mode("stateful", spec, as_of, auto_approve, reason, actor, state_dir, verbose)


def _registry(model_spec: ModelSpec) -> Any:
    from registry import ModelRegistry

    ledger = Ledger(model_spec.state.ledger)
    return ModelRegistry.for_spec(model_spec.state, model_spec.name, ledger)


@app.command()
def lineage(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="Model version.")],
    spec: Annotated[Path | None, typer.Option("--spec", "-s", help="Model spec file.")] = None,
    state_dir: StateOption = None,
) -> None:
    """The chain of a version back to the first scratch model: windows, data versions, metrics."""
    from registry.errors import RegistryError

    model_spec = _load(spec, state_dir)
    if model != model_spec.name:
        model_spec = model_spec.model_copy(update={"name": model})
    try:
        chain = _registry(model_spec).lineage(version)
    except RegistryError as exc:
        _fail(exc)
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
        metric = next((k for k in info.tags if k.endswith(".candidate")), "")
        table.add_row(
            info.version,
            t.strategy,
            str(t.increments),
            f"{t.get(Tag.WINDOW_START)[:10]} .. {t.get(Tag.WINDOW_END)[:10]}",
            t.get(Tag.ROWS),
            t.get(Tag.DATA_VERSION),
            f"{metric.split('.')[-2] if metric else ''} {t.get(metric)}",
            t.gate,
            t.parent_version or NONE,
        )
    console.print(table)
    data_versions = Lineage(chain[0].tags).get(Tag.DATA_VERSIONS)
    console.print(f"data versions in v{version}'s weights: {data_versions.replace(',', ' -> ')}")


@app.command()
def rebuild(
    version: Annotated[str, typer.Argument(help="Model version to rebuild.")],
    spec: SpecOption,
    state_dir: StateOption = None,
) -> None:
    """Retrain a registered version from the feature cache and check it is byte-identical."""
    from registry.errors import RegistryError
    from retrain.families import family_of

    model_spec = _load(spec, state_dir)
    registry = _registry(model_spec)
    try:
        info = registry.version(version)
        parent_version = Lineage(info.tags).parent_version
        parent = registry.load_model(parent_version) if parent_version is not None else None
        registered = registry.load_model(version)
        rebuilt = family_of(model_spec).rebuild(model_spec, info.tags, registered, parent)
    except (RetrainError, RegistryError) as exc:
        _fail(exc)
    same = rebuilt.model.model_string() == registered.model_string()
    console.print(
        f"v{version}: rebuilt from data version {rebuilt.window.version} "
        f"({rebuilt.rows} rows): " + ("[green]byte-identical[/]" if same else "[red]DIFFERENT[/]")
    )
    if not same:
        raise typer.Exit(code=1)


@app.command()
def status(
    spec: Annotated[Path | None, typer.Option("--spec", "-s", help="Model spec file.")] = None,
    state_dir: StateOption = None,
    limit: Annotated[int, typer.Option(help="How many recent runs to show.")] = 10,
) -> None:
    """Aliases, versions and the last retrain runs of a model (the demo model by default)."""
    from registry import ModelRegistry
    from retrain.freshness import data_age, data_end, format_age
    from retrain.ingest import utc_now

    model_spec = _load(spec, state_dir)
    ledger = Ledger(model_spec.state.ledger)
    if ledger.current_version() == 0:
        console.print(f"no ledger at {ledger.safe_url()} yet: run a retrain first")
        raise typer.Exit(code=1)
    registry = ModelRegistry.for_spec(model_spec.state, model_spec.name, ledger)
    aliases = registry.aliases()
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
    for v in registry.versions():
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
    champion_version = aliases.get("champion")
    if champion_version is not None:
        tags = next((v.tags for v in registry.versions() if v.version == champion_version), {})
        end = data_end(tags)
        now = utc_now()
        console.print(
            f"champion v{champion_version}: data age {format_age(data_age(now, end))} "
            f"(now {now:%Y-%m-%d %H:%M} UTC minus its last training row {end})"
        )
    runs = Table(title=f"{model_spec.name}: last retrain runs (ledger)")
    for col in ("run", "mode", "status", "version", "data version", "actor", "started", "note"):
        runs.add_column(col)
    for r in ledger.runs(model_spec.name, limit=limit):
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


@app.command()
def rollback(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the audit).")] = "operator rollback",
    actor: Annotated[str, typer.Option(help="Who (recorded in the audit).")] = "operator",
    spec: Annotated[Path | None, typer.Option("--spec", "-s", help="Model spec file.")] = None,
    state_dir: StateOption = None,
) -> None:
    """Move `champion` back to `previous` in one audited step."""
    from registry.errors import RegistryError

    model_spec = _load(spec, state_dir)
    if model != model_spec.name:
        model_spec = model_spec.model_copy(update={"name": model})
    ledger = Ledger(model_spec.state.ledger)
    try:
        ledger.migrate()
        was, now = _registry(model_spec).rollback(actor=actor, reason=reason)
    except (RetrainError, RegistryError) as exc:
        _fail(exc)
    from flows.events import rolled_back

    rolled_back(model, was, now, actor, reason)
    console.print(f"{model}: champion v{was} -> v{now} (v{was} is now `previous`); audited")


@ledger_app.command("migrate")
def ledger_migrate(spec: SpecOption, state_dir: StateOption = None) -> None:
    """Create or upgrade the ledger schema."""
    model_spec = _load(spec, state_dir)
    ledger = Ledger(model_spec.state.ledger)
    try:
        applied = ledger.migrate()
    except RetrainError as exc:
        _fail(exc)
    console.print(f"ledger {ledger.safe_url()}: {applied} migration(s) applied")


@app.command()
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
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Serve the scheduled retrain of each model on the Prefect server at PREFECT_API_URL."""
    from flows.deployments import serve_models

    _setup_logging(verbose)
    for path in spec:
        _load(path, None)  # validate every spec before registering anything
    try:
        serve_models(
            spec,
            interval_seconds=interval,
            continual=continual,
            monitor_interval_seconds=monitor_interval,
        )
    except RetrainError as exc:
        _fail(exc)


@app.command()
def monitor(
    spec: SpecOption,
    as_of: AsOfOption = None,
    state_dir: StateOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Run one monitor check now: print the signals and the decision (and emit the event)."""
    from flows.monitor_flow import monitor_flow

    _setup_logging(verbose)
    _load(spec, state_dir)
    try:
        out = monitor_flow(str(spec), as_of=as_of, overrides=_overrides(state_dir))
    except RetrainError as exc:
        _fail(exc)
    if out["status"] == "no-champion":
        _fail(RetrainError(out["reasons"][0]))
    model_spec = _load(spec, state_dir)
    ledger = Ledger(model_spec.state.ledger)
    rows = [r for r in ledger.signal_history(model_spec.name) if r["check_id"] == out["check_id"]]
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
def signals(
    model: Annotated[str, typer.Argument(help="Registered model name.")],
    spec: Annotated[Path | None, typer.Option("--spec", "-s", help="Model spec file.")] = None,
    state_dir: StateOption = None,
    name: Annotated[str | None, typer.Option(help="Only this signal (e.g. drift).")] = None,
) -> None:
    """The history of a model's monitor signals and trigger decisions."""
    model_spec = _load(spec, state_dir)
    ledger = Ledger(model_spec.state.ledger)
    try:
        ledger.migrate()
        rows = ledger.signal_history(model, name)
        checks = ledger.recent_checks(model, limit=1000)
    except RetrainError as exc:
        _fail(exc)
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
def demo(
    state_dir: Annotated[Path, typer.Option(help="Where the demo keeps its state.")] = Path(
        ".retrain"
    ),
    reset: Annotated[bool, typer.Option(help="Delete the demo state first.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    family: Annotated[
        str, typer.Option(help="lightgbm: Bike Sharing demand; als: MovieLens recommendations.")
    ] = "lightgbm",
) -> None:
    """Train, backtest and promote a bundled model step by step (Bike Sharing or MovieLens)."""
    _setup_logging(verbose)
    if family not in DEMO_TITLES:
        _fail(RetrainError(f"--family {family!r} is unknown; use one of {sorted(DEMO_TITLES)}"))
    spec_path = demo_spec_path(family)
    steps = (
        ALS_DEMO_STEPS
        if family == "als"
        else tuple((step, as_of, "manual", extra) for step, as_of, extra in DEMO_STEPS)
    )
    if reset and state_dir.exists():
        if not (state_dir / STATE_MARKER).exists() and any(state_dir.iterdir()):
            _fail(RetrainError(f"{state_dir} is not a retrain state directory; not deleting it"))
        shutil.rmtree(state_dir)
    model_spec = _load(spec_path, state_dir)
    ledger = Ledger(model_spec.state.ledger)
    if ledger.current_version() and ledger.runs(model_spec.name, limit=1):
        _fail(
            RetrainError(
                f"the demo already ran in {state_dir}: see "
                f"`retrain status --state-dir {state_dir} --spec {spec_path}`, "
                "or start over with `retrain demo --reset`"
            )
        )
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / STATE_MARKER).touch()
    rows = []
    from registry import ModelRegistry

    registry = ModelRegistry.for_spec(model_spec.state, model_spec.name, ledger)
    for step, as_of, mode, extra in steps:
        console.rule(f"[bold]step {step}[/]: {mode} retrain as of {as_of}")
        try:
            outcome = _run_flow(
                spec_path,
                mode=mode,
                reason=f"demo step {step}",
                as_of=as_of,
                auto_approve=True,
                actor="demo",
                overrides={**_overrides(state_dir), **extra},
            )
        except RetrainError as exc:
            _fail(exc)
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
    from registry.errors import RegistryError

    model_spec = _load(spec or demo_spec_path("als"), state_dir)
    if model_spec.family != "als":
        _fail(
            RetrainError(
                f"{model_spec.name} is a {model_spec.family} model: `retrain recommend` needs "
                "an ALS spec (family = 'als')"
            )
        )
    if k < 1:
        _fail(RetrainError(f"--k must be a positive number of items, got {k}"))
    registry = _registry(model_spec)
    try:
        chosen = version or registry.alias_version("champion")
        if chosen is None:
            raise RetrainError(
                f"{model_spec.name} has no champion yet: train one with "
                "`retrain demo --family als` or `retrain run manual --spec SPEC`"
            )
        model = registry.load_model(chosen)
    except (RegistryError, RetrainError) as exc:
        _fail(exc)
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


if __name__ == "__main__":
    app()
