"""Benchmark: gated daily/weekly policies (``gate.refit`` on) vs a no-gate loop, and an
injected bad candidate at every retrain.

Replays a spec (default: the bundled Bike Sharing demo, retrain/demo/bike.toml; the generated
drifting stream with recurring concepts is retrain/demo/drift.toml, docs/streams.md) from
``--start`` to ``--end`` with the simulator (prequential: each day is scored by the model in
production before any policy sees it):

* ``daily`` and ``weekly`` (scratch on the sliding window, gated, ``gate.refit = true``), with
  ``gate.prefer_fresh = false`` (before: a candidate must be shown at least as good as the
  champion) and ``true`` (now: a tie goes to the fresher candidate);
* a no-gate loop at the same cadences: at each retrain, fit from scratch on the last N days up
  to the cutoff and serve that model at once; no holdout, no gate; the spec's own trainer.
  N = ``windows.train`` (the fair comparison: the gated refit serves a fit on the same N days
  up to the cutoff) and N = ``windows.train + windows.holdout`` (the unfair one measured first);
* the injected bad candidate: at every retrain of a gated policy (the first model included) a
  model is also fitted on the candidate's training window with its labels shuffled (seeded
  permutation) and judged by the same gate (``family.evaluate``) against the same champion on
  the same holdout. The policy never serves it; the table counts the gate's refusals. Its CPU
  is left out of the policy's CPU.

    .venv/bin/python bench/fresh_policies.py --start 2011-01-01 --end 2011-07-01
    .venv/bin/python bench/fresh_policies.py --spec retrain/demo/drift.toml \\
        --out bench/results/fresh_policies_drift.md

Writes the markdown table to ``--out``. Read the metric and CPU seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import retrain.simulate.replay as replay_module
from flows.simulate_cli import parse_sets
from retrain.backtest import score
from retrain.config import ModelSpec, load_spec
from retrain.families import family_of
from retrain.families.lightgbm import make_trainer
from retrain.features import FeatureCache
from retrain.simulate import ReplayData, first_step, load_replay, parse_policies, simulate

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


class ShuffledProbe:
    """The family's steps, with one addition: every gate also judges a model fitted on the
    candidate's training rows with shuffled labels (never served), and counts its verdicts."""

    def __init__(self, family: Any, seed: int) -> None:
        self._family = family
        self._rng = np.random.default_rng(seed)
        self.asked = 0
        self.refused = 0
        self.cpu = 0.0
        self.let_through: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._family, name)

    def evaluate(self, spec: ModelSpec, trained: Any, holdout: Any, champion: Any) -> Any:
        evaluated = self._family.evaluate(spec, trained, holdout, champion)
        if trained.plan.strategy == "scratch":
            start = time.process_time()
            frame = FeatureCache(spec.state.features, spec).load(trained.window.partitions)
            X = frame[list(spec.features.columns)]
            y = self._rng.permutation(frame[spec.label].to_numpy("float64"))
            bad = dataclasses.replace(trained, model=make_trainer(spec).fit(X, y), y_train=y)
            verdict = self._family.evaluate(spec, bad, holdout, champion).result
            self.asked += 1
            if verdict.passed:
                self.let_through.append(f"{holdout.end}: {'; '.join(verdict.reasons)}")
            else:
                self.refused += 1
            self.cpu += time.process_time() - start
        return evaluated


def gated(
    spec: ModelSpec, data: ReplayData, policy: str, seed: int, trainings: Path | None
) -> dict[str, Any]:
    """One gated policy replayed by the simulator, with the shuffled-label probe."""
    probe = ShuffledProbe(family_of(spec), seed)
    original = replay_module.family_of
    replay_module.family_of = lambda _spec: probe  # type: ignore[assignment]
    try:
        sim = simulate(spec, parse_policies(policy, spec), data)
    finally:
        replay_module.family_of = original
    run = sim.runs[0]
    if trainings is not None:
        trainings.mkdir(parents=True, exist_ok=True)
        flag = "fresh" if spec.gate.prefer_fresh else "strict"
        sim.trainings_frame().to_csv(trainings / f"{policy}-{flag}.csv", index=False)
    return {
        "metric": run.overall,
        "promotions": run.promotions,
        "retrains": run.retrains,
        "cpu": run.total_cpu_s - probe.cpu,
        "probe": f"{probe.refused}/{probe.asked}",
        "let_through": probe.let_through,
    }


def no_gate_loop(spec: ModelSpec, data: ReplayData, every: int, days: Any) -> dict[str, Any]:
    """Retrain from scratch on the last ``days`` every ``every`` days, serve it at once."""
    t0 = first_step(data, spec)
    columns = list(spec.features.columns)
    model = None
    ys, preds = [], []
    cpu = 0.0
    fits = 0
    for t in range(t0, len(data.partitions)):
        if model is None or (t - t0) % every == 0:
            history = data.history(t)
            frame = history.frame(history.end - days, history.end)
            start = time.process_time()
            model = make_trainer(spec).fit(frame[columns], frame[spec.label].to_numpy("float64"))
            cpu += time.process_time() - start
            fits += 1
        rows = data.features(t)
        ys.append(rows[spec.label].to_numpy("float64"))
        preds.append(model.predict(rows[columns]))
    metric = score(spec.metric, np.concatenate(ys), np.concatenate(preds))
    return {"metric": metric, "retrains": fits - 1, "cpu": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "retrain" / "demo" / "bike.toml")
    parser.add_argument("--start")
    parser.add_argument("--end")
    parser.add_argument("--seed", type=int, default=0, help="of the label shuffles")
    parser.add_argument("--out", type=Path, default=RESULTS / "fresh_policies.md")
    parser.add_argument("--trainings", type=Path, help="write each gated run's trainings here")
    parser.add_argument(
        "--prefer-fresh",
        choices=("off", "on", "both", "none"),
        default="both",
        help="gated runs to replay (off: a tie keeps the champion; on: gate.prefer_fresh; none)",
    )
    parser.add_argument("--no-naive", action="store_true", help="leave out the no-gate loops")
    parser.add_argument("--cadences", default="daily,weekly", help="of the gated runs")
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], help="KEY=VALUE on top of the spec"
    )
    args = parser.parse_args()
    rows: list[tuple[str, float, str, str, float, str]] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        overrides = {**parse_sets(args.sets), "state.dir": tmp, "gate.refit": True}
        spec = load_spec(args.spec, overrides)
        data = load_replay(spec, start=args.start, end=args.end)
        variants = {"off": (False,), "on": (True,), "both": (False, True), "none": ()}[
            args.prefer_fresh
        ]
        for prefer_fresh in variants:
            spec = load_spec(args.spec, {**overrides, "gate.prefer_fresh": prefer_fresh})
            for name in args.cadences.split(","):
                out = gated(spec, data, name, args.seed, args.trainings)
                label = f"{name}, gated, refit=on, prefer_fresh={'on' if prefer_fresh else 'off'}"
                rows.append(
                    (
                        label,
                        out["metric"],
                        f"{out['promotions']}/{out['retrains']}",
                        out["probe"],
                        out["cpu"],
                        "",
                    )
                )
                notes += [f"{label}: passed at {x}" for x in out["let_through"]]
                print(rows[-1], flush=True)
        first = data.partitions[first_step(data, spec)].key
        last = data.partitions[-1].key
        scored = len(data.partitions) - first_step(data, spec)
        for days, why in (
            ()
            if args.no_naive
            else (
                (spec.windows.train_delta, f"last {spec.windows.train} = windows.train, fair"),
                (
                    spec.windows.train_delta + spec.windows.holdout_delta,
                    f"last {spec.windows.train} + {spec.windows.holdout}",
                ),
            )
        ):
            for name, every in (("daily", 1), ("weekly", 7)):
                naive = no_gate_loop(spec, data, every, days)
                rows.append(
                    (
                        f"{name}, no gate, serve at once ({why})",
                        naive["metric"],
                        f"-/{naive['retrains']}",
                        "-",
                        naive["cpu"],
                        "",
                    )
                )
                print(rows[-1], flush=True)
    spec_path = args.spec.resolve()
    shown = spec_path.relative_to(ROOT) if spec_path.is_relative_to(ROOT) else spec_path
    command = f".venv/bin/python bench/fresh_policies.py --spec {shown}"
    if args.start:
        command += f" --start {args.start}"
    if args.end:
        command += f" --end {args.end}"
    command += "".join(f" --set {item}" for item in args.sets)
    if args.prefer_fresh != "both":
        command += f" --prefer-fresh {args.prefer_fresh}"
    if args.no_naive:
        command += " --no-naive"
    if args.cadences != "daily,weekly":
        command += f" --cadences {args.cadences}"
    lines = [
        f"# Gated policies (gate.refit on) vs a no-gate loop: {spec.name}",
        "",
        f"Command: `{command}`",
        "",
        f"{scored} scored days ({first} .. {last}), prequential {spec.metric} "
        f"({'higher' if spec.greater_is_better else 'lower'} is better). Promotions / "
        "retrains after the first model; shuffled-label candidates refused by the gate / asked; "
        "CPU s of fits, gates and decisions (the shuffled-label probe left out).",
        "",
        f"| policy | {spec.metric} | promotions / retrains | shuffled refused | cpu s |",
        "|---|---|---|---|---|",
    ]
    for name, metric, promos, probe, cpu, _ in rows:
        lines.append(f"| {name} | {metric:.4f} | {promos} | {probe} | {cpu:.1f} |")
    if notes:
        lines += ["", "Shuffled-label candidates the gate let through:", ""]
        lines += [f"- {n}" for n in notes]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
