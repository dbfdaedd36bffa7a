"""Benchmark: LightGBM distributed over 2 local Dask workers vs the single-process trainer.

The same generated rows (8 numeric features, one categorical, a seasonal target with noise),
written as parquet partitions, trained from scratch by ``LightGBMTrainer`` in one process and
by ``DaskLightGBMTrainer`` (LightGBM's network, one task per worker, bins frozen on the
reference sample) on a ``LocalCluster`` of two single-threaded worker processes (or
the scheduler given with ``--scheduler``), then scored (MAE) on the same held-out rows. Each
engine runs in a child process of its own, so its peak memory (ru_maxrss) is its own; for Dask
the driver's and each worker's peak are reported.

    python bench/dask_vs_local.py --rows 2000000        # what bench/results/dask_vs_local.md holds
    python bench/dask_vs_local.py --rows 200000 --rounds 20   # smoke run
    python bench/dask_vs_local.py --scheduler tcp://10.0.0.5:8786   # the same code on a cluster
    python bench/dask_vs_local.py --engines dask   # only the Dask fit (the same generated rows)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS = Path(__file__).with_name("results")
FEATURES = [f"x{i}" for i in range(8)] + ["cat"]
PARAMS = {"num_leaves": 31, "learning_rate": 0.1}


def generate(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({f"x{i}": rng.normal(size=rows) for i in range(8)})
    X["cat"] = rng.choice([f"c{i}" for i in range(20)], rows)
    effect = X["cat"].str[1:].astype(int).to_numpy() * 0.5
    y = 3 * X["x0"] + np.sin(X["x1"] * 2) * 5 + X["x2"] * X["x3"] + effect + rng.normal(size=rows)
    return X.assign(y=y)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_local(folder: Path, rounds: int) -> dict:
    from retrain.trainers import LightGBMTrainer

    frame = pd.read_parquet(folder / "train")
    test = pd.read_parquet(folder / "test.parquet")
    started = time.perf_counter()
    model = LightGBMTrainer(
        params={**PARAMS, "num_threads": 2}, num_boost_round=rounds, categorical=["cat"]
    ).fit(frame[FEATURES], frame["y"])
    wall = time.perf_counter() - started
    mae = float(np.mean(np.abs(model.predict(test[FEATURES]) - test["y"])))
    return {"engine": "local (1 process, 2 threads)", "wall_s": wall, "mae": mae,
            "peak_mb": {"process": peak_mb()}}  # fmt: skip


def run_dask(folder: Path, rounds: int, scheduler: str | None) -> dict:
    import dask.dataframe as dd

    from retrain.trainers.lightgbm_dask import DaskLightGBMTrainer, dask_client

    test = pd.read_parquet(folder / "test.parquet")
    with dask_client(scheduler, workers=2) as client:
        started = time.perf_counter()
        frame = dd.read_parquet(str(folder / "train"))
        model = DaskLightGBMTrainer(
            params=PARAMS, num_boost_round=rounds, categorical=["cat"], client=client
        ).fit(frame[FEATURES], frame["y"])
        wall = time.perf_counter() - started
        workers = client.run(peak_mb)
    mae = float(np.mean(np.abs(model.predict(test[FEATURES]) - test["y"])))
    peaks = {"driver": peak_mb(), **{f"worker {i}": v for i, v in enumerate(workers.values())}}
    where = scheduler or "LocalCluster, 2 workers x 1 thread"
    return {"engine": f"Dask trainer ({where})", "wall_s": wall, "mae": mae, "peak_mb": peaks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--scheduler", default=None)
    parser.add_argument(
        "--engines", nargs="+", choices=["local", "dask"], default=["local", "dask"]
    )
    parser.add_argument("--child", choices=["local", "dask"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        out = (
            run_local(args.folder, args.rounds)
            if args.child == "local"
            else run_dask(args.folder, args.rounds, args.scheduler)
        )
        print(json.dumps(out))
        return
    with tempfile.TemporaryDirectory(prefix="bench-dask-") as tmp:
        folder = Path(tmp)
        (folder / "train").mkdir()
        data = generate(args.rows, seed=0)
        for i, part in enumerate(np.array_split(np.arange(len(data)), args.partitions)):
            data.iloc[part].to_parquet(folder / "train" / f"part-{i:03d}.parquet", index=False)
        generate(max(args.rows // 10, 10_000), seed=1).to_parquet(folder / "test.parquet")
        del data
        results = []
        for child in args.engines:
            command = [sys.executable, __file__, "--child", child, "--folder", str(folder),
                       "--rounds", str(args.rounds)]  # fmt: skip
            if args.scheduler:
                command += ["--scheduler", args.scheduler]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"the {child} run failed ({done.returncode}):\n{done.stderr[-4000:]}")
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)  # each engine's figures as they come
    lines = [
        f"# Dask trainer vs single-process LightGBM: {args.rows:,} rows, {args.rounds} rounds",
        "",
        f"`python bench/dask_vs_local.py --rows {args.rows} --rounds {args.rounds}"
        + (f" --scheduler {args.scheduler}" if args.scheduler else "")
        + (f" --engines {' '.join(args.engines)}" if args.engines != ["local", "dask"] else "")
        + "`",
        "",
        f"load average when it ended: {' '.join(f'{v:.1f}' for v in os.getloadavg())}",
        "",
        "| engine | wall (s) | MAE | peak memory per process (MB) |",
        "|---|---|---|---|",
    ]
    for r in results:
        peaks = ", ".join(f"{k} {v:.0f}" for k, v in r["peak_mb"].items())
        lines.append(f"| {r['engine']} | {r['wall_s']:.1f} | {r['mae']:.4f} | {peaks} |")
    if len(results) == 2:
        local, dist = results
        gap = abs(dist["mae"] - local["mae"]) / local["mae"]
        lines += ["", f"MAE gap: {gap:.3%} (target: within 0.5%)"]
    name = "dask_vs_local"
    if args.engines != ["local", "dask"]:
        name += "-" + "-".join(args.engines)
    if args.scheduler:
        name += "-scheduler"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
