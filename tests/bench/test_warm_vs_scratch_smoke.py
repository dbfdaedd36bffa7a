"""Smoke test of the benchmark's replay on a tiny generated stream (not a speed test)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_bench():
    spec = importlib.util.spec_from_file_location(
        "warm_vs_scratch", ROOT / "bench" / "warm_vs_scratch.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_replay_times_and_scores_every_strategy_on_a_tiny_stream():
    bench = load_bench()
    days = bench.synthetic_days(6, 2_000)
    features = [f"x{i}" for i in range(8)] + ["cat"]

    rows = bench.replay("synthetic", days, features, ["cat"], "y", 1, 1, {3}, {3})
    table = bench.summary(rows, "synthetic", [3])

    assert {r.strategy for r in rows} == {"warm", "refit", "scratch"}
    assert [r.day for r in rows if r.strategy == "warm"] == [1, 2, 3, 4]
    assert all(r.wall_s > 0 and r.cpu_s >= 0 and math.isfinite(r.mae) for r in rows)
    assert table.loc[0, "history rows"] == 8_000
    assert list(table.columns)[:3] == ["day", "history rows", "warm s"]
