"""Fold-in vs full recompute for the implicit-ALS family (issue 4).

For each dataset: a full recompute at the start, then one fold-in per day for ``--days`` days
and a full recompute at each day's cutoff. The fold-in is handed only the day's rows
(``foldin_data="increment"``): every changed user's FULL history comes from the user x item
matrix stored with the previous model, to which the day's rows are appended. A second chain of
fold-ins handed the full history up to the cutoff (``foldin_data="history"``) runs beside it and
must give bit-identical factors (checked every day). Reported: wall time of ``ALSTrainer.fit``
for a fold-in (per increment) and for a recompute (both include building the matrices), and
precision / MAP / NDCG@10 of the chained fold-in model, the recompute and the popularity
baseline on the following period (users active in it; seen items filtered; warm and cold users
apart). Target (issue 4): fold-in >= 50x cheaper per increment with NDCG@10 within 5% of the
recompute.

Datasets: MovieLens latest-small (a "day" is one of the last calendar days with ratings before
the cutoff: most calendar days have none) and a generated set (>= 1M interactions, seeded):
users arrive every day and interact most in their first days, items have a taste vector and a
popularity, 15% of the items are released during the period.

    .venv/bin/python bench/foldin_vs_recompute.py            # full run (~6 min on 2 cores)
    .venv/bin/python bench/foldin_vs_recompute.py --foldin-solver cg   # the cg fold-in
    .venv/bin/python bench/foldin_vs_recompute.py --quick    # < 1 min, smaller data, 2 days

``--foldin-solver`` picks ``ALSTrainer``'s ``foldin_solver`` for both fold-in chains ("exact":
implicit's ``partial_fit_users``, the default; "cg": the recompute's conjugate-gradient step);
the results go to ``foldin_vs_recompute.md`` and ``foldin_vs_recompute_cg.md``.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retrain.ranking import RankingScores, evaluate_ranking  # noqa: E402
from retrain.trainers import ALSTrainer, PopularityRecommender  # noqa: E402

MOVIELENS = ROOT.parent / "shared" / "data" / "movielens_latest_small" / "ratings.csv"
RESULTS = ROOT / "bench" / "results" / "foldin_vs_recompute.md"
TARGET_SPEEDUP = 50.0
TARGET_NDCG_GAP = 0.05
K = 10
TASTE = 3.0  # scale of the users' taste vectors: how much more than popularity drives a choice


@dataclass
class Scenario:
    name: str
    frame: pd.DataFrame
    day_ends: list[pd.Timestamp]  # end of the base window, then the end of each increment day
    holdout: pd.Timedelta
    popularity_window: str
    params: dict[str, Any]
    notes: str = ""


@dataclass
class Day:
    """One daily increment: the fold-in and a recompute at the same cutoff, both scored."""

    end: pd.Timestamp
    foldin_s: float
    foldin_solve_s: float
    foldin_history_s: float
    recompute_s: float
    changed_users: int
    new_users: int
    new_items: int
    refreshed_items: int
    users: int
    scores: dict[str, RankingScores]

    def gap(self, segment: str = "all") -> float:
        """Relative NDCG@10 shortfall of the fold-in vs the recompute (positive = fold-in worse)."""
        fold = self.scores["fold-in"].segment(segment).ndcg
        full = self.scores["recompute"].segment(segment).ndcg
        return (full - fold) / full if full else float("nan")


@dataclass
class Outcome:
    scenario: Scenario
    base_recompute_s: float = 0.0
    days: list[Day] = field(default_factory=list)
    rows_at_end: int = 0
    items_at_end: int = 0
    # NDCG@10 of a recompute with another seed at the last cutoff: ALS's own run-to-run noise
    other_seed_ndcg: float = float("nan")

    @property
    def seed_gap(self) -> float:
        same = self.days[-1].scores["recompute"].all.ndcg
        return (same - self.other_seed_ndcg) / same if same else float("nan")

    def median(self, name: str) -> float:
        return float(statistics.median(getattr(d, name) for d in self.days))

    @property
    def recompute_s(self) -> float:
        return float(
            statistics.median([self.base_recompute_s] + [d.recompute_s for d in self.days])
        )

    @property
    def speedup(self) -> float:
        return self.recompute_s / self.median("foldin_s")

    @property
    def increments_within_target(self) -> int:
        """Chained fold-ins before the NDCG@10 gap first exceeds the target."""
        for i, day in enumerate(self.days):
            if day.gap() > TARGET_NDCG_GAP:
                return i
        return len(self.days)


def movielens(days: int, holdout_days: int) -> Scenario:
    ratings = pd.read_csv(MOVIELENS)
    frame = pd.DataFrame(
        {
            "user": ratings["userId"].astype("int64"),
            "item": ratings["movieId"].astype("int64"),
            "weight": ratings["rating"].astype("float64"),
            "ts": pd.to_datetime(ratings["timestamp"], unit="s"),
        }
    )
    # evaluate on the last `holdout_days` of the data; the increments are the last active days
    cutoff = frame["ts"].max().normalize() - pd.Timedelta(days=holdout_days)
    active = np.sort(frame.loc[frame["ts"] < cutoff, "ts"].dt.normalize().unique())
    increment_days = [pd.Timestamp(d) for d in active[-days:]]
    base_end = increment_days[0]
    ends = [base_end] + [d + pd.Timedelta(days=1) for d in increment_days]
    return Scenario(
        name="MovieLens latest-small",
        frame=frame,
        day_ends=ends,
        holdout=pd.Timedelta(days=holdout_days),
        popularity_window="180D",
        params={"factors": 64, "regularization": 0.05, "alpha": 1.0, "confidence": "linear"},
        notes=f"ratings as linear confidence; holdout = the {holdout_days} days after the cutoff",
    )


def synthetic(
    n_users: int, n_items: int, days: int, mean_events: float, seed: int = 0
) -> pd.DataFrame:
    """Seeded implicit-feedback log: taste vectors, item popularity, daily arrivals, releases."""
    rng = np.random.default_rng(seed)
    dim = 16
    item_vec = rng.normal(size=(n_items, dim)).astype("float32") / np.sqrt(dim)
    item_bias = rng.normal(0.0, 1.0, n_items).astype("float32")
    released = np.where(rng.random(n_items) < 0.85, 0.0, rng.uniform(0, days, n_items))
    user_vec = rng.normal(size=(n_users, dim)).astype("float32") * TASTE
    arrival = rng.uniform(0, days, n_users)
    # days over which a user's activity decays: most users come for a few days, some stay
    regular = rng.random(n_users) < 0.3
    span = np.where(regular, rng.uniform(10.0, 60.0, n_users), rng.exponential(2.0, n_users))
    n_events = np.minimum(rng.geometric(1.0 / mean_events, n_users), 400)

    users, items, times = [], [], []
    chunk = 2000
    for start in range(0, n_users, chunk):
        stop = min(start + chunk, n_users)
        logits = user_vec[start:stop] @ item_vec.T + item_bias
        gumbel = -np.log(-np.log(rng.random(logits.shape, dtype="float32") + 1e-12) + 1e-12)
        keys = logits + gumbel
        width = int(n_events[start:stop].max())
        top = np.argpartition(-keys, width - 1, axis=1)[:, :width]
        order = np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1)
        top = np.take_along_axis(top, order, axis=1)
        counts = n_events[start:stop]
        take = np.arange(width)[None, :] < counts[:, None]
        chosen = top[take]
        owner = np.repeat(np.arange(start, stop), counts)
        when = arrival[owner] + rng.exponential(span[owner])
        users.append(owner)
        items.append(chosen)
        times.append(when)
    user = np.concatenate(users)
    item = np.concatenate(items)
    when = np.concatenate(times)
    late = when < released[item]  # nobody can play an item before its release
    when[late] = released[item[late]] + rng.exponential(2.0, int(late.sum()))
    keep = when < days
    start_ts = pd.Timestamp("2024-01-01")
    frame = pd.DataFrame(
        {
            "user": user[keep].astype("int64"),
            "item": item[keep].astype("int64"),
            "weight": 1.0,
            "ts": start_ts + pd.to_timedelta(when[keep], unit="D"),
        }
    )
    return frame.sort_values("ts", kind="stable").reset_index(drop=True)


def synthetic_scenario(
    label: str, n_users: int, n_items: int, days: int, increments: int
) -> Scenario:
    frame = synthetic(n_users, n_items, days, mean_events=28.0)
    start = frame["ts"].min().normalize()
    holdout_days = 7
    final = start + pd.Timedelta(days=days - holdout_days)
    ends = [final - pd.Timedelta(days=increments - i) for i in range(increments + 1)]
    return Scenario(
        name=f"generated {label}, {len(frame) / 1e6:.2f}M",
        frame=frame,
        day_ends=ends,
        holdout=pd.Timedelta(days=holdout_days),
        popularity_window="7D",
        params={"factors": 64, "regularization": 0.05, "alpha": 10.0, "confidence": "linear"},
        notes=(
            f"{n_users:,} users arriving uniformly over {days} days (70% active for a few days, "
            f"30% for 10-60 days), {n_items:,} items (15% released during the period), weight 1 "
            "per interaction, alpha 10, 7-day popularity window; holdout = the 7 days after "
            "the cutoff"
        ),
    )


def run(scenario: Scenario, log: Any, solver: str = "exact") -> Outcome:
    frame, ends = scenario.frame, scenario.day_ends
    params = {**scenario.params, "popularity_window": scenario.popularity_window}
    folding = {**params, "strategy": "foldin", "foldin_solver": solver}
    out = Outcome(scenario)
    log(f"\n## {scenario.name}: {len(frame):,} interactions")

    t = time.perf_counter()
    model = ALSTrainer(**params).fit(frame[frame["ts"] < ends[0]])
    out.base_recompute_s = time.perf_counter() - t
    log(f"recompute at {ends[0]}: {out.base_recompute_s:.2f}s")
    from_history = model
    for start, end in itertools.pairwise(ends):
        history = frame[frame["ts"] < end]
        day_rows = frame[(frame["ts"] >= start) & (frame["ts"] < end)]
        t = time.perf_counter()
        model = ALSTrainer(**folding, init_model=model, foldin_data="increment").fit(day_rows)
        foldin_s = time.perf_counter() - t
        t = time.perf_counter()
        from_history = ALSTrainer(**folding, init_model=from_history).fit(history)
        foldin_history_s = time.perf_counter() - t
        for name in ("user_factors_", "item_factors_", "user_index_", "item_index_"):
            if not np.array_equal(getattr(model, name), getattr(from_history, name)):
                raise SystemExit(f"{end}: the two fold-ins differ in {name}")
        t = time.perf_counter()
        recompute = ALSTrainer(**params).fit(history)
        recompute_s = time.perf_counter() - t
        holdout = frame[(frame["ts"] >= end) & (frame["ts"] < end + scenario.holdout)]
        baseline = PopularityRecommender(window=scenario.popularity_window).fit(history)
        scores = {
            name: evaluate_ranking(candidate, history, holdout, k=K, name=name)
            for name, candidate in (
                ("fold-in", model),
                ("recompute", recompute),
                ("popularity", baseline),
            )
        }
        day = Day(
            end=end,
            foldin_s=foldin_s,
            foldin_solve_s=model.timings_["solve_s"],
            foldin_history_s=foldin_history_s,
            recompute_s=recompute_s,
            changed_users=int(model.updated_users_.size),
            new_users=int(model.new_users_.size),
            new_items=int(model.new_items_.size),
            refreshed_items=int(model.updated_items_.size),
            users=int(model.user_index_.size),
            scores=scores,
        )
        out.days.append(day)
        log(
            f"up to {end}: fold-in {foldin_s:.3f}s (from the full history "
            f"{foldin_history_s:.3f}s; {day.changed_users} changed users, "
            f"{day.new_users} new, {day.new_items} new items, {day.refreshed_items} items "
            f"refolded), recompute {recompute_s:.2f}s; NDCG@{K} fold-in "
            f"{scores['fold-in'].all.ndcg:.4f} recompute {scores['recompute'].all.ndcg:.4f} "
            f"popularity {scores['popularity'].all.ndcg:.4f}"
        )
    other = {**params, "random_state": int(params.get("random_state", 42)) + 1}
    reseeded = ALSTrainer(**other).fit(history)
    out.other_seed_ndcg = evaluate_ranking(reseeded, history, holdout, k=K).all.ndcg
    log(f"recompute with another seed: NDCG@{K} {out.other_seed_ndcg:.4f}")
    out.rows_at_end = int((frame["ts"] < ends[-1]).sum())
    out.items_at_end = int(model.item_index_.size)
    return out


def _met(flag: bool) -> str:
    return "met" if flag else "NOT met"


def report(outcomes: list[Outcome], command: str, solver: str = "exact") -> str:
    lines = [
        "# Fold-in vs full recompute (implicit ALS)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared with other jobs), Python "
        f"{platform.python_version()}; ALS with num_threads=1 and BLAS pinned to one thread, "
        "64 factors, 15 iterations, regularization 0.05. Fold-in solver: "
        + (
            "exact (`partial_fit_users`)."
            if solver == "exact"
            else "cg (the recompute's conjugate-gradient step, 3 steps from the current factors)."
        ),
        "",
        "Each day: a fold-in from the previous day's model (chained from one recompute) and a "
        "full recompute at the same cutoff, both scored on the following period. The recompute "
        "is given the full history; the fold-in only the day's rows "
        '(`foldin_data="increment"`): it appends them to the user x item matrix stored with '
        "the previous model and solves every changed user on their FULL history from it. A "
        'second fold-in chain given the full history (`foldin_data="history"`, which '
        "rebuilds the matrices and compares them with the stored ones) gave bit-identical "
        "factors every day. Time = wall time of `ALSTrainer.fit` (matrices + solve; the "
        "fold-in's solve alone in brackets); medians over the days.",
        "",
        "| dataset | interactions | users | items | days | changed users / day | "
        "new items / day | recompute s | fold-in s | speed-up (solve only) | "
        "fold-in from full history s (speed-up) | >= 50x |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        users = o.days[-1].users
        changed = o.median("changed_users")
        lines.append(
            f"| {o.scenario.name} | {o.rows_at_end:,} | {users:,} | {o.items_at_end:,} | "
            f"{len(o.days)} | {changed:.0f} ({changed / users:.1%}) | "
            f"{o.median('new_items'):.0f} | {o.recompute_s:.2f} | {o.median('foldin_s'):.3f} "
            f"({o.median('foldin_solve_s'):.3f}) | {o.speedup:.0f}x "
            f"({o.recompute_s / o.median('foldin_solve_s'):.0f}x) | "
            f"{o.median('foldin_history_s'):.3f} "
            f"({o.recompute_s / o.median('foldin_history_s'):.0f}x) | "
            f"{_met(o.speedup >= TARGET_SPEEDUP)} |"
        )
    lines += [
        "",
        f"Quality @{K} on the following period, after the first and after the last daily "
        "fold-in (fold-in = the chained fold-in model; recompute = a full recompute at the "
        "same cutoff; popularity = the baseline). Cold users get the same popularity fallback "
        "from both models: the warm rows are where fold-in and recompute can differ.",
        "",
        f"| dataset | after day | segment | users | P@{K} fold-in / recompute | "
        f"MAP@{K} fold-in / recompute | NDCG@{K} fold-in / recompute | NDCG@{K} popularity | "
        "NDCG gap |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        for index in sorted({0, len(o.days) - 1}):
            day = o.days[index]
            for segment in ("all", "warm"):
                f, r, p = (day.scores[n].segment(segment) for n in o.days[0].scores)
                lines.append(
                    f"| {o.scenario.name} | {index + 1} | {segment} | {f.users} | "
                    f"{f.precision:.4f} / {r.precision:.4f} | {f.map:.4f} / {r.map:.4f} | "
                    f"{f.ndcg:.4f} / {r.ndcg:.4f} | {p.ndcg:.4f} | {day.gap(segment):+.1%} |"
                )
    lines += [
        "",
        "NDCG gap = (recompute - fold-in) / recompute over all active users, per chained "
        "fold-in (positive: the fold-in is worse):",
        "",
        "| dataset | " + " | ".join(f"day {i + 1}" for i in range(len(outcomes[0].days))) + " |",
        "|---|" + "---|" * len(outcomes[0].days),
    ]
    for o in outcomes:
        lines.append(
            f"| {o.scenario.name} | " + " | ".join(f"{d.gap():+.1%}" for d in o.days) + " |"
        )
    lines += [
        "",
        "| dataset | speed-up | NDCG gap after 1 fold-in | fold-ins within 5% | "
        "recompute vs recompute, other seed | target (>= 50x and within 5%) |",
        "|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        first = o.days[0].gap()
        met = o.speedup >= TARGET_SPEEDUP and first <= TARGET_NDCG_GAP
        lines.append(
            f"| {o.scenario.name} | {o.speedup:.0f}x | {first:+.1%} | "
            f"{o.increments_within_target} of {len(o.days)} | {o.seed_gap:+.1%} | {_met(met)} |"
        )
    lines += [
        "",
        "Other seed: the relative NDCG@10 difference between two full recomputes at the last "
        "cutoff that differ only in `random_state` (ALS's run-to-run noise, against which a "
        "fold-in gap can be read).",
        "",
        "Notes:",
    ]
    lines += [f"- {o.scenario.name}: {o.scenario.notes}." for o in outcomes]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small data, 2 increments (<1 min)")
    parser.add_argument("--days", type=int, default=7, help="daily fold-ins (default 7)")
    parser.add_argument("--users", type=int, default=45_000, help="generated users")
    parser.add_argument("--items", type=int, default=8_000, help="generated items")
    parser.add_argument("--foldin-solver", choices=("exact", "cg"), default="exact")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/...")
    args = parser.parse_args(argv)
    solver = args.foldin_solver
    out = args.out or (RESULTS if solver == "exact" else RESULTS.with_name(f"{RESULTS.stem}_cg.md"))
    days = 2 if args.quick else args.days
    n_users = 4_000 if args.quick else args.users
    n_items = 2_000 if args.quick else args.items
    command = "python bench/foldin_vs_recompute.py" + (" --quick" if args.quick else "")
    command += f" --foldin-solver {solver}" if solver != "exact" else ""

    def log(message: str) -> None:
        print(message, flush=True)

    started = time.perf_counter()
    outcomes = [run(movielens(days, holdout_days=365), log, solver)]
    # the same generator over a year (a large user base, a small share active each day) and
    # over 8 weeks (most users recent: a large share changes every day)
    for label, span in (("1 year", 365), ("8 weeks", 56)):
        t = time.perf_counter()
        scenario = synthetic_scenario(label, n_users, n_items, days=span, increments=days)
        log(f"generated {len(scenario.frame):,} interactions in {time.perf_counter() - t:.1f}s")
        if not args.quick and len(scenario.frame) < 1_000_000:
            raise SystemExit("the generated set must hold at least 1M interactions: raise --users")
        outcomes.append(run(scenario, log, solver))
    text = report(outcomes, command, solver)
    print("\n" + text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out} in {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
