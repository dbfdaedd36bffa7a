"""``retrain simulate``: replay the history under several retraining policies (no Prefect,
no registry: the simulator runs in-process)."""

from __future__ import annotations

import json
import logging
import os
import time
import tomllib
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from flows.cli_edge import emit_json, handled
from flows.errors import UsageError
from flows.settings import resolve_spec

if TYPE_CHECKING:  # the simulator imports pandas and the trainers: only when it runs
    from retrain.config import ModelSpec
    from retrain.oracle_losses import OracleResult
    from retrain.simulate import ProgressCallback, Simulation

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
            raise UsageError(
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


class LineProgress:
    """Progress without a terminal (a CI log, a pipe): a line per policy every ``every``
    steps, and when it finishes."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.started = time.perf_counter()

    def __call__(self, name: str, done: int, total: int) -> None:
        if done % self.every == 0 or done == total:
            elapsed = time.perf_counter() - self.started
            # a grid point's label is in brackets: not rich markup
            console.print(
                f"{name}: step {done}/{total} ({elapsed:.0f} s)", highlight=False, markup=False
            )


def _summary_table(title: str, rows: list[dict[str, Any]], recommended: str) -> Table:
    table = Table(title=title)
    for col in rows[0]:
        table.add_column(col, justify="left" if col == "policy" else "right")
    for row in rows:
        style = "bold green" if row["policy"] == recommended else None
        table.add_row(
            *(f"{v:.4g}" if isinstance(v, float) else escape(str(v)) for v in row.values()),
            style=style,
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
            escape(c.policy),
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
    checkpoints: Path,
    resume: bool,
    grid: list[str] | None = None,
    oracle_every: int | None = None,
) -> tuple[Simulation, ModelSpec, Path, OracleResult | None]:
    from retrain.oracle_losses import build_loss_matrix, oracle_of
    from retrain.simulate import load_replay, parse_policies
    from retrain.simulate.grid import parse_grid, simulate_grid

    overrides = parse_sets(sets or [])
    axes = parse_grid(grid or [])
    if state_dir is not None:
        overrides["state.dir"] = str(state_dir)
    spec_path = spec or Path(str(resources.files("retrain.demo").joinpath("bike.toml")))
    model_spec = resolve_spec(spec_path, overrides)
    parse_policies(policies or DEFAULT_POLICIES, model_spec)  # bad names fail before any work
    notes = [
        f"spec {spec_path} ({model_spec.family}); overrides: "
        + (", ".join(f"{k}={v}" for k, v in overrides.items()) or "none"),
    ]
    gate = f"gate: {model_spec.gate.bootstrap_samples} bootstrap samples"
    if model_spec.family == "lightgbm":
        notes.append(
            f"boosting rounds: {model_spec.lightgbm.num_boost_round} per scratch model, "
            f"{model_spec.stateful.warm_words()} per warm increment; {gate}"
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
    simulation = simulate_grid(
        spec_at=lambda point: resolve_spec(spec_path, {**overrides, **dict(point)}),
        policies_for=lambda point_spec: parse_policies(policies or DEFAULT_POLICIES, point_spec),
        load=lambda point_spec: load_replay(point_spec, start=start, end=end),
        axes=axes,
        progress=progress,
        notes=notes,
        jobs=jobs,
        checkpoints=checkpoints,
        resume=resume,
    )
    if oracle_every is None:
        return simulation, model_spec, spec_path, None
    # the oracle replans the scratch recipe of the spec as given (the grid's base point)
    data = load_replay(model_spec, start=start, end=end)
    # scored on the simulation's partitions (a grid's may start later than the base spec's)
    scored_from = next(p.start for p in data.partitions if p.key == simulation.first_step)
    matrix = build_loss_matrix(
        model_spec, data, every=oracle_every, progress=progress, scored_from=scored_from
    )
    return simulation, model_spec, spec_path, oracle_of(matrix, simulation)


def write_spec(source: Path, point: dict[str, Any], target: Path, policy: str) -> Path:
    """The spec file ``source`` with the recommended grid point's keys set, as ``target``
    (TOML or YAML by its suffix); the recommended policy heads it as a comment."""
    import tomli_w
    import yaml

    text = source.read_text(encoding="utf-8")
    data = yaml.safe_load(text) if source.suffix in {".yaml", ".yml"} else tomllib.loads(text)
    for dotted, value in point.items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    head = f"# written by `retrain simulate --write-spec`: recommended policy {policy}\n"
    if target.suffix in {".yaml", ".yml"}:
        body = yaml.safe_dump(data, sort_keys=False)
    elif target.suffix == ".toml":
        body = tomli_w.dumps(data)
    else:
        raise UsageError(f"--write-spec {target} must end in .toml, .yaml or .yml")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(head + body, encoding="utf-8")
    return target


def _no_progress(name: str, done: int, total: int) -> None:
    """Progress nobody sees (``--json``: stdout holds the JSON only)."""


def _with_bar(
    *args: Any,
) -> tuple[Simulation, ModelSpec, Path, OracleResult | None]:
    """:func:`_simulate` with a progress bar per policy (on a terminal)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

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

        spec, policies, state_dir, sets, start, end, jobs, checkpoints, resume, grid, every = args
        return _simulate(
            spec, policies, state_dir, sets, start, end, jobs, report, checkpoints, resume, grid,
            every,
        )  # fmt: skip


@handled
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
    resume: Annotated[
        bool,
        typer.Option(
            help="Reuse the policies an earlier run of the same spec and history finished "
            "(kept under OUT/runs) and replay only the others."
        ),
    ] = False,
    grid: Annotated[
        list[str] | None,
        typer.Option(
            "--grid",
            help="Search a spec key too: --grid windows.train=30D,60D,90D (repeat for more "
            "keys; every combination is replayed with every policy).",
        ),
    ] = None,
    write_spec_to: Annotated[
        Path | None,
        typer.Option(
            "--write-spec", help="Write the spec with the recommended grid point's settings here."
        ),
    ] = None,
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
    progress_every: Annotated[
        int,
        typer.Option(help="Without a terminal: one progress line per policy every N steps."),
    ] = 50,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show the library logs and tracebacks.")
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Print the result as JSON on stdout (full precision), nothing else."
        ),
    ] = False,
) -> None:
    """Replay the history under several retraining policies and recommend one."""
    from retrain.oracle_report import recommended_line, write_oracle
    from retrain.simulate.choice import candidates_of, choose_policy
    from retrain.simulate.grid import spec_diff
    from retrain.simulate.report import write_report

    once = OnceFilter()
    for handler in logging.getLogger().handlers:
        handler.addFilter(once)
    if not 0 <= tolerance < 1:
        raise UsageError(f"--tolerance {tolerance} must be a fraction in [0, 1), e.g. 0.02")
    if progress_every < 1:
        raise UsageError(f"--progress-every {progress_every} must be at least 1")
    checkpoints = out / "runs"
    every = oracle_every if oracle else None
    if console.is_terminal and not as_json:
        simulation, base, spec_path, hindsight = _with_bar(
            spec, policies, state_dir, sets, start, end, jobs, checkpoints, resume, grid, every
        )
    else:
        progress: ProgressCallback = _no_progress if as_json else LineProgress(progress_every)
        simulation, base, spec_path, hindsight = _simulate(
            spec, policies, state_dir, sets, start, end, jobs, progress, checkpoints, resume,
            grid, every,
        )  # fmt: skip
    # the report's own choice, named in the oracle's section too
    recommended = choose_policy(
        candidates_of(simulation), tolerance, simulation.greater_is_better
    ).policy
    sections = [write_oracle(out, simulation, hindsight, recommended).section] if hindsight else []
    result = write_report(simulation, out, tolerance, sections)
    chosen = next(r for r in simulation.runs if r.label == result.recommendation.policy)
    diff = spec_diff(base, chosen.point)
    written = (
        write_spec(spec_path, dict(chosen.point), write_spec_to, chosen.policy)
        if write_spec_to is not None
        else None
    )
    if as_json:
        emit_json(
            {
                "model": simulation.spec_name,
                "partitions": simulation.partitions,
                "metric": simulation.metric,
                "policies": simulation.table(),
                "recommendation": json.loads((out / "recommendation.json").read_text()),
                "spec_diff": {k: {"now": now, "new": new} for k, (now, new) in diff.items()},
                "oracle": hindsight.capture_rows() if hindsight is not None else None,
                "oracle_recommended": (
                    recommended_line(hindsight, recommended) if hindsight is not None else None
                ),
                "feature_cache": {
                    "computed": simulation.features_computed,
                    "cached": simulation.features_cached,
                },
                "report": str(result.html),
                "recommended_spec": str(written) if written is not None else None,
            }
        )
        return
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
    console.print(f"[bold]recommendation:[/] {escape(result.recommendation.reason)}")
    if hindsight is not None:
        console.print(f"[bold]oracle:[/] {escape(recommended_line(hindsight, recommended))}")
    if diff:
        console.print(
            "[bold]spec diff:[/] "
            + escape("; ".join(f"{k}: {now!r} -> {new!r}" for k, (now, new) in diff.items())),
            highlight=False,
        )
    if written is not None:
        console.print(f"recommended spec: {written}")
    console.print(f"report: {result.html}")
