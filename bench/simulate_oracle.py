"""The hindsight oracle against an existing ``retrain simulate`` report (its summary.csv).

``retrain simulate --oracle`` computes both in one run; this recomputes the oracle alone (the
loss matrix through the family steps, the front, each policy's share) for a report already on
disk, with the same spec, overrides and --start/--end, and rewrites the report's oracle files
and section. Run it from the repository root, e.g.:

    .venv/bin/python bench/simulate_oracle.py --spec retrain/demo/drift.toml \
        --state-dir /tmp/state --start 2024-01-20 --end 2024-06-20 \
        --set lightgbm.num_boost_round=50 --report bench/results/simulate_oracle_drift
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

from flows.settings import resolve_spec
from flows.simulate_cli import parse_sets
from retrain.oracle_losses import build_loss_matrix, oracle_of
from retrain.oracle_report import write_oracle
from retrain.simulate import load_replay


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True, help="a simulate --out folder")
    parser.add_argument("--state-dir", type=Path)
    parser.add_argument("--start")
    parser.add_argument("--end")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--every", type=int, default=1)
    args = parser.parse_args()
    overrides = parse_sets(args.sets)
    if args.state_dir:
        overrides["state.dir"] = str(args.state_dir)
    spec = resolve_spec(args.spec, overrides)
    summary = pd.read_csv(args.report / "summary.csv")
    runs = [
        SimpleNamespace(policy=r["policy"], overall=r[spec.metric], total_cpu_s=r["total_cpu_s"])
        for _, r in summary.iterrows()
    ]
    simulation = SimpleNamespace(spec_name=spec.name, runs=runs)
    started = time.perf_counter(), time.process_time()
    data = load_replay(spec, start=args.start, end=args.end)
    matrix = build_loss_matrix(spec, data, every=args.every)
    result = oracle_of(matrix, simulation)  # type: ignore[arg-type]
    files = write_oracle(args.report, simulation, result)  # type: ignore[arg-type]
    page = args.report / "report.html"
    if page.is_file():
        text = page.read_text(encoding="utf-8")
        pattern = re.compile(r"<h2>Against the hindsight oracle</h2>.*?(?=<h2>Notes</h2>)", re.S)
        page.write_text(pattern.sub(lambda _: files.section, text, count=1), encoding="utf-8")
    wall, cpu = time.perf_counter() - started[0], time.process_time() - started[1]
    best = result.schedules[-1]
    print(
        f"{spec.name}: {len(matrix.partitions)} steps, {len(matrix.starts)} oracle fits "
        f"({matrix.cpu_s.sum():.1f} CPU s fitting); never {result.never:.4f}, "
        f"best {result.best:.4f} "
        f"({len(best.retrains) - 1} retrains, {best.compute:.2f} CPU s); "
        f"this run {wall:.0f} s wall, {cpu:.0f} s CPU"
    )
    print(f"| policy | {spec.metric} | CPU s | share of oracle gain | compute share |")
    print("|---|---|---|---|---|")
    for c in result.captures:
        share = "-" if c.compute_share is None else f"{c.compute_share:.2f}x"
        print(f"| {c.policy} | {c.metric:.4f} | {c.compute:.2f} | {c.gain_share:.0%} | {share} |")


if __name__ == "__main__":
    main()
