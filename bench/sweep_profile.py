"""Benchmark: where a later model's stateful increment spends its time in a one-process sweep.

N copies of the demo Bike Sharing spec (bench/fleet.py's specs: each its own name, seed and
state directory) against a warm Prefect server started here: one sweep (flows/sweep_flow.py)
makes every model a champion from scratch, a second sweep of stateful increments warms the
process up (the first model pays the process's first use: lazy imports, MLflow's stores), and
a third sweep of stateful increments, a day later, is measured: its wall time per model, the
time in the ``prepare_data`` (ingest and features) and ``train_candidate`` tasks as the server
recorded them, and the rest, the per-model overhead. The measured sweep runs under cProfile:
its time by package (own time of the functions of each) and the flow's steps.

    python bench/sweep_profile.py --models 8
    python bench/sweep_profile.py --models 8 --no-profile   # wall time without cProfile's cost
    python bench/sweep_profile.py --models 8 --timer cpu    # the profile in CPU seconds
    python bench/sweep_profile.py --models 8 --database-url postgresql+asyncpg://...

With ``--timer cpu`` the profile counts this process's CPU time (all its threads), not wall
time: on a shared machine the other processes' load does not show in it. Besides the profile,
the report counts, per model of the measured sweep, what a model costs the machine whatever
its load: the Prefect API requests, events and task runs, the MLflow store calls, the SQL
statements and commits (MLflow's and the ledger's), and the CPU time of the Prefect server's
processes (started here: its share of a fleet's two cores).

Results go to bench/results/sweep_profile.md (``--out``). Wall time on whatever machine runs
it: the load average is printed with it.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from bench.fleet import prefect_server, run_figures, write_specs  # noqa: E402
from retrain.statuses import Mode  # noqa: E402

RESULTS = Path(__file__).with_name("results")
FIRST, WARM, MEASURED = "2011-04-15", "2011-04-17", "2011-04-19"
IDLE = 10.0  # seconds of the idle server's CPU measured before the measured sweep


def package_of(filename: str) -> str:
    """The package a profiled function belongs to: site-packages' top folder, or retrain's
    own packages (retrain, registry, flows), or the standard library / builtins."""
    path = Path(filename)
    parts = path.parts
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1].split(".")[0].removesuffix(".py")
    if path.is_absolute() and path.is_relative_to(ROOT):
        return path.relative_to(ROOT).parts[0]
    if filename.startswith("<") or filename == "~":
        return "builtins"
    return "stdlib"


def by_package(profile: cProfile.Profile) -> list[tuple[str, float]]:
    totals: dict[str, float] = defaultdict(float)
    for (filename, _, _), (_, _, tottime, _, _) in pstats.Stats(profile).stats.items():  # type: ignore[attr-defined]
        totals[package_of(filename)] += tottime
    return sorted(totals.items(), key=lambda kv: -kv[1])[:14]


def own_steps(profile: cProfile.Profile) -> list[tuple[str, int, float]]:
    """Cumulative time of retrain's own functions (flows, registry, retrain): nested."""
    rows = []
    for (filename, _, name), (_, calls, _, cumtime, _) in pstats.Stats(profile).stats.items():  # type: ignore[attr-defined]
        path = Path(filename)
        if not path.is_absolute() or not path.is_relative_to(ROOT) or name.startswith("<"):
            continue
        module = path.relative_to(ROOT).as_posix()
        if module.startswith(("flows/", "registry/", "retrain/")) and cumtime >= 0.05:
            rows.append((f"`{module}` {name}", calls, cumtime))
    return sorted(rows, key=lambda r: -r[2])[:40]


# what a model costs, counted in the profile (function name patterns: file, then function)
COUNTED = {
    "Prefect API requests": ("httpx/_client.py", "send"),
    "Prefect events emitted": ("prefect/events/utilities.py", "emit_event"),
    "Prefect task runs": ("prefect/task_engine.py", "run_task_sync"),
    "Prefect flow runs created": ("prefect/flow_engine.py", "create_flow_run"),
    "SQL statements (MLflow, ledger)": ("sqlalchemy/engine/base.py", "execute"),
    "SQL commits (MLflow, ledger)": ("sqlalchemy/engine/base.py", "_commit_impl"),
}
MLFLOW_STORES = ("mlflow/store/tracking/sqlalchemy_store.py", "mlflow/store/model_registry/")


def counts(profile: cProfile.Profile) -> list[tuple[str, int, float]]:
    """The counted calls, then MLflow's store methods (public ones, by calls), with the
    cumulative time of each."""
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    rows = []
    for label, (where, name) in COUNTED.items():
        calls = [(v[1], v[3]) for k, v in stats.items() if k[0].endswith(where) and k[2] == name]
        rows.append((label, sum(c for c, _ in calls), sum(t for _, t in calls)))
    store = [
        (f"MLflow store `{k[2]}`", v[1], v[3])
        for k, v in stats.items()
        if any(s in k[0] for s in MLFLOW_STORES)
        and not k[2].startswith(("_", "<"))
        and k[2] not in ("to_mlflow_entity", "sanitize_metric_value")
    ]
    return rows + sorted(store, key=lambda r: (-r[1], -r[2]))


def children_cpu() -> float:
    """CPU seconds (user + system) of this process's child processes: the Prefect server."""
    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            cpu = child.cpu_times()
        except psutil.Error:
            continue
        total += cpu.user + cpu.system
    return total


def sweep(specs: list[Path], mode: Mode, as_of: str) -> tuple[list[dict], float, float]:
    """One sweep's outcomes, wall time and this process's CPU time (all its threads)."""
    from flows.sweep_flow import sweep_flow

    started, cpu = time.perf_counter(), time.process_time()
    outcomes = sweep_flow(
        spec_paths=[str(p) for p in specs], mode=mode, as_of=as_of, auto_approve=True
    )
    return outcomes, time.perf_counter() - started, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--no-profile", action="store_true", help="measure without cProfile")
    parser.add_argument(
        "--timer",
        choices=("wall", "cpu"),
        default="wall",
        help="what the profile counts: wall time, or this process's CPU time",
    )
    parser.add_argument("--database-url", default=None, help="Prefect server database URL")
    parser.add_argument("--out", type=Path, default=RESULTS / "sweep_profile.md")
    args = parser.parse_args()
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with tempfile.TemporaryDirectory(prefix="sweep-profile-") as tmp:
        root = Path(tmp)
        specs = write_specs(root, args.models)
        with (
            prefect_server(root, args.database_url) as url,
            temporary_settings({PREFECT_API_URL: url}),
        ):
            started = time.perf_counter()
            import flows.sweep_flow  # noqa: F401

            imports = time.perf_counter() - started
            _, first, _ = sweep(specs, "manual", FIRST)
            print(f"scratch sweep: {first:.1f} s", flush=True)
            _, warm, _ = sweep(specs, "stateful", WARM)
            print(f"warm-up sweep: {warm:.1f} s", flush=True)
            profile = (
                cProfile.Profile(time.process_time) if args.timer == "cpu" else cProfile.Profile()
            )
            # the server's own loops (scheduler, late runs, ...) use CPU while idle: measured
            # over IDLE seconds first and taken off its CPU during the sweep
            time.sleep(2)
            idle = children_cpu()
            time.sleep(IDLE)
            server = children_cpu()
            idle_rate = (server - idle) / IDLE
            started = time.perf_counter()
            if not args.no_profile:
                profile.enable()
            outcomes, wall, cpu = sweep(specs, "stateful", MEASURED)
            if not args.no_profile:
                profile.disable()
            time.sleep(2)  # the server handles what the sweep sent last (events, logs)
            server = children_cpu() - server - idle_rate * (time.perf_counter() - started)
            print(f"measured sweep: {wall:.1f} s", flush=True)
            if not args.no_profile:
                profile.dump_stats(args.out.with_suffix(".prof"))
            with SyncPrefectClient(url) as client:
                runs = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(
                        name=FlowRunFilterName(like_=f"stateful-{MEASURED}")
                    ),
                    limit=200,
                )
                figures = [run_figures(client, r) for r in runs if r.parent_task_run_id]
    statuses: dict[str, int] = defaultdict(int)
    for outcome in outcomes:
        statuses[outcome["status"]] += 1
    write(args, imports, first, warm, wall, cpu, server, figures, dict(statuses), profile)


def write(args, imports, first, warm, wall, cpu, server, figures, statuses, profile) -> None:
    n = args.models
    load = os.getloadavg()

    def mean(key: str) -> float:
        return sum(f[key] for f in figures) / len(figures) if figures else float("nan")

    per_model = wall / n
    command = (
        f"python bench/sweep_profile.py --models {n}"
        + (" --no-profile" if args.no_profile else "")
        + (f" --timer {args.timer}" if args.timer != "wall" else "")
        + (" --database-url ..." if args.database_url else "")
    )
    lines = [
        "# One-process sweep: a later model's stateful increment",
        "",
        f"`{command}` on {os.cpu_count()} cores, load average {load[0]:.1f} / {load[1]:.1f} / "
        f"{load[2]:.1f} when it ended.",
        "",
        f"- importing `flows.sweep_flow`: {imports:.1f} s; scratch sweep of {n} models "
        f"{first:.1f} s; warm-up sweep of stateful increments {warm:.1f} s",
        f"- measured sweep of {n} stateful increments"
        + ("" if args.no_profile else " (under cProfile)")
        + f": **{wall:.1f} s, {per_model:.2f} s per model**; outcomes {statuses}",
        f"- this process's CPU time in the measured sweep: {cpu:.1f} s "
        f"({cpu / n:.2f} s per model; the rest of the wall time it waited: for the "
        "Prefect server, the disk, other processes)",
        f"- the Prefect server's processes' CPU time meanwhile (and 2 s after), less what it "
        f"uses idle: {server:.1f} s ({server / n:.2f} s per model; server on "
        f"{'PostgreSQL' if args.database_url else 'SQLite'}; the database's own processes "
        "not counted)",
        f"- per model, from the server's task runs ({len(figures)} subflow runs): ingest + "
        f"features {mean('ingest_s'):.2f} s, training {mean('train_s'):.2f} s, subflow wall "
        f"{mean('wall_s'):.2f} s",
        f"- of each model's time, outside its subflow run's Running to Completed (creating "
        f"the run, its name and states, its teardown, the sweep's own work): "
        f"{per_model - mean('wall_s'):.2f} s",
        f"- **per-model overhead** (sweep wall / models - ingest - training): "
        f"**{per_model - mean('ingest_s') - mean('train_s'):.2f} s**",
        "",
    ]
    if not args.no_profile:
        total = sum(t for _, t in by_package(profile))
        unit = "CPU seconds" if args.timer == "cpu" else "seconds"
        lines += [
            f"| counted in the measured sweep | calls | per model | {unit} (cumulative) |",
            "|---|---:|---:|---:|",
            *(f"| {label} | {c} | {c / n:.1f} | {t:.2f} |" for label, c, t in counts(profile)),
            "",
            f"| package (own time of its functions, the measured sweep) | {unit} | per model |",
            "|---|---:|---:|",
            *(f"| {p} | {t:.2f} | {t / n:.3f} |" for p, t in by_package(profile)),
            f"| (listed) | {total:.2f} | {total / n:.3f} |",
            "",
            f"| retrain's own functions (cumulative, nested) | calls | {unit} | per model |",
            "|---|---:|---:|---:|",
            *(f"| {name} | {c} | {t:.2f} | {t / n:.3f} |" for name, c, t in own_steps(profile)),
            "",
        ]
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(40)
        lines += ["```", text.getvalue().strip(), "```", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines[:14]))


if __name__ == "__main__":
    main()
