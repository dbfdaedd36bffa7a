"""Benchmark: gated policies with and without ``gate.refit`` vs a no-gate loop (Bike Sharing).

Replays the bundled Bike Sharing spec (retrain/demo/bike.toml) from ``--start`` to ``--end``
with the simulator (prequential: each day is scored by the model in production before any
policy sees it):

* ``daily`` and ``weekly`` (scratch on the sliding window, gated), ``gate.refit = false``
  (before) and ``gate.refit = true`` (now);
* a no-gate loop at the same cadences: at each retrain, fit from scratch on the last
  ``windows.train + windows.holdout`` days up to the cutoff and serve that model at once.
  No holdout and no gate; the trainer is the spec's own. This is the naive loop of issue 14.

    .venv/bin/python bench/fresh_policies.py --start 2011-01-01 --end 2011-07-01

Writes bench/results/fresh_policies.md. Read MAE (lower is better) and CPU seconds.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from retrain.backtest import score
from retrain.config import load_spec
from retrain.families.lightgbm import make_trainer
from retrain.simulate import ReplayData, first_step, load_replay, parse_policies, simulate

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def no_gate_loop(spec, data: ReplayData, every: int) -> dict[str, float]:
    """Retrain from scratch on the last train + holdout days every ``every`` days, serve it."""
    t0 = first_step(data, spec)
    span = spec.windows.train_delta + spec.windows.holdout_delta
    columns = list(spec.features.columns)
    model = None
    ys, preds = [], []
    cpu = 0.0
    for t in range(t0, len(data.partitions)):
        if model is None or (t - t0) % every == 0:
            history = data.history(t)
            frame = history.frame(history.end - span, history.end)
            start = time.process_time()
            model = make_trainer(spec).fit(frame[columns], frame[spec.label].to_numpy("float64"))
            cpu += time.process_time() - start
        rows = data.features(t)
        ys.append(rows[spec.label].to_numpy("float64"))
        preds.append(model.predict(rows[columns]))
    return {"metric": score(spec.metric, np.concatenate(ys), np.concatenate(preds)), "cpu": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", default="2011-01-01")
    parser.add_argument("--end", default="2011-07-01")
    parser.add_argument("--out", type=Path, default=RESULTS / "fresh_policies.md")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for refit in (False, True):
            spec = load_spec(
                ROOT / "retrain" / "demo" / "bike.toml",
                {"state.dir": tmp, "gate.refit": refit},
            )
            data = load_replay(spec, start=args.start, end=args.end)
            sim = simulate(spec, parse_policies("daily,weekly", spec), data)
            for run in sim.runs:
                rows.append(
                    (
                        f"{run.policy}, gated, refit={'on' if refit else 'off'}",
                        run.overall,
                        run.promotions,
                        run.total_cpu_s,
                    )
                )
        for name, every in (("daily", 1), ("weekly", 7)):
            naive = no_gate_loop(spec, data, every)
            rows.append((f"{name}, no gate, serve at once", naive["metric"], -1, naive["cpu"]))
    lines = [
        "# Gated policies with and without gate.refit vs a no-gate loop (Bike Sharing)",
        "",
        f"Command: `.venv/bin/python bench/fresh_policies.py --start {args.start} "
        f"--end {args.end}`",
        "",
        f"| policy | {spec.metric} | promotions | cpu s |",
        "|---|---|---|---|",
    ]
    for name, metric, promotions, cpu in rows:
        lines.append(
            f"| {name} | {metric:.2f} | {'-' if promotions < 0 else promotions} | {cpu:.1f} |"
        )
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
