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

    python bench/fleet.py --models 6             # what bench/results/fleet.md holds
    python bench/fleet.py --models 50            # the issue's fleet (long on a shared machine)

Results go to bench/results/fleet.md. Every figure is wall time on whatever machine runs it:
on a shared, loaded machine they are noisy; the script prints the load average with them.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
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
            "gate": {**base.get("gate", {}), "require_approval": False},
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
    }


OWN_MODULES = ("flows/retrain_flow.py", "registry/client.py", "retrain/reports.py")


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


def profile_one(url: str, spec_path: Path) -> tuple[float, float, list[tuple[str, float]], str]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    started = time.perf_counter()
    from flows.retrain_flow import retrain_flow

    imports = time.perf_counter() - started
    profile = cProfile.Profile()
    started = time.perf_counter()
    with temporary_settings(updates={PREFECT_API_URL: url}):
        profile.enable()
        outcome = retrain_flow(str(spec_path), mode="stateful", as_of=PROFILED, auto_approve=True)
        profile.disable()
    wall = time.perf_counter() - started
    print(f"profiled run: {outcome.get('status')} ({outcome.get('strategy')})", flush=True)
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(25)
    return imports, wall, breakdown(profile), text.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=6)
    parser.add_argument("--database-url", default=None, help="Prefect server database URL")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--out", type=Path, default=RESULTS / "fleet.md")
    args = parser.parse_args()
    from prefect.client.orchestration import SyncPrefectClient

    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        root = Path(tmp)
        specs = write_specs(root, args.models)
        with prefect_server(root, args.database_url) as url:
            env = {**base_env(root / "home", url), "PREFECT_WORKER_QUERY_SECONDS": "2"}
            deploy = subprocess.run(
                [BIN / "python", ROOT / "deploy" / "serve.py", *specs, "--work-pool", POOL],
                env=env, cwd=root, capture_output=True, text=True,
            )  # fmt: skip
            if deploy.returncode:
                raise SystemExit(deploy.stdout + deploy.stderr)
            workers = []
            for i in range(2):
                command = [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--limit", "1"]
                log = root / f"worker-{i}.log"
                workers.append(start([*command, "--name", f"w{i}"], env, log, root))
            try:
                with SyncPrefectClient(url) as client:
                    deployments = [
                        client.read_deployment_by_name(f"retrain/fleet-{i:03d}-scheduled")
                        for i in range(args.models)
                    ]
                    print(f"first round: {args.models} scratch retrains ...", flush=True)
                    ask_and_wait(client, deployments, FIRST, "manual", args.timeout)
                    print("measured round: stateful increments ...", flush=True)
                    started = time.monotonic()
                    runs = ask_and_wait(client, deployments, MEASURED, "stateful", args.timeout)
                    total = time.monotonic() - started
                    states = [r.state_type.value for r in runs]
                    done = [r for r in runs if r.state_type.value == "COMPLETED"]
                    for run in runs:
                        if run not in done:
                            print(f"run {run.name}: {run.state_type.value} {run.state.message}")
                    if not done:
                        raise SystemExit("no run of the measured round completed")
                    figures = [run_figures(client, r) for r in done]
            finally:
                for worker in workers:
                    stop(worker)
            write_report(args, total, figures, states)
            print("profiling one more increment in this process ...", flush=True)
            profiled = profile_one(url, specs[0])
    write_report(args, total, figures, states, profiled)


def write_report(args, total, figures, states, profiled=None) -> None:
    n = len(figures)
    columns = ("queued_s", "startup_s", "wall_s", "ingest_s", "train_s", "overhead_s")

    def mean(key: str) -> float:
        return sum(f[key] for f in figures) / n

    load = os.getloadavg()
    counts = {s: states.count(s) for s in sorted(set(states))}
    lines = [
        "# Fleet benchmark: stateful increments on one work pool with 2 workers",
        "",
        f"`python bench/fleet.py --models {args.models}` on {os.cpu_count()} cores, load average "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} when it ended (a shared machine: "
        "other sessions ran tests at the same time; treat the figures as noisy).",
        "",
        f"- models: {n}; run states: {counts}",
        f"- total wall time of the round (first asked to last completed): {total:.0f} s "
        f"({total / n:.1f} s per model with 2 workers)",
        "",
        "| per run (mean of the round) | seconds |",
        "|---|---:|",
        f"| queued (asked for to Pending: waiting for a free worker) | {mean('queued_s'):.1f} |",
        f"| start-up (Pending to Running: the run's process, imports) | {mean('startup_s'):.1f} |",
        f"| wall (Running to Completed) | {mean('wall_s'):.1f} |",
        f"| ingest + features (`prepare_data`) | {mean('ingest_s'):.1f} |",
        f"| training (`train_candidate`) | {mean('train_s'):.1f} |",
        f"| **per-model overhead** (wall - ingest - training) | **{mean('overhead_s'):.1f}** |",
        "",
        "| run | queued | start-up | wall | ingest | train | overhead |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for i, f in enumerate(figures):
        lines.append(f"| {i} | " + " | ".join(f"{f[k]:.1f}" for k in columns) + " |")
    lines.append("")
    if profiled is not None:
        imports, wall, rows, top = profiled
        lines += [
            f"## One more increment in this process under cProfile ({wall:.1f} s wall)",
            "",
            f"Importing `flows.retrain_flow` first took {imports:.1f} s (not in the profile; a "
            "worker's run pays it in its start-up).",
            "",
            "| cumulative time (nested: a task includes its registry calls) | seconds |",
            "|---|---:|",
        ]
        lines += [f"| {name} | {seconds:.2f} |" for name, seconds in rows]
        lines += ["", "Top of the profile by cumulative time:", "", "```", top.strip()[:8000]]
        lines += ["```", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
