"""``retrain simulate``: replay the history under several retraining policies (no Prefect,
no registry: the simulator runs in-process)."""

from __future__ import annotations

import logging
import os
import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from flows.settings import resolve_spec
from retrain.errors import RetrainError
from retrain.oracle_losses import OracleResult, build_loss_matrix, oracle_of
from retrain.oracle_report import write_oracle
from retrain.simulate import ProgressCallback, Simulation, load_replay, parse_policies, simulate
from retrain.simulate_report import write_report

console = Console(width=None if os.isatty(1) else 120)
DEFAULT_POLICIES = "never,monthly,weekly,daily,stateful,continual,baseline"


def parse_sets(values: list[str]) -> dict[str, Any]:
    """``--set key=value`` pairs as spec overrides; values are read as TOML (numbers, lists,
    booleans, quoted strings), anything else is a plain string.

    >>> parse_sets(["lightgbm.num_boost_round=100", "monitor.max_age=30D",
    ...             'monitor.any=["drift"]'])
    {'lightgbm.num_boost_round': 100, 'monitor.max_age': '30D', 'monitor.any': ['drift']}
    """
    out: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise RetrainError(
                f"--set {item!r} is not key=value: write e.g. --set lightgbm.num_boost_round=100"
            )
        try:
            value: Any = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        out[key.strip()] = value
    return out


class OnceFilter(logging.Filter):
    """Lets each distinct warning through once: a replay predicts the same partitions again and
    again, and would repeat e.g. an unseen-category warning for every policy and step."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


def _summary_table(title: str, rows: list[dict[str, Any]], recommended: str) -> Table:
    table = Table(title=title)
    for col in rows[0]:
        table.add_column(col, justify="left" if col == "policy" else "right")
    for row in rows:
        style = "bold green" if row["policy"] == recommended else None
        table.add_row(
            *(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()), style=style
        )
    return table


def _oracle_table(result: OracleResult) -> Table:
    best = result.schedules[-1]
    table = Table(
        title=f"hindsight oracle: never {result.never:.4g}, best {result.best:.4g} "
        f"({len(best.retrains) - 1} retrains, {best.compute:.3g} CPU s)"
    )
    for col in ("policy", "share of oracle gain", "CPU s", "oracle CPU s at equal quality",
                "compute share"):  # fmt: skip
        table.add_column(col, justify="left" if col == "policy" else "right")
    for c in result.captures:
        table.add_row(
            c.policy,
            f"{c.gain_share:.0%}",
            f"{c.compute:.3g}",
            "-" if c.oracle_compute is None else f"{c.oracle_compute:.3g}",
            "-" if c.compute_share is None else f"{c.compute_share:.2f}x",
        )
    return table


def _simulate(
    spec: Path | None,
    policies: str | None,
    state_dir: Path | None,
    sets: list[str] | None,
    start: str | None,
    end: str | None,
    jobs: int,
    progress: ProgressCallback,
    oracle_every: int | None = None,
) -> tuple[Simulation, OracleResult | None]:
    overrides = parse_sets(sets or [])
    if state_dir is not None:
        overrides["state.dir"] = str(state_dir)
    spec_path = spec or Path(str(resources.files("retrain.demo").joinpath("bike.toml")))
    model_spec = resolve_spec(spec_path, overrides)
    chosen = parse_policies(policies or DEFAULT_POLICIES, model_spec)
    data = load_replay(model_spec, start=start, end=end)
    notes = [
        f"spec {spec_path} ({model_spec.family}); overrides: "
        + (", ".join(f"{k}={v}" for k, v in overrides.items()) or "none"),
    ]
    gate = f"gate: {model_spec.gate.bootstrap_samples} bootstrap samples"
    if model_spec.family == "lightgbm":
        notes.append(
            f"boosting rounds: {model_spec.lightgbm.num_boost_round} per scratch model, "
            f"{model_spec.stateful.increment_rounds} per warm increment; {gate}"
        )
    else:
        als = model_spec.als
        notes.append(
            f"ALS {als.factors} factors, {als.iterations} iterations; fold-in with a full "
            f"recompute every {model_spec.stateful.scratch_every} fold-ins; {gate}, the "
            f"popularity baseline of the last {als.popularity_window}; step metric = "
            f"{model_spec.metric}@{als.k} over the users active in the partition, on the items "
            "they had not rated before; overall = weighted by users"
        )
    simulation = simulate(model_spec, chosen, data, progress=progress, notes=notes, jobs=jobs)
    if oracle_every is None:
        return simulation, None
    matrix = build_loss_matrix(model_spec, data, every=oracle_every, progress=progress)
    return simulation, oracle_of(matrix, simulation)


def simulate_command(
    spec: Annotated[
        Path | None,
        typer.Option("--spec", "-s", help="Model spec file (default: the Bike Sharing demo)."),
    ] = None,
    policies: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated: never, monthly, weekly, daily, stateful, continual, baseline, "
            f"every:<duration> (default {DEFAULT_POLICIES}). The spec's family decides what "
            "they train (LightGBM or ALS; baseline = the mean or the popular items)."
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Directory of the report.")] = Path("simulation"),
    tolerance: Annotated[
        float,
        typer.Option(help="Recommend the cheapest policy within this fraction of the best."),
    ] = 0.02,
    state_dir: Annotated[
        Path | None, typer.Option("--state-dir", help="State directory (feature cache).")
    ] = None,
    sets: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="Override a spec key for the simulation, e.g. monitor.max_age=30D."
        ),
    ] = None,
    start: Annotated[
        str | None,
        typer.Option(
            help="Replay the partitions from this date on (the first model trains on the "
            "first windows.train + windows.holdout of them)."
        ),
    ] = None,
    end: Annotated[str | None, typer.Option(help="Replay the data before this date.")] = None,
    jobs: Annotated[int, typer.Option(help="Policies replayed in parallel processes.")] = 1,
    oracle: Annotated[
        bool,
        typer.Option(
            "--oracle",
            help="Also compute the hindsight oracle (the best scratch schedule at every price "
            "of compute) and each policy's share of its gain over never.",
        ),
    ] = False,
    oracle_every: Annotated[
        int,
        typer.Option(help="The oracle may retrain every N-th partition (1: any partition)."),
    ] = 1,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Replay the history under several retraining policies and recommend one."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    once = OnceFilter()
    for handler in logging.getLogger().handlers:
        handler.addFilter(once)
    try:
        if not 0 <= tolerance < 1:
            raise RetrainError(f"--tolerance {tolerance} must be a fraction in [0, 1), e.g. 0.02")
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            tasks: dict[str, Any] = {}

            def report(name: str, done: int, total: int) -> None:
                if name not in tasks:
                    tasks[name] = bar.add_task(name, total=total)
                bar.update(tasks[name], completed=done, total=total)

            simulation, hindsight = _simulate(
                spec, policies, state_dir, sets, start, end, jobs, report,
                oracle_every if oracle else None,
            )  # fmt: skip
        sections = [write_oracle(out, simulation, hindsight).section] if hindsight else []
        result = write_report(simulation, out, tolerance, sections)
    except RetrainError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(code=2) from None
    console.print(
        _summary_table(
            f"{simulation.spec_name}: {simulation.partitions} partitions replayed",
            simulation.table(),
            result.recommendation.policy,
        )
    )
    console.print(
        f"feature cache: {simulation.features_computed} computed, "
        f"{simulation.features_cached} cached"
    )
    if hindsight is not None:
        console.print(_oracle_table(hindsight))
    console.print(f"[bold]recommendation:[/] {result.recommendation.reason}")
    console.print(f"report: {result.html}")
