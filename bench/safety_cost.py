"""Benchmark: what safety costs next to the fits it guards (gate CPU vs fit CPU; monitor checks).

For each bundled spec (retrain/demo/bike.toml, movielens.toml, drift.toml) at one as-of: a
champion and a candidate fitted from scratch on the spec's training window (the real ``fit``
of the family), then the real ``evaluate`` (the gate: backtest of candidate, champion and
baseline, with the paired bootstrap of ``gate.bootstrap_samples`` draws) right after the fit,
as a retrain runs them (one ``in_memory()`` per retrain, as the retrain flow does;
``--no-memo``: without, as before), timed in CPU seconds (process_time), medians of
``--repeat`` retrains. The bootstrap alone is timed vectorised and as the former
one-draw-at-a-time loop (kept for the comparison).

The holdout's partitions: the gate reads them first, and the retrain's ``in_memory()`` keeps
each file's parsed table (read, checksum, parse) for whatever reads it next in the retrain.
When the retrain reads them again after the gate (the served refit of a candidate that
passed, with ``gate.refit`` on; the fresh baseline of ``gate.promote_baseline``, both fitted
on the window up to the as-of, which holds the holdout's partitions: checked here), that parse
is paid once for both, and "gate/fit, parse counted in the refit" counts it in the refit (the
fit that needs those rows); the gate's own conversion of them to a frame stays in the gate.
When nothing reads them again (the candidate refused, no baseline promoted; or ``gate.refit``
off) the column is the strict figure. "gate/fit" is always strict.

Monitor: the simulator's continual policy on Bike Sharing, ``--checks`` daily checks after its
first model, CPU per check with the champion's reference summarised once and each fresh row
scored once (now), and with that cache cleared before every check (what every check paid
before: the whole reference window re-read and re-scored), next to one scratch retrain.

    .venv/bin/python bench/safety_cost.py            # ~3 min here (shared 2 cores)
    # the code before a change, same conditions: its tree, this script run on it (--no-memo
    # for a tree older than retrain.features.in_memory)
    git worktree add --detach /tmp/before <commit>
    PYTHONPATH=/tmp/before .venv/bin/python bench/safety_cost.py --checks 0 --out /tmp/b.md

Writes bench/results/safety_cost.md. Read the ratios: the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import retrain.backtest as backtest_module
from retrain.config import ModelSpec, load_spec
from retrain.families import family_of
from retrain.families.spine import Champion, prepare, serving_prepared
from retrain.features import FeatureCache, in_memory
from retrain.promotion import baseline_promotion
from retrain.simulate import Decision, first_step, load_replay, make_policy
from retrain.simulate.replay import _Replayer
from retrain.stateful import scratch

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "retrain" / "demo"
RESULTS = ROOT / "bench" / "results"
AS_OF = {"bike.toml": "2012-06-01", "movielens.toml": "2017-01-01", "drift.toml": "2024-06-01"}


def loop_bootstrap(
    metric: str,
    y: np.ndarray,
    candidate: np.ndarray,
    reference: np.ndarray,
    samples: int,
    seed: int,
    greater_is_better: bool,
) -> tuple[float, float]:
    """The gate's former bootstrap: one resample and two metric calls per draw."""
    rng = np.random.default_rng(seed)
    sign = 1.0 if greater_is_better else -1.0
    diffs = np.empty(samples)
    for i in range(samples):
        idx = rng.integers(0, len(y), len(y))
        diffs[i] = sign * (
            backtest_module.score(metric, y[idx], candidate[idx])
            - backtest_module.score(metric, y[idx], reference[idx])
        )
    diffs = diffs[~np.isnan(diffs)]
    low, high = np.quantile(diffs, [0.025, 0.975])
    return float(low), float(high)


@contextmanager
def bootstrap(impl: Callable[..., tuple[float, float]]) -> Iterator[None]:
    saved = backtest_module.paired_bootstrap
    backtest_module.paired_bootstrap = impl
    try:
        yield
    finally:
        backtest_module.paired_bootstrap = saved


def cpu(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    start = time.process_time()
    out = None
    for _ in range(repeat):
        out = fn()
    return (time.process_time() - start) / repeat, out


def gate_cost(name: str, state: Path, memo: bool, repeat: int) -> dict[str, Any]:
    """Fit and gate CPU as a retrain runs them: the candidate's fit, then the gate right after
    it; with ``memo`` (what the retrain flow does since #14) both inside one ``in_memory()``,
    so each cached partition is read once per retrain. Medians of ``repeat`` retrains."""
    spec = load_spec(DEMO / name, {"state.dir": str(state / name)})
    family = family_of(spec)
    prepared = prepare(spec, as_of=pd.Timestamp(AS_OF[name]))
    plan = scratch("benchmark")
    champ_spec = spec.model_copy(update={"seed": spec.seed + 1})
    old = family.fit_candidate(champ_spec, prepared, plan, None)
    champion = Champion("1", old.model, old.window.end, (old.window.version,), {})
    cache = FeatureCache(spec.state.features, spec)
    fits, gates, reads, parses = [], [], [], []
    evaluated = None
    for _ in range(repeat):
        with in_memory() if memo else nullcontext():
            fit_cpu, trained = cpu(lambda: family.fit_candidate(spec, prepared, plan, None))
            gate_cpu, evaluated = cpu(
                lambda t=trained: family.evaluate(spec, t, prepared.holdout, champion)
            )
        fits.append(fit_cpu)
        gates.append(gate_cpu)
        # what the gate's first read of the holdout partitions costs, alone: the whole load
        # (files to one frame), and the part in_memory() keeps for the rest of the retrain
        reads.append(cpu(lambda: cache.load(prepared.holdout.partitions))[0])
        parses.append(cpu(lambda: [cache.read_table(p) for p in prepared.holdout.partitions])[0])
    assert evaluated is not None
    # who reads the holdout's partitions after the gate in the retrain (the flow's order)
    result = evaluated.result
    promoted = baseline_promotion(
        spec.gate.promote_baseline, result, evaluated.baseline_result, evaluated.baseline_refresh
    ).promote
    after = (
        "refit"
        if result.passed and spec.gate.refit
        else "baseline refit"
        if promoted
        else "nothing"
    )
    if after != "nothing":
        served = serving_prepared(spec, prepared).train.partitions
        missing = set(prepared.holdout.partitions) - set(served)
        assert not missing, f"the served window lacks holdout partitions {missing}"
    parse = float(np.median(parses))
    # the statistical test alone, on the gate's own arrays
    args = (
        spec.metric,
        evaluated.y,
        evaluated.candidate,
        evaluated.champion,
        spec.gate.bootstrap_samples,
        spec.seed,
        spec.greater_is_better,
    )
    boot_before, _ = cpu(lambda: loop_bootstrap(*args))
    boot_now, _ = cpu(lambda: backtest_module.paired_bootstrap(*args), repeat=5)
    fit_cpu, gate_cpu = float(np.median(fits)), float(np.median(gates))
    return {
        "spec": name,
        "holdout rows": evaluated.result.rows,
        "bootstrap samples": spec.gate.bootstrap_samples,
        "fit cpu s": fit_cpu,
        "gate cpu s": gate_cpu,
        "holdout read cpu s": float(np.median(reads)),
        "holdout parse cpu s (kept in memory)": parse,
        "bootstrap cpu s (loop)": boot_before,
        "bootstrap cpu s (vectorised)": boot_now,
        "gate/fit": gate_cpu / fit_cpu,
        "read again by": after,
        # the parse of the holdout's files, paid once in the retrain, counted in the fit that
        # reads them after the gate (none: the strict figure)
        "gate/fit, parse counted in the refit": (
            (gate_cpu - parse) / fit_cpu if after != "nothing" else gate_cpu / fit_cpu
        ),
        "verdict": "passed" if evaluated.result.passed else "refused",
    }


def monitor_cost(state: Path, checks: int) -> dict[str, Any]:
    spec: ModelSpec = load_spec(DEMO / "bike.toml", {"state.dir": str(state / "bike.toml")})
    data = load_replay(spec)
    t0 = first_step(data, spec)
    policy = make_policy("continual", spec)
    replayer = _Replayer(spec, policy)
    fit_cpu, _ = cpu(
        lambda: replayer.train(data.history(t0), Decision(True, "first model", "scheduled"))
    )
    cache: dict[str, Any] = policy._cache  # type: ignore[attr-defined]

    def run(clear: bool) -> float:
        cache.clear()
        start = time.process_time()
        for t in range(t0, t0 + checks):
            if clear:
                cache.clear()
            policy.decide(data.history(t + 1), replayer.state)
        return (time.process_time() - start) / checks

    before = run(clear=True)
    now = run(clear=False)
    return {
        "checks": checks,
        "scratch retrain cpu s (fit + gate)": fit_cpu,
        "check cpu s (cache cleared, before)": before,
        "check cpu s (now)": now,
        "check/retrain now": now / fit_cpu,
    }


def table(rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=60, help="monitor checks to time (0: none)")
    parser.add_argument("--repeat", type=int, default=5, help="retrains timed per spec")
    parser.add_argument(
        "--no-memo",
        action="store_true",
        help="time fit and gate without the retrain's in-memory partitions (the code before #14)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "safety_cost.md")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        gates = [gate_cost(name, state, not args.no_memo, args.repeat) for name in AS_OF]
        monitor = monitor_cost(state, args.checks) if args.checks else None
    flags = " --no-memo" if args.no_memo else ""
    parts = [
        "# Safety cost (bench/safety_cost.py)",
        f"Command: `.venv/bin/python bench/safety_cost.py{flags} --repeat {args.repeat} "
        f"--checks {args.checks}`",
        f"Load average {' / '.join(f'{v:.1f}' for v in load_before)} at the start, "
        f"{' / '.join(f'{v:.1f}' for v in os.getloadavg())} at the end; "
        f"retrain from {Path(backtest_module.__file__).resolve().parents[1]}.",
        "## Gate vs fit (CPU seconds, medians)",
        table(gates),
    ]
    if monitor is not None:
        parts += [
            "## Monitor check vs retrain, Bike Sharing continual policy (CPU seconds)",
            table([monitor]),
        ]
    text = "\n\n".join(parts)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
