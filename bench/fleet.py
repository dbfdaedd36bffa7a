"""Benchmark: a fleet of models, each doing a stateful increment, on one work pool with 2 workers.

N copies of the bundled Bike Sharing spec (each its own name, seed and state directory) are
registered on a process work pool of a warm Prefect server (``deploy_models``, what
``python deploy/serve.py SPEC... --work-pool NAME`` does), and two ``prefect worker start
--pool NAME --limit 1`` processes run them. A first round (from scratch, as of 2011-04-15)
makes every model a champion; the measured round asks each model for a stateful increment
(as of 2011-04-22: a warm start on the week since) at once. For each run of the measured
round: its wall time (Running to Completed, as the server recorded it), the time in the
``prepare_data`` (ingest and features) and ``train_candidate`` tasks, and the rest, the
per-model overhead (orchestration, registry, evidence, the flow's own start-up). The round's
total wall time is from the first run asked for to the last completed. Then one more
increment of the first model runs in this process under cProfile, against the same server,
and its time is broken down by package.

    python bench/fleet.py --models 6             # one run per model (a deployment each)
    python bench/fleet.py --models 50 --sweep    # two sweeps of 25 models, one per worker

With ``--sweep`` the models are not one deployment each: the sweep deployment
(``retrain-sweep/sweep``, flows/sweep_flow.py) is registered on the pool and each round asks
for one sweep run per worker, each with its share of the models; a model's retrain is a
subflow run in that worker's one process, so the start-up (process, imports, MLflow stores)
is paid once per sweep instead of once per model. The per-model figures then come from the
subflow runs, and the per-model overhead of the round is its wall time times the workers over
the models, minus the mean ingest and training.

Results go to bench/results/fleet.md. Every figure is wall time on whatever machine runs it:
on a shared, loaded machine they are noisy; the script prints the load average with them.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import itertools
import os
import pstats
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import yaml

from retrain.redact import redact_url

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("results")
BIN = Path(sys.executable).parent
DEMO_SPEC = ROOT / "retrain" / "demo" / "bike.toml"
POOL = "fleet-bench"
# the demo spec refits on the data up to the as-of (gate.refit), so an increment is the first
# day after the champion's as-of and the holdout the days after it: two days apart at least
FIRST, MEASURED, PROFILED = "2011-04-15", "2011-04-17", "2011-04-19"
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env(home: Path, api_url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def start(command: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        command, env=env, cwd=cwd, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip


def stop(process: subprocess.Popen) -> None:
    for sig in (signal.SIGINT, signal.SIGKILL):
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)


@contextlib.contextmanager
def prefect_server(root: Path, database_url: str | None) -> Iterator[str]:
    port = free_port()
    env = base_env(root / "home")
    env.update(
        PREFECT_API_DATABASE_CONNECTION_URL=database_url
        or f"sqlite+aiosqlite:///{root / 'prefect.db'}",
        PREFECT_UI_ENABLED="false",
    )
    command = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    process = start(command, env, root / "server.log", root)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                raise SystemExit(f"prefect server exited: see {root / 'server.log'}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{url}/health", timeout=2) as response,
            ):
                if response.status == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("the Prefect server did not answer within 300 s")
            time.sleep(0.5)
        yield url
    finally:
        stop(process)


def write_specs(folder: Path, models: int) -> list[Path]:
    import tomllib

    base = tomllib.loads(DEMO_SPEC.read_text())
    source = base["source"]
    if source.get("kind") == "files" and not Path(source["path"]).is_absolute():
        source["path"] = str((DEMO_SPEC.parent / source["path"]).resolve())
    paths = []
    for i in range(models):
        spec = {
            **base,
            "name": f"fleet-{i:03d}",
            "seed": i,
            "state": {"dir": str(folder / f"state-{i:03d}")},
            # infra validation (`mlflow models serve` in a fresh environment of the model's
            # requirements, built per state directory: minutes at first) is a safety step of
            # its own, not the orchestration overhead this measures
            "gate": {
                **base.get("gate", {}),
                "require_approval": False,
                "infra_validation": "never",
            },
            # a one-day increment has 24 rows: the demo's min_data_in_leaf = 20 could not split
            "lightgbm": {
                **base["lightgbm"],
                "params": {**base["lightgbm"]["params"], "min_data_in_leaf": 5},
            },
            "schedule": {"cron": "0 2 29 2 *"},  # never due while the benchmark runs
        }
        path = folder / f"fleet-{i:03d}.yaml"
        path.write_text(yaml.safe_dump(spec))
        paths.append(path)
    return paths


def ask_and_wait(client, deployments, as_of: str, mode: str, timeout: float) -> list:
    runs = [
        client.create_flow_run_from_deployment(
            d.id, parameters={"mode": mode, "as_of": as_of, "auto_approve": True}
        )
        for d in deployments
    ]
    deadline = time.monotonic() + timeout
    while True:
        current = [client.read_flow_run(r.id) for r in runs]
        if all(r.state_type and r.state_type.value in FINAL for r in current):
            return current
        if time.monotonic() > deadline:
            raise SystemExit(f"the {mode} round did not finish within {timeout:g} s")
        time.sleep(2)


def ask_sweeps_and_wait(client, sweep, specs, as_of, mode, timeout, workers) -> list:
    shares = [specs[i::workers] for i in range(workers)]
    runs = [
        client.create_flow_run_from_deployment(
            sweep.id,
            parameters={
                "spec_paths": [str(p) for p in share],
                "mode": mode,
                "as_of": as_of,
                "auto_approve": True,
            },
        )
        for share in shares
        if share
    ]
    deadline = time.monotonic() + timeout
    while True:
        current = [client.read_flow_run(r.id) for r in runs]
        if all(r.state_type and r.state_type.value in FINAL for r in current):
            return current
        if time.monotonic() > deadline:
            raise SystemExit(f"the {mode} sweeps did not finish within {timeout:g} s")
        time.sleep(2)


def subflow_runs(client, sweeps) -> list:
    """The retrain subflow runs of the given sweep runs (one per model)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    return client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[r.id for r in sweeps])
        ),
        limit=200,
    )


def run_figures(client, run) -> dict[str, float]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    states = sorted(client.read_flow_run_states(run.id), key=lambda s: s.timestamp)
    created = run.created
    running = next(s.timestamp for s in states if s.type.value == "RUNNING")
    pending = max(
        (s.timestamp for s in states if s.type.value == "PENDING" and s.timestamp <= running),
        default=running,
    )
    done = next(s.timestamp for s in states if s.type.value in FINAL)
    tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    spent: dict[str, float] = defaultdict(float)
    for task in tasks:
        if task.total_run_time:
            spent[task.task_key.split("-")[0] if task.task_key else task.name] += (
                task.total_run_time.total_seconds()
            )
    wall = (done - running).total_seconds()
    ingest = sum(v for k, v in spent.items() if "prepare_data" in k)
    train = sum(v for k, v in spent.items() if "train_candidate" in k)
    return {
        "queued_s": (pending - created).total_seconds(),
        "startup_s": (running - pending).total_seconds(),
        "wall_s": wall,
        "ingest_s": ingest,
        "train_s": train,
        "overhead_s": wall - ingest - train,
        # when (epoch seconds): for the timeline of a sweep's subflow runs
        "created_at": created.timestamp(),
        "running_at": running.timestamp(),
        "done_at": done.timestamp(),
    }


def sweep_timeline(client, sweeps: list[dict], runs: list, figures: list[dict]) -> list[dict]:
    """Where each sweep run's time went, from the server's timestamps: its start-up, from its
    Running to its first subflow run's creation (the sweep's own work: reading the specs, the
    first model's imports happen inside that model's run), each subflow run from its creation
    to its final state (its Pending to Running, then its wall), the gaps between one subflow
    run's final state and the next one's creation (what the sweep's process does between two
    models: the run's teardown, returning its result, the next call), and the tail."""
    by_parent: dict[object, list[dict]] = defaultdict(list)
    for run, f in zip(runs, figures, strict=True):
        by_parent[client.read_task_run(run.parent_task_run_id).flow_run_id].append(f)
    out = []
    for sweep in sweeps:
        children = sorted(by_parent.get(sweep["id"], []), key=lambda f: f["created_at"])
        if not children:
            continue
        gaps = [b["created_at"] - a["done_at"] for a, b in itertools.pairwise(children)]
        out.append(
            {
                "models": len(children),
                "wall": sweep["done_at"] - sweep["running_at"],
                "lead": children[0]["created_at"] - sweep["running_at"],
                "to_running": sum(f["running_at"] - f["created_at"] for f in children),
                "subflow_wall": sum(f["done_at"] - f["running_at"] for f in children),
                "gaps": sum(gaps),
                "gap_mean": sum(gaps) / len(gaps) if gaps else 0.0,
                "tail": sweep["done_at"] - children[-1]["done_at"],
            }
        )
    return out


OWN_MODULES = (
    "flows/retrain_flow.py",
    "registry/client.py",
    "retrain/reports.py",
    "retrain/families/lightgbm.py",
)


def breakdown(profile: cProfile.Profile) -> list[tuple[str, float]]:
    """Cumulative time of the flow's tasks, the registry calls and the plots (they nest: a
    task's time includes the registry calls it makes)."""
    rows = []
    for (filename, _, name), (_, _, _, cumtime, _) in pstats.Stats(profile).stats.items():  # type: ignore[attr-defined]
        path = Path(filename)
        if ".venv" in path.parts or not path.is_relative_to(ROOT):
            continue
        module = path.relative_to(ROOT).as_posix()
        if module in OWN_MODULES and cumtime >= 0.2 and not name.startswith("<"):
            rows.append((f"`{module}` {name}", cumtime))
    return sorted(rows, key=lambda kv: -kv[1])[:16]


def profile_one(url: str, specs: list[Path]) -> dict:
    """Two more increments in this process: the first pays the process's first use (imports,
    MLflow stores); the second, what every later model of a sweep costs, runs under cProfile."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    started = time.perf_counter()
    from flows.retrain_flow import retrain_flow

    imports = time.perf_counter() - started
    profile = cProfile.Profile()
    with temporary_settings(updates={PREFECT_API_URL: url}):
        started = time.perf_counter()
        first = retrain_flow(str(specs[0]), mode="stateful", as_of=PROFILED, auto_approve=True)
        cold = time.perf_counter() - started
        started = time.perf_counter()
        profile.enable()
        outcome = retrain_flow(str(specs[1]), mode="stateful", as_of=PROFILED, auto_approve=True)
        profile.disable()
        wall = time.perf_counter() - started
    print(f"profiled runs: {first.get('status')}, {outcome.get('status')}", flush=True)
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(25)
    return {
        "imports": imports,
        "cold": cold,
        "cold_status": first.get("status"),
        "wall": wall,
        "status": outcome.get("status"),
        "rows": breakdown(profile),
        "top": text.getvalue(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=6)
    parser.add_argument("--sweep", action="store_true", help="one sweep run per worker")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--database-url", default=None, help="Prefect server database URL")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--out", type=Path, default=RESULTS / "fleet.md")
    args = parser.parse_args()
    if args.models < 2:
        parser.error("--models must be 2 or more")
    from prefect.client.orchestration import SyncPrefectClient

    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        root = Path(tmp)
        specs = write_specs(root, args.models)
        with prefect_server(root, args.database_url) as url:
            env = {**base_env(root / "home", url), "PREFECT_WORKER_QUERY_SECONDS": "2"}
            if args.sweep:
                command = [BIN / "python", "-c", DEPLOY_SWEEP, POOL]
            else:
                command = [
                    BIN / "python",
                    ROOT / "deploy" / "serve.py",
                    *specs,
                    "--work-pool",
                    POOL,
                ]
            deploy = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True)
            if deploy.returncode:
                raise SystemExit(deploy.stdout + deploy.stderr)
            workers = []
            for i in range(args.workers):
                command = [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--limit", "1"]
                log = root / f"worker-{i}.log"
                workers.append(start([*command, "--name", f"w{i}"], env, log, root))
            try:
                with SyncPrefectClient(url) as client:
                    if args.sweep:
                        sweep = client.read_deployment_by_name("retrain-sweep/sweep")

                        def round_(as_of: str, mode: str) -> tuple[list, list]:
                            parents = ask_sweeps_and_wait(
                                client, sweep, specs, as_of, mode, args.timeout, args.workers
                            )
                            return parents, subflow_runs(client, parents)
                    else:
                        deployments = [
                            client.read_deployment_by_name(f"retrain/fleet-{i:03d}-scheduled")
                            for i in range(args.models)
                        ]

                        def round_(as_of: str, mode: str) -> tuple[list, list]:
                            runs = ask_and_wait(client, deployments, as_of, mode, args.timeout)
                            return runs, runs

                    print(f"first round: {args.models} scratch retrains ...", flush=True)
                    round_(FIRST, "manual")
                    print("measured round: stateful increments ...", flush=True)
                    started = time.monotonic()
                    parents, runs = round_(MEASURED, "stateful")
                    total = time.monotonic() - started
                    states = [r.state_type.value for r in runs]
                    done = [r for r in runs if r.state_type.value == "COMPLETED"]
                    for run in runs:
                        if run not in done:
                            print(f"run {run.name}: {run.state_type.value} {run.state.message}")
                    if not done:
                        raise SystemExit("no run of the measured round completed")
                    figures = [run_figures(client, r) for r in done]
                    outcomes = statuses(specs, runs)
                    sweeps = (
                        [{**run_figures(client, r), "id": r.id} for r in parents]
                        if args.sweep
                        else None
                    )
                    timeline = sweep_timeline(client, sweeps, done, figures) if sweeps else []
            finally:
                for worker in workers:
                    stop(worker)
            write_report(args, total, figures, states, outcomes, sweeps, timeline=timeline)
            print("profiling two more increments in this process ...", flush=True)
            profiled = profile_one(url, specs)
    write_report(args, total, figures, states, outcomes, sweeps, profiled, timeline)


DEPLOY_SWEEP = (
    "import sys; from flows.deployments import deploy_sweep; print(deploy_sweep(sys.argv[1]))"
)


def statuses(specs: list[Path], runs) -> dict[str, int]:
    """What each retrain of the round decided (promoted, rejected, skipped, ...): its run in
    the model's ledger (a run is named after its model: ``fleet-007-stateful-...``)."""
    from flows.settings import resolve_spec
    from retrain.ledger import Ledger

    counts: dict[str, int] = defaultdict(int)
    for path in specs:
        spec = resolve_spec(path)
        with Ledger(spec.state.ledger) as ledger:
            for run in runs:
                if run.name.startswith(f"{spec.name}-"):
                    record = ledger.run_of_flow_run(str(run.id))
                    counts[record.status if record else "?"] += 1
    return dict(counts)


def write_report(
    args, total, figures, states, outcomes, sweeps, profiled=None, timeline=()
) -> None:
    n = len(figures)
    columns = ("queued_s", "startup_s", "wall_s", "ingest_s", "train_s", "overhead_s")

    def mean(key: str) -> float:
        return sum(f[key] for f in figures) / n

    load = os.getloadavg()
    counts = {s: states.count(s) for s in sorted(set(states))}
    per_model = total * args.workers / n  # a worker's time per model in the round
    effective = per_model - mean("ingest_s") - mean("train_s")
    how = (
        f"{args.workers} sweep runs (one per worker), each retraining its share of the models "
        "as subflow runs in one process"
        if args.sweep
        else "one run per model (a deployment each)"
    )
    command = f"python bench/fleet.py --models {args.models}" + (" --sweep" if args.sweep else "")
    if args.database_url:  # the Prefect server's database, its password masked
        command += f" --database-url {redact_url(args.database_url)}"
    lines = [
        f"# Fleet benchmark: stateful increments on one work pool with {args.workers} workers",
        "",
        f"`{command}` on {os.cpu_count()} cores, load average "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} when it ended (a shared machine: "
        "other sessions ran tests at the same time; treat the figures as noisy).",
        "",
        f"- how: {how}",
        f"- models: {n}; run states: {counts}; retrain outcomes (ledger): {outcomes}",
        f"- total wall time of the round (first asked to last completed): {total:.0f} s "
        f"({total / n:.1f} s per model with {args.workers} workers; {per_model:.1f} s of a "
        "worker per model)",
        f"- **per-model overhead of the round** (a worker's time per model - ingest - training): "
        f"**{effective:.1f} s**",
    ]
    if sweeps:
        lines.append(
            "- the sweep runs' own start-up (Pending to Running, once per sweep): "
            + ", ".join(f"{f['startup_s']:.1f} s" for f in sweeps)
        )
    lines += [
        "",
        "| per model's retrain run (mean of the round) | seconds |",
        "|---|---:|",
        f"| queued (asked for to Pending: waiting for a free worker) | {mean('queued_s'):.1f} |",
        f"| start-up (Pending to Running: the run's process, imports) | {mean('startup_s'):.1f} |",
        f"| wall (Running to Completed) | {mean('wall_s'):.1f} |",
        f"| ingest + features (`prepare_data`) | {mean('ingest_s'):.1f} |",
        f"| training (`train_candidate`) | {mean('train_s'):.1f} |",
        f"| overhead inside the run (wall - ingest - training) | {mean('overhead_s'):.1f} |",
        "",
    ]
    if timeline:
        lines += [
            "| where a sweep run's time went (seconds; per model in brackets) | "
            + " | ".join(f"sweep {i}" for i in range(len(timeline)))
            + " |",
            "|---|" + "---:|" * len(timeline),
        ]
        rows = [
            ("models", "models", False),
            ("sweep's wall (Running to Completed)", "wall", True),
            ("its own work before the first model (specs read, checks)", "lead", False),
            (
                "subflow runs: creation to Running (create, name, Pending, Running)",
                "to_running",
                True,
            ),
            ("subflow runs: Running to Completed", "subflow_wall", True),
            ("between models: one's final state to the next one's creation", "gaps", True),
            ("after the last model", "tail", False),
        ]
        for label, key, per in rows:
            cells = [
                f"{t[key]:.0f}"
                if key == "models"
                else f"{t[key]:.1f}" + (f" ({t[key] / t['models']:.2f})" if per else "")
                for t in timeline
            ]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "| run | queued | start-up | wall | ingest | train | overhead |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for i, f in enumerate(figures):
        lines.append(f"| {i} | " + " | ".join(f"{f[k]:.1f}" for k in columns) + " |")
    lines.append("")
    if profiled is not None:
        lines += [
            "## Two more increments in this process",
            "",
            f"Importing `flows.retrain_flow`: {profiled['imports']:.1f} s. The first increment "
            f"in this process ({profiled['cold_status']}): {profiled['cold']:.1f} s (it pays "
            "the process's first use: lazy imports, MLflow's stores). The second, another "
            f"model ({profiled['status']}), what each later model of a sweep costs, under "
            f"cProfile: {profiled['wall']:.1f} s.",
            "",
            "| cumulative time (nested: a task includes its registry calls) | seconds |",
            "|---|---:|",
        ]
        lines += [f"| {name} | {seconds:.2f} |" for name, seconds in profiled["rows"]]
        lines += ["", "Top of the profile by cumulative time:", "", "```"]
        lines += [profiled["top"].strip()[:8000], "```", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
