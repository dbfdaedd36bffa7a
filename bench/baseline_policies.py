"""Benchmark: ALS policies with and without ``gate.promote_baseline`` on MovieLens latest-small.

Replays the bundled MovieLens spec (retrain/demo/movielens.toml: monthly partitions, NDCG@10)
with the simulator (prequential: each month is scored by the model in production before any
policy sees it), for the policies ``monthly`` (scratch recompute, gated), ``stateful`` (fold-in,
gated) and ``baseline`` (the popularity baseline refitted every month, no gate: the reference
of issue 14), once with ``gate.promote_baseline = false`` (before) and once with it on (now).

    .venv/bin/python bench/baseline_policies.py --start 2008-01-01 --end 2014-01-01

Writes bench/results/baseline_policies.md and bench/results/baseline_policies.png (each
policy's NDCG@10 per month, now). ``--set KEY=VALUE`` overrides spec keys for both runs (e.g.
``--set windows.train=730D`` for a shorter replay); the command line is in the result file.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from retrain.config import load_spec
from retrain.simulate import load_replay, parse_policies, simulate
from retrain.simulate.report import metric_plot

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
POLICIES = "monthly,stateful,baseline"


def _overrides(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        out[key] = yaml.safe_load(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", default=None, help="first partition replayed (default: all)")
    parser.add_argument("--end", default=None, help="end of the replay (default: all)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--policies", default=POLICIES)
    parser.add_argument("--promote", choices=("off", "on", "both"), default="both")
    parser.add_argument("--out", type=Path, default=RESULTS / "baseline_policies.md")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        flags = {"off": (False,), "on": (True,), "both": (False, True)}[args.promote]
        plot = None
        for promote in flags:
            spec = load_spec(
                ROOT / "retrain" / "demo" / "movielens.toml",
                {"state.dir": tmp, "gate.promote_baseline": promote, **_overrides(args.set)},
            )
            data = load_replay(spec, start=args.start, end=args.end)
            sim = simulate(spec, parse_policies(args.policies, spec), data)
            for run in sim.runs:
                print(run.policy, promote, run.overall, flush=True)
                baselines = sum(t.promoted and t.strategy == "baseline" for t in run.trainings)
                rows.append(
                    (
                        run.policy,
                        "on" if promote else "off",
                        run.overall,
                        sum(t.promoted for t in run.trainings),
                        baselines if run.policy != "baseline" else -1,
                        run.total_cpu_s,
                    )
                )
            if promote:
                plot = metric_plot(args.out.with_suffix(".png"), sim, smooth=3)
    metric = sim.metric
    command = " ".join(["bench/baseline_policies.py", *sys.argv[1:]])
    lines = [
        "# ALS policies with and without gate.promote_baseline (MovieLens latest-small)",
        "",
        f"Command: `.venv/bin/python {command}`",
        "",
        f"Replayed {sim.first_step} to {sim.last_step}; prequential {metric} (higher is "
        "better); promotions include the first model; cpu s of fits, gates and decisions.",
        "",
        f"| policy | promote_baseline | {metric} | promotions | of them baselines | cpu s |",
        "|---|---|---|---|---|---|",
    ]
    for policy, flag, value, promotions, baselines, cpu in rows:
        shown = "-" if baselines < 0 else str(baselines)
        lines.append(f"| {policy} | {flag} | {value:.4f} | {promotions} | {shown} | {cpu:.1f} |")
    if plot is not None:
        shown = plot.relative_to(ROOT) if plot.is_relative_to(ROOT) else plot
        lines += ["", f"Figure (now): `{shown}`"]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
