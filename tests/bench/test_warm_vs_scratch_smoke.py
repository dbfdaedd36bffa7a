"""Smoke test of the benchmark's replay on a tiny generated stream (not a speed test)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# what the replays below pin (schedules, increments, refusals, tables) does not depend on the
# scratch fits' rounds or threads: 20 rounds instead of the bench's 200, and one thread. The
# bench's two threads spin (OpenMP busy waits) when other processes hold the cores, as the
# suite's three processes on two cores do: a 200-round fit on 22,000 rows took 9 to 23 s on two
# threads there and 0.5 s on one; the file took 7 minutes in the full suite.
SMOKE_SCRATCH_ROUNDS = 20


def load_bench():
    """A fresh copy of the bench module, its scratch fits cut to the smoke test's size."""
    spec = importlib.util.spec_from_file_location(
        "warm_vs_scratch", ROOT / "bench" / "warm_vs_scratch.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    module.PARAMS = {**module.PARAMS, "num_threads": 1}
    module.SCRATCH_ROUNDS = SMOKE_SCRATCH_ROUNDS
    return module


# the recipe these tests pin: 5 new trees an increment on its own rows (stateful.scale_rounds
# and stateful.replay are pinned in tests/retrain/test_stateful.py and the family's tests)
FIXED = {"increment_rounds": 5, "scale_rounds": False, "replay": 0.0}


def synthetic(bench, days: int = 12, rows: int = 2_000):
    return bench.Stream(
        "synthetic",
        bench.synthetic_days(days, rows),
        bench.SYNTH_NUMERIC + bench.SYNTH_CATEGORICAL,
        bench.SYNTH_CATEGORICAL,
        "y",
    )


def test_the_lineage_replay_retrains_from_scratch_every_n_increments():
    bench = load_bench()
    stream = synthetic(bench)

    rows = bench.lineage_replay(
        stream, first=2, horizon=1, cadence=1, every=3, stateful=bench.StatefulSpec(**FIXED)
    )

    scratch = [r.day for r in rows if r.strategy == "scratch"]
    assert scratch == list(range(2, 11))  # a scratch retrain at every cutoff to compare with
    warm = [(r.day, r.increments) for r in rows if r.strategy == "warm"]
    assert warm == [(3, 1), (4, 2), (5, 3), (7, 1), (8, 2), (9, 3)]  # days 2 and 6: scratch
    assert all(r.fit_rows == 2_000 for r in rows if r.strategy in ("warm", "refit"))
    assert all(math.isfinite(r.mae) and r.wall_s > 0 for r in rows if r.strategy != "stale")
    trees = {r.day: r.trees for r in rows if r.strategy == "warm"}
    assert trees[5] == trees[3] + 10  # each increment continues the previous one


def test_a_refused_increment_keeps_the_champion_serving_and_the_next_one_covers_its_rows():
    bench = load_bench()
    stream = synthetic(bench, days=8, rows=30)  # min_data_in_leaf 20: 30 rows cannot split

    rows = bench.lineage_replay(
        stream, first=2, horizon=1, cadence=1, every=7, stateful=bench.StatefulSpec(**FIXED)
    )
    summary = bench.lineage_summary(bench.pd.DataFrame([bench.asdict(r) for r in rows]))

    warm = [r for r in rows if r.strategy == "warm"]
    stale = {r.day: r for r in rows if r.strategy == "stale"}
    refused, retried = warm[0], warm[1]
    assert "added no trees" in refused.note
    # the champion kept serving: scored as it is, not as a model of its own
    assert (refused.mae, refused.trees) == (stale[3].mae, stale[3].trees)
    # the next run's increment is every row since the champion's cutoff: two days, 60 rows
    assert (retried.day, retried.fit_rows, retried.note) == (4, 60, "")
    assert retried.trees > refused.trees
    row = summary.set_index("strategy").loc["warm"]
    refusals = sum(r.note != "" for r in warm)
    assert row["refused"] == f"{refusals} of {len(warm)} runs"
    assert row["vs scratch"].endswith("%")
    assert all(r.note == "" for r in rows if r.strategy == "refit")


def test_a_checkpoint_compares_one_and_n_increments_with_scratch_at_the_same_cutoff():
    bench = load_bench()
    stream = synthetic(bench)

    rows = bench.checkpoint_replay(stream, [9], every=3, stateful=bench.StatefulSpec(**FIXED))
    table = bench.checkpoint_summary(bench.pd.DataFrame([bench.asdict(r) for r in rows]), 3)

    chain = [(r.day, r.increments) for r in rows if r.strategy == "warm" and r.chain]
    assert chain == [(7, 1), (8, 2), (9, 3)]
    assert [r.day for r in rows if r.strategy == "scratch"] == [9]
    assert table.loc[0, "history rows"] == "20,000"
    assert list(table.columns)[:4] == ["day", "history rows", "scratch s", "warm s"]
    assert table.loc[0, "warm (1 incr.)"].endswith("%")
