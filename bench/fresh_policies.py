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
  is left out of the policy's CPU;
* for each gated row, the difference to the fair no-gate loop at the same cadence with its 95%
  paired bootstrap interval over the scored days (circular blocks of ``--blocks`` days), and
  its decomposition by what the gate did at the cadence point whose no-gate fit serves each day
  (a promotion there serves that very fit: difference 0).

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
        self.refused_by: dict[str, int] = {}

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
                kind = verdict_kind("; ".join(verdict.reasons))
                self.refused_by[kind] = self.refused_by.get(kind, 0) + 1
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
        "refused_by": probe.refused_by,
        "days": [(s.partition, s.rows, s.metric) for s in run.steps],
        "trainings": run.trainings,
    }


def no_gate_loop(spec: ModelSpec, data: ReplayData, every: int, days: Any) -> dict[str, Any]:
    """Retrain from scratch on the last ``days`` every ``every`` days, serve it at once."""
    t0 = first_step(data, spec)
    columns = list(spec.features.columns)
    model = None
    ys, preds = [], []
    daily: list[tuple[str, int, float]] = []
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
        daily.append((data.partitions[t].key, len(ys[-1]), score(spec.metric, ys[-1], preds[-1])))
    metric = score(spec.metric, np.concatenate(ys), np.concatenate(preds))
    return {"metric": metric, "retrains": fits - 1, "cpu": cpu, "days": daily}


# metrics whose pooled value over days is a row-weighted mean of the days' values (rmse: of
# their squares): the day-block bootstrap and the decomposition below need that
_MEAN_METRICS = {"mae", "accuracy", "logloss", "multi_logloss", "rmse"}


def _pooled(metric: str, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The metric over every row of the days (the last axis), from each day's value."""
    if metric == "rmse":
        return np.sqrt((values**2 * rows).sum(axis=-1) / rows.sum(axis=-1))
    return (values * rows).sum(axis=-1) / rows.sum(axis=-1)


def day_block_interval(
    metric: str,
    greater_is_better: bool,
    rows: np.ndarray,
    gated_days: np.ndarray,
    naive_days: np.ndarray,
    block: int,
    samples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float] | None:
    """The gated policy's improvement over the no-gate loop (positive = the gated policy is
    better) over the scored days, and its 95% paired block-bootstrap interval.

    Paired: each draw resamples the same days for both policies. Blocks: a draw is made of
    ``block`` consecutive days (circular), so a model that serves for a week, and the
    difference it makes on each of those days, stays together; ``block = 1`` resamples single
    days. None for a metric that is not pooled from per-day values (AUC, ranking metrics)."""
    if metric not in _MEAN_METRICS:
        return None
    sign = 1.0 if greater_is_better else -1.0
    n = len(rows)
    point = sign * float(_pooled(metric, rows, gated_days) - _pooled(metric, rows, naive_days))
    rng = np.random.default_rng(seed)
    per_draw = -(-n // block)
    starts = rng.integers(0, n, (samples, per_draw))
    idx = ((starts[:, :, None] + np.arange(block)) % n).reshape(samples, -1)[:, :n]
    diffs = sign * (
        _pooled(metric, rows[idx], gated_days[idx]) - _pooled(metric, rows[idx], naive_days[idx])
    )
    low, high = np.quantile(diffs, [0.025, 0.975])
    return point, float(low), float(high)


def refusal_kind(record: Any) -> str:
    """What a gated policy did at one cadence point, in a word (the decomposition's key)."""
    if record is None:
        return "no retrain"
    if record.strategy in ("skipped", "failed"):
        return record.strategy
    if record.promoted:
        return "promoted"
    return verdict_kind(record.verdict)


def verdict_kind(text: str) -> str:
    """What refused a candidate, in a word, from the gate's reasons."""
    for needle, kind in (
        ("it loses more than half of the champion's", "worse, served change: lost half the skill"),
        ("is the same recipe's fit of those rows", "worse, served change: fold failed"),
        ("no evidence that it learned something", "fold failed"),
        ("does not beat the trivial baseline significantly", "not significant over the baseline"),
        ("does not beat the trivial baseline", "lost to the baseline"),
        ("may be worse than the champion", "tie (may be worse)"),
        ("is worse than the champion", "worse than the champion"),
        ("slice(s) degrade", "slice"),
        ("backtest windows to the", "windows lost"),
    ):
        if needle in text:
            return kind
    return "refused, other"


def decomposition(
    spec: ModelSpec,
    data: ReplayData,
    every: int,
    trainings: Any,
    rows: np.ndarray,
    gated_days: np.ndarray,
    naive_days: np.ndarray,
) -> list[tuple[str, int, int, float]] | None:
    """Where the gated policy loses against the no-gate loop at the same cadence, by what the
    gate did at the cadence point whose no-gate fit serves that day.

    On every scored day the no-gate loop serves its fit of the last cadence point; the gated
    policy serves the same fit (its refit at that point is a fit of the same rows) when it
    promoted there, and an older model otherwise. So each day's difference belongs to the
    decision at that point: a promotion (difference 0), a tie or a worse candidate kept the
    champion, a first model not significantly above the baseline gave the day to the
    baseline, and so on. Rows: (kind, cadence points, days, metric points lost: positive =
    the gated policy is behind; the sum is the pooled difference)."""
    if spec.metric not in _MEAN_METRICS or spec.metric == "rmse":
        return None
    t0 = first_step(data, spec)
    at_point: dict[Any, list[Any]] = {}
    for record in trainings:
        at_point.setdefault(record.at, []).append(record)
    sign = 1.0 if spec.greater_is_better else -1.0
    total = rows.sum()
    out: dict[str, list[Any]] = {}
    points: dict[str, set[int]] = {}
    for i, t in enumerate(range(t0, len(data.partitions))):
        q = t0 + ((t - t0) // every) * every
        records = at_point.get(data.partitions[q - 1].end, [])
        kind = refusal_kind(records[0] if records else None)
        if any(r.strategy == "baseline" and r.promoted for r in records):
            kind = f"baseline promoted (candidate: {kind})"
        if q == t0:
            kind = f"first model: {kind}"
        entry = out.setdefault(kind, [0, 0.0])
        points.setdefault(kind, set()).add(q)
        entry[0] += 1
        entry[1] += sign * (naive_days[i] - gated_days[i]) * rows[i] / total
    return [(k, len(points[k]), v[0], v[1]) for k, v in sorted(out.items(), key=lambda x: -x[1][1])]


CADENCE_DAYS = {"daily": 1, "weekly": 7}


def _interval_text(out: tuple[float, float, float] | None) -> str:
    if out is None:
        return "-"
    point, low, high = out
    return f"{point:+.4f} ({low:+.4f} to {high:+.4f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "retrain" / "demo" / "bike.toml")
    parser.add_argument("--start")
    parser.add_argument("--end")
    parser.add_argument("--seed", type=int, default=0, help="of the label shuffles")
    parser.add_argument("--out", type=Path, default=RESULTS / "fresh_policies.md")
    parser.add_argument("--trainings", type=Path, help="write each gated run's trainings here")
    parser.add_argument("--days", type=Path, help="write each run's per-day metric here (CSV)")
    parser.add_argument(
        "--prefer-fresh",
        choices=("off", "on", "both", "none"),
        default="both",
        help="gated runs to replay (off: a tie keeps the champion; on: gate.prefer_fresh; none)",
    )
    parser.add_argument(
        "--no-naive",
        action="store_true",
        help="leave out the no-gate loop on windows.train + windows.holdout (the fair no-gate "
        "loop at each gated cadence always runs: the gated rows are compared with it)",
    )
    parser.add_argument("--cadences", default="daily,weekly", help="of the gated runs")
    parser.add_argument(
        "--blocks",
        default="1,7",
        help="block lengths (days) of the paired bootstrap of gated - no gate",
    )
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], help="KEY=VALUE on top of the spec"
    )
    args = parser.parse_args()
    blocks = [int(b) for b in args.blocks.split(",") if b.strip()]
    cadences = [c for c in args.cadences.split(",") if c.strip()]
    rows: list[tuple[str, float, str, str, float, list[str]]] = []
    notes: list[str] = []
    decompositions: list[str] = []
    refusals: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        overrides = {**parse_sets(args.sets), "state.dir": tmp, "gate.refit": True}
        spec = load_spec(args.spec, overrides)
        data = load_replay(spec, start=args.start, end=args.end)
        gib = spec.greater_is_better
        naive: dict[str, dict[str, Any]] = {}
        for name in cadences if args.prefer_fresh != "none" else ("daily", "weekly"):
            if name in CADENCE_DAYS:
                naive[name] = no_gate_loop(spec, data, CADENCE_DAYS[name], spec.windows.train_delta)
        day_rows = np.array([r for _, r, _ in next(iter(naive.values()))["days"]], dtype="float64")
        if args.days is not None:
            args.days.mkdir(parents=True, exist_ok=True)
            for name, out in naive.items():
                with (args.days / f"{name}-nogate-days.csv").open("w") as f:
                    f.write(f"partition,rows,{spec.metric}\n")
                    f.writelines(f"{k},{r},{m!r}\n" for k, r, m in out["days"])
        variants = {"off": (False,), "on": (True,), "both": (False, True), "none": ()}[
            args.prefer_fresh
        ]
        for prefer_fresh in variants:
            spec = load_spec(args.spec, {**overrides, "gate.prefer_fresh": prefer_fresh})
            for name in cadences:
                out = gated(spec, data, name, args.seed, args.trainings)
                label = (
                    f"{name}, gated, refit=on, prefer_fresh={'on' if prefer_fresh else 'off'}, "
                    f"undecided={spec.gate.undecided}"
                )
                versus = ["-" for _ in blocks]
                if name in naive:
                    days = np.array([m for _, _, m in out["days"]], dtype="float64")
                    base = np.array([m for _, _, m in naive[name]["days"]], dtype="float64")
                    versus = [
                        _interval_text(
                            day_block_interval(spec.metric, gib, day_rows, days, base, b)
                        )
                        for b in blocks
                    ]
                    parts = decomposition(
                        spec, data, CADENCE_DAYS[name], out["trainings"], day_rows, days, base
                    )
                    if parts is not None:
                        decompositions += [
                            "",
                            f"{label} vs the no-gate loop (last {spec.windows.train}), "
                            f"{spec.metric} points lost by the gated policy (positive: behind):",
                            "",
                            "| what the gate did at the cadence point | points | days | lost |",
                            "|---|---|---|---|",
                            *[f"| {k} | {n} | {d} | {v:+.4f} |" for k, n, d, v in parts],
                            f"| total | | {len(days)} | {sum(v for *_, v in parts):+.4f} |",
                        ]
                    if args.days is not None:
                        flag = "fresh" if prefer_fresh else "strict"
                        with (args.days / f"{name}-{flag}-days.csv").open("w") as f:
                            f.write(f"partition,rows,{spec.metric}\n")
                            f.writelines(f"{k},{r},{m!r}\n" for k, r, m in out["days"])
                rows.append(
                    (
                        label,
                        out["metric"],
                        f"{out['promotions']}/{out['retrains']}",
                        out["probe"],
                        out["cpu"],
                        versus,
                    )
                )
                notes += [f"{label}: passed at {x}" for x in out["let_through"]]
                if out["refused_by"]:
                    refusals.append(
                        f"- {label}: "
                        + ", ".join(f"{k} {n}" for k, n in sorted(out["refused_by"].items()))
                    )
                print(rows[-1], flush=True)
        first = data.partitions[first_step(data, spec)].key
        last = data.partitions[-1].key
        scored = len(data.partitions) - first_step(data, spec)
        for name, out in naive.items():
            rows.append(
                (
                    f"{name}, no gate, serve at once "
                    f"(last {spec.windows.train} = windows.train, fair)",
                    out["metric"],
                    f"-/{out['retrains']}",
                    "-",
                    out["cpu"],
                    ["-" for _ in blocks],
                )
            )
        if not args.no_naive:
            days_back = spec.windows.train_delta + spec.windows.holdout_delta
            why = f"last {spec.windows.train} + {spec.windows.holdout}"
            for name, every in CADENCE_DAYS.items():
                out = no_gate_loop(spec, data, every, days_back)
                rows.append(
                    (
                        f"{name}, no gate, serve at once ({why})",
                        out["metric"],
                        f"-/{out['retrains']}",
                        "-",
                        out["cpu"],
                        ["-" for _ in blocks],
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
    better = "higher" if spec.greater_is_better else "lower"
    lines = [
        f"# Gated policies (gate.refit on) vs a no-gate loop: {spec.name}",
        "",
        f"Command: `{command}`",
        "",
        f"{scored} scored days ({first} .. {last}), prequential {spec.metric} "
        f"({better} is better). Promotions / "
        "retrains after the first model; shuffled-label candidates refused by the gate / asked; "
        "CPU s of fits, gates and decisions (the shuffled-label probe left out). "
        f"\"vs no gate\": the gated policy's {spec.metric} minus the fair no-gate loop's at "
        f"the same cadence, signed so that positive = the gated policy is better, with its "
        "95% paired bootstrap interval over the scored days (blocks of 1 or 7 consecutive "
        "days, circular; 2,000 draws).",
        "",
        f"| policy | {spec.metric} | promotions / retrains | shuffled refused | cpu s | "
        + " | ".join(f"vs no gate ({b}-day blocks)" for b in blocks)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(blocks),
    ]
    for name, metric, promos, probe, cpu, versus in rows:
        lines.append(
            f"| {name} | {metric:.4f} | {promos} | {probe} | {cpu:.1f} | "
            + " | ".join(versus)
            + " |"
        )
    if decompositions:
        lines += ["", "## Where the gated policies lose against the no-gate loop", *decompositions]
    if refusals:
        lines += ["", "Shuffled-label candidates refused, by what refused them:", "", *refusals]
    if notes:
        lines += ["", "Shuffled-label candidates the gate let through:", ""]
        lines += [f"- {n}" for n in notes]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
