"""Load: the monitor loop over many models and a year of daily partitions, memory over time.

Every model gets its own synthetic source (``--days`` daily partitions of ``--rows`` rows:
two numeric features, one categorical, a regression label) and a LightGBM champion trained on
its first weeks and registered in MLflow (one shared ledger and MLflow store, as in
production). Then the real monitor flow (``flows.monitor_flow.monitor_flow``: the champion
loaded from the registry, ingest, the feature cache, drift tests, a ledger check, the drift
report PNG and two Prefect artifacts) runs for every model, ``--sweeps`` times, each sweep one
day later, in ONE process on a temporary Prefect server. After each sweep the process's
resident memory (RSS) is read from /proc.

    .venv/bin/python bench/monitor_load.py         # 50 models x 365 days x 8 sweeps, ~25 min
    .venv/bin/python bench/monitor_load.py --models 3 --days 60 --sweeps 6 --json out.json

Writes a table to bench/results/monitor_load.md (unless --out -) and, with --json, the raw
figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
START = pd.Timestamp("2025-01-01")


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def write_source(folder: Path, seed: int, days: int, rows: int) -> None:
    rng = np.random.default_rng(seed)
    n = days * rows
    day = np.repeat(np.arange(days), rows)
    hour = np.tile(np.arange(rows) % 24, days)
    x1 = rng.normal(0.0, 1.0, n)
    x2 = rng.uniform(0.0, 10.0, n)
    cat = rng.choice(["a", "b", "c"], n)
    y = 3.0 * x1 + 0.5 * x2 + np.where(cat == "a", 2.0, 0.0) + rng.normal(0.0, 0.5, n)
    ts = START + pd.to_timedelta(day, unit="D") + pd.to_timedelta(hour, unit="h")
    folder.mkdir(parents=True)
    frame = pd.DataFrame({"ts": ts, "x1": x1, "x2": x2, "cat": cat, "y": y})
    frame.to_parquet(folder / "data.parquet", index=False)


def write_spec(path: Path, name: str, source: Path, state: Path) -> None:
    spec = {
        "name": name,
        "label": "y",
        "metric": "mae",
        "seed": 1,
        "source": {"kind": "files", "path": str(source)},
        "timestamp": {"column": "ts"},
        "features": {"numeric": ["x1", "x2"], "categorical": ["cat"]},
        "windows": {"train": "21D", "holdout": "7D"},
        "gate": {"bootstrap_samples": 100, "require_approval": False},
        "lightgbm": {"num_boost_round": 10, "params": {"num_leaves": 7}},
        "monitor": {"min_rows": 50},
        "state": {"dir": str(state)},
    }
    path.write_text(yaml.safe_dump(spec))


def register_champion(spec_path: Path, as_of: pd.Timestamp) -> str:
    """Train a small model on the window before ``as_of`` and make it the champion."""
    from flows.retrain_flow import make_registry
    from flows.settings import resolve_spec
    from registry import CandidateRecord
    from retrain.families.lightgbm import fit
    from retrain.families.lineage import Tag
    from retrain.families.spine import prepare
    from retrain.ledger import Ledger
    from retrain.promotion import automatic_approval, decide

    spec = resolve_spec(spec_path)
    ledger = Ledger(spec.state.ledger)
    ledger.migrate()
    prepared = prepare(spec, as_of=as_of, ledger=ledger)
    trained = fit(spec, prepared)
    registry = make_registry(spec, ledger)
    with tempfile.TemporaryDirectory() as tmp:
        record = CandidateRecord(
            model_dir=trained.model.save(Path(tmp) / "trainer"),
            description="bench champion",
            params={},
            metrics={},
            version_tags={
                str(Tag.WINDOW_START): str(trained.window.start),
                str(Tag.WINDOW_END): str(trained.window.end),
                str(Tag.DATA_VERSION): trained.window.version,
                str(Tag.DATA_VERSIONS): trained.window.version,
            },
        )
        version = registry.register_candidate(record, actor="bench")
    decision = decide(
        version=version,
        gate_passed=True,
        gate_reasons=("bench",),
        approval=automatic_approval("bench"),
    )
    registry.record_decision(decision)
    registry.promote(decision, actor="bench")
    ledger.dispose()
    return version


def traced_mb() -> float:
    """Python's and numpy's live allocations since tracing started (0 when not tracing)."""
    return tracemalloc.get_traced_memory()[0] / 2**20 if tracemalloc.is_tracing() else 0.0


def run(models: int, days: int, rows: int, sweeps: int, workdir: Path, trace: bool = False) -> dict:
    from prefect.testing.utilities import prefect_test_harness

    from flows.monitor_flow import monitor_flow

    state = workdir / "state"
    specs = []
    setup_started = time.perf_counter()
    first_check = START + pd.Timedelta(days=days - sweeps)
    for i in range(models):
        source = workdir / "data" / f"m{i:03d}"
        write_source(source, seed=i, days=days, rows=rows)
        spec_path = workdir / "specs" / f"m{i:03d}.yaml"
        spec_path.parent.mkdir(parents=True, exist_ok=True)
        write_spec(spec_path, f"load-m{i:03d}", source, state)
        register_champion(spec_path, as_of=START + pd.Timedelta(days=35))
        specs.append(spec_path)
    setup_s = time.perf_counter() - setup_started

    figures: list[dict] = []
    with prefect_test_harness(server_startup_timeout=180):
        if trace:
            tracemalloc.start()
        gc.collect()
        figures.append(
            {
                "sweep": 0,
                "rss_mb": rss_mb(),
                "traced_mb": traced_mb(),
                "seconds": 0.0,
                "retrains": 0,
            }
        )
        for sweep in range(1, sweeps + 1):
            as_of = first_check + pd.Timedelta(days=sweep)
            started = time.perf_counter()
            requested = 0
            for spec_path in specs:
                out = monitor_flow(str(spec_path), as_of=str(as_of.date()))
                requested += bool(out.get("retrain"))
            seconds = time.perf_counter() - started
            gc.collect()
            figures.append(
                {
                    "sweep": sweep,
                    "as_of": str(as_of.date()),
                    "rss_mb": rss_mb(),
                    "traced_mb": traced_mb(),
                    "seconds": seconds,
                    "retrains": requested,
                }
            )
            print(
                f"sweep {sweep}/{sweeps} as of {as_of.date()}: {seconds:.1f} s, "
                f"RSS {figures[-1]['rss_mb']:.0f} MB",
                flush=True,
            )
    rss = [f["rss_mb"] for f in figures[1:]]
    traced = [f["traced_mb"] for f in figures[1:]]
    half = len(rss) // 2
    return {
        "models": models,
        "days": days,
        "rows_per_day": rows,
        "sweeps": sweeps,
        "checks": models * sweeps,
        "setup_seconds": setup_s,
        "figures": figures,
        "rss_after_first_sweep_mb": rss[0],
        "rss_last_mb": rss[-1],
        "rss_peak_mb": max(rss),
        # growth over the second half of the sweeps, per check: ~0 when memory has plateaued
        "growth_second_half_mb": rss[-1] - rss[half - 1] if half else 0.0,
        "growth_per_check_second_half_kb": (
            (rss[-1] - rss[half - 1]) * 1024 / (models * (len(rss) - half)) if half else 0.0
        ),
        # the same growth in traced allocations (--trace): what the process still holds, free
        # of the allocator's noise (RSS moves by steps of megabytes between sweeps)
        "traced_growth_second_half_mb": traced[-1] - traced[half - 1] if half else 0.0,
        "seconds_per_check": sum(f["seconds"] for f in figures[1:]) / (models * sweeps),
    }


def markdown(result: dict, command: str) -> str:
    lines = [
        "# Monitor loop under load",
        "",
        f"`{command}`",
        "",
        f"{result['models']} models x {result['days']} daily partitions "
        f"({result['rows_per_day']} rows each), {result['sweeps']} sweeps of the real monitor "
        f"flow ({result['checks']} checks) in one process; setup (data + 1 champion per model) "
        f"{result['setup_seconds']:.0f} s. Shared 2-core machine: read the trend, not the "
        "absolute times.",
        "",
        "| sweep | as of | RSS MB | seconds | retrains requested |",
        "|---|---|---|---|---|",
    ]
    for f in result["figures"]:
        lines.append(
            f"| {f['sweep']} | {f.get('as_of', 'before')} | {f['rss_mb']:.0f} | "
            f"{f['seconds']:.1f} | {f['retrains']} |"
        )
    lines += [
        "",
        f"- RSS after the first sweep {result['rss_after_first_sweep_mb']:.0f} MB, after the "
        f"last {result['rss_last_mb']:.0f} MB, peak {result['rss_peak_mb']:.0f} MB",
        f"- growth over the second half of the sweeps: {result['growth_second_half_mb']:.1f} MB "
        f"({result['growth_per_check_second_half_kb']:.1f} KB per check)",
        f"- {result['seconds_per_check']:.2f} s per monitor check",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--rows", type=int, default=24, help="rows per daily partition")
    parser.add_argument("--sweeps", type=int, default=8)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "monitor_load.md"))
    parser.add_argument("--json", default=None, help="also write the raw figures here")
    parser.add_argument(
        "--trace",
        action="store_true",
        help="also trace allocations (tracemalloc) during the sweeps: slower, but exact",
    )
    args = parser.parse_args(argv)
    if args.days <= args.sweeps + 40:
        parser.error("--days must exceed --sweeps + 40 (the champion trains on the first weeks)")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="monitor-load-") as tmp:
        result = run(args.models, args.days, args.rows, args.sweeps, Path(tmp), args.trace)
    command = "python bench/monitor_load.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.out != "-":
        Path(args.out).write_text(markdown(result, command.strip()))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    print(markdown(result, command.strip()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
