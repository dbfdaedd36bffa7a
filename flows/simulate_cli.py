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
from retrain.simulate import load_replay, parse_policies, simulate
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


def simulate_command(
    spec: Annotated[
        Path | None,
        typer.Option("--spec", "-s", help="Model spec file (default: the Bike Sharing demo)."),
    ] = None,
    policies: Annotated[
        str,
        typer.Option(
            help="Comma-separated: never, monthly, weekly, daily, stateful, continual, baseline, "
            "every:<duration>."
        ),
    ] = DEFAULT_POLICIES,
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
    start: Annotated[str | None, typer.Option(help="Replay from this date on.")] = None,
    end: Annotated[str | None, typer.Option(help="Replay the data before this date.")] = None,
    jobs: Annotated[int, typer.Option(help="Policies replayed in parallel processes.")] = 1,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Replay the history under several retraining policies and recommend one."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        overrides = parse_sets(sets or [])
        if state_dir is not None:
            overrides["state.dir"] = str(state_dir)
        spec_path = spec or Path(str(resources.files("retrain.demo").joinpath("bike.toml")))
        model_spec = resolve_spec(spec_path, overrides)
        chosen = parse_policies(policies, model_spec)
        if not 0 <= tolerance < 1:
            raise RetrainError(f"--tolerance {tolerance} must be a fraction in [0, 1), e.g. 0.02")
        with console.status("reading the history and the feature cache"):
            data = load_replay(model_spec, start=start, end=end)
        notes = [
            f"spec {spec_path}; overrides: "
            + (", ".join(f"{k}={v}" for k, v in overrides.items()) or "none"),
            f"boosting rounds: {model_spec.lightgbm.num_boost_round} per scratch model, "
            f"{model_spec.stateful.increment_rounds} per warm increment; gate: "
            f"{model_spec.gate.bootstrap_samples} bootstrap samples",
        ]
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            tasks = {p.name: bar.add_task(p.name, total=None) for p in chosen}

            def report(name: str, done: int, total: int) -> None:
                bar.update(tasks[name], completed=done, total=total)

            simulation = simulate(model_spec, chosen, data, progress=report, notes=notes, jobs=jobs)
        result = write_report(simulation, out, tolerance)
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
    console.print(f"[bold]recommendation:[/] {result.recommendation.reason}")
    console.print(f"report: {result.html}")
