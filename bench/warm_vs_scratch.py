"""Benchmark: LightGBM warm start vs refit vs scratch retrain, as the history grows.

The stateful mode as it runs in production: a champion trained from scratch, then one
increment a day on the rows that arrived since (``strategy="warm"``: ``--increment-rounds``
new trees; ``strategy="refit"``: same trees, leaf values refitted), each continuing from the
previous increment, and a scratch retrain every ``--scratch-every`` increments (the defaults
are ``[stateful]``'s defaults). Compared with a scratch retrain on the WHOLE history at the same
cutoff, and with the champion left as it was ("stale"). Streams, replayed with the project's
own ``LightGBMTrainer``:

* Bike Sharing hourly (the bundled real data, 24 rows a day): after 60 days, a run every day
  (and, separately, every week) for every strategy, scored (MAE) on the next 7 days. A run
  the product refuses (a day's 24 rows are too few for warm start to grow a tree) leaves the
  champion serving, and the next run's increment is every row since the champion's cutoff,
  as in production.
* A generated stream of ``--days`` days x ``--rows-per-day`` rows (default 365 x 100,000):
  8 numeric features, a categorical one and the day of the week, a target with a weekly and a
  yearly season, a slow upward trend, an effect that drifts over the year, and noise. Scratch
  on 36.5M rows takes minutes, so it is replayed at checkpoints: at day ``c``, a champion from
  scratch on the history up to ``c - scratch_every``, its chain of ``scratch_every`` daily
  increments up to ``c``, a champion from scratch up to ``c - 1`` with one increment (day
  ``c``), and a scratch retrain on the history up to ``c``; all scored on day ``c + 1``.

Times are wall (perf_counter) and CPU (process_time) seconds of ``fit`` (encoding, binning and
training); every fit uses ``num_threads=2``. This is a benchmark, not a test: run it on a quiet
machine and read the ratios, which are measured in the same run.

    python bench/warm_vs_scratch.py --checkpoints 30   # days 30 and 363: 39 min (shared 2 cores)
    python bench/warm_vs_scratch.py                    # days 30, 90, 180, 363: 3 scratch fits each
    python bench/warm_vs_scratch.py --quick            # smoke run (< 2 min)
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from retrain.backtest import score
from retrain.config import StatefulSpec
from retrain.errors import TrainingError
from retrain.stateful import increment_rounds
from retrain.trainers import LightGBMTrainer

ROOT = Path(__file__).resolve().parents[1]
BIKE = ROOT / "retrain" / "demo" / "data" / "bike_sharing_hourly" / "hour.csv"
BIKE_NUMERIC = [
    "temp",
    "atemp",
    "hum",
    "windspeed",
    "hr",
    "holiday",
    "workingday",
    "season",
    "mnth",
]
BIKE_CATEGORICAL = ["weathersit", "weekday"]
BIKE_FIRST_DAYS = 60
BIKE_HORIZON = 7
SYNTH_NUMERIC = [f"x{i}" for i in range(8)]
SYNTH_CATEGORICAL = ["cat", "dow"]
PARAMS = {"learning_rate": 0.05, "num_leaves": 31, "num_threads": 2}
SCRATCH_ROUNDS = 200
DEFAULTS = StatefulSpec()


@dataclass(frozen=True)
class Row:
    """One fitted (or left alone) model at one cutoff, scored on the days after it."""

    stream: str
    cadence: int  # days of data per increment
    day: int  # the cutoff: the model saw days <= day
    history_rows: int  # rows up to the cutoff
    fit_rows: int  # rows this fit read (the whole history for scratch, the increment else)
    strategy: str  # scratch | warm | refit | stale (the lineage's scratch champion, untouched)
    increments: int  # increments since the lineage's scratch champion
    wall_s: float
    cpu_s: float
    mae: float
    trees: int
    note: str = ""  # why the product refused the increment (the champion kept serving)
    chain: bool = False  # checkpoint replay: a row of the chain of ``every`` increments


@dataclass(frozen=True)
class Stream:
    name: str
    days: list[pd.DataFrame]
    features: list[str]
    categorical: list[str]
    label: str

    def rows_upto(self, day: int) -> int:
        return sum(len(d) for d in self.days[: day + 1]) if day >= 0 else 0

    def xy(self, first: int, last: int) -> tuple[pd.DataFrame, np.ndarray]:
        """Features and label of days first..last (inclusive)."""
        frame = pd.concat(self.days[first : last + 1], ignore_index=True)
        return frame[self.features], frame[self.label].to_numpy()


def trainer(
    categorical: list[str],
    strategy: str = "scratch",
    init: LightGBMTrainer | None = None,
    rounds: int | None = None,
) -> LightGBMTrainer:
    """A fit with the bench's ``PARAMS``; ``rounds`` defaults to ``SCRATCH_ROUNDS`` (both read
    at call time: the smoke tests run the same replays with fewer rounds on one thread)."""
    return LightGBMTrainer(
        params=dict(PARAMS),
        num_boost_round=SCRATCH_ROUNDS if rounds is None else rounds,
        categorical=categorical,
        random_state=7,
        strategy=strategy,
        init_model=init,
    )


def increment(
    stream: Stream, stateful: StatefulSpec, strategy: str, first: int, last: int
) -> tuple[pd.DataFrame, np.ndarray, int]:
    """What an increment of days first..last fits on, as the product's warm start does
    (``retrain.families.lightgbm.warm_increment``): its rows with the newest earlier days
    replayed in front (``stateful.replay`` times its rows; the bench's training window is
    the whole history), and the rounds for its share of the history
    (``retrain.stateful.increment_rounds``). Refit: the increment's rows only."""
    X, y = stream.xy(first, last)
    new_rows = len(y)
    if strategy != "warm":
        return X, y, stateful.increment_rounds
    rounds = increment_rounds(stateful, SCRATCH_ROUNDS, new_rows, stream.rows_upto(last))
    wanted, start = math.ceil(stateful.replay * new_rows), first
    while start > 0 and stream.rows_upto(first - 1) - stream.rows_upto(start - 1) < wanted:
        start -= 1
    if start < first:
        X, y = stream.xy(start, last)
    return X, y, rounds


def timed_fit(
    model: LightGBMTrainer, X: pd.DataFrame, y: np.ndarray
) -> tuple[LightGBMTrainer | None, float, float, str]:
    """Fit; the product's refusal (e.g. an increment too small to split) is a result too."""
    wall, cpu = time.perf_counter(), time.process_time()
    note = ""
    try:
        model.fit(X, y)
    except TrainingError as exc:
        note = str(exc)
    done = time.perf_counter() - wall, time.process_time() - cpu
    return (None if note else model), done[0], done[1], note


class Scorer:
    """MAE of a model on the ``horizon`` days after a cutoff (the scoring frame cached)."""

    def __init__(self, stream: Stream, horizon: int) -> None:
        self.stream, self.horizon = stream, horizon
        self._cache: dict[int, tuple[pd.DataFrame, np.ndarray]] = {}

    def __call__(self, model: LightGBMTrainer | None, day: int) -> float:
        if model is None:
            return float("nan")
        if day not in self._cache:
            self._cache = {day: self.stream.xy(day + 1, day + self.horizon)}
        X, y = self._cache[day]
        return score("mae", y, model.predict(X))


def row_of(
    stream: Stream,
    cadence: int,
    day: int,
    fit_rows: int,
    strategy: str,
    increments: int,
    model: LightGBMTrainer | None,
    timing: tuple[float, float],
    scorer: Callable[[LightGBMTrainer | None, int], float],
    note: str = "",
) -> Row:
    return Row(
        stream.name,
        cadence,
        day,
        stream.rows_upto(day),
        fit_rows,
        strategy,
        increments,
        timing[0],
        timing[1],
        scorer(model, day),
        model.booster_.num_trees() if model is not None else 0,
        note,
    )


def lineage_replay(
    stream: Stream, first: int, horizon: int, cadence: int, every: int, stateful: StatefulSpec
) -> list[Row]:
    """The stateful mode day by day: a run every ``cadence`` days, a scratch retrain every
    ``every`` runs; a scratch retrain on the whole history at every cutoff too.

    A run the product refuses (an increment too small to grow a tree) leaves the champion
    serving, as in production: its row scores that champion and carries the refusal, and the
    next run's increment is every row since the champion's own cutoff. Refused runs count
    towards ``every`` (one schedule for warm and refit, so both meet the same scratch days)."""
    scorer = Scorer(stream, horizon)
    rows: list[Row] = []
    lineage: dict[str, LightGBMTrainer | None] = {}
    cutoff: dict[str, int] = {}  # the day each strategy's champion saw data up to
    champion: LightGBMTrainer | None = None
    since = every
    for day in range(first, len(stream.days) - horizon, cadence):
        X, y = stream.xy(0, day)
        fresh, wall, cpu, _ = timed_fit(trainer(stream.categorical), X, y)
        rows.append(row_of(stream, cadence, day, len(X), "scratch", 0, fresh, (wall, cpu), scorer))
        if since >= every or champion is None:  # the lineage's scheduled scratch retrain
            champion, since = fresh, 0
            lineage = {"warm": fresh, "refit": fresh}
            cutoff = {"warm": day, "refit": day}
            continue
        since += 1
        for strategy in ("warm", "refit"):
            init = lineage[strategy]
            Xi, yi, rounds = increment(stream, stateful, strategy, cutoff[strategy] + 1, day)
            model, w, c, note = timed_fit(
                trainer(stream.categorical, strategy, init, rounds), Xi, yi
            )
            if model is not None:
                lineage[strategy], cutoff[strategy] = model, day
            served = lineage[strategy]  # refused: the champion stays
            rows.append(
                row_of(stream, cadence, day, len(Xi), strategy, since, served, (w, c), scorer, note)
            )
        rows.append(row_of(stream, cadence, day, 0, "stale", since, champion, (0, 0), scorer))
    return rows


def checkpoint_replay(
    stream: Stream,
    checkpoints: list[int],
    every: int,
    stateful: StatefulSpec,
    progress: bool = False,
) -> list[Row]:
    """At each checkpoint c: a chain of ``every`` daily increments from a scratch champion on
    the days up to c - every, one increment from a scratch champion on the days up to c - 1,
    and a scratch retrain on the days up to c; all scored on day c + 1."""
    scorer = Scorer(stream, 1)
    rows: list[Row] = []
    for c in checkpoints:
        started = time.perf_counter()
        for length in (every, 1):
            chain = length == every
            X, y = stream.xy(0, c - length)
            champion, *_ = timed_fit(trainer(stream.categorical), X, y)
            del X, y
            assert champion is not None
            stale = row_of(stream, 1, c, 0, "stale", length, champion, (0, 0), scorer)
            rows.append(replace(stale, chain=chain))
            for strategy in ("warm", "refit"):
                model: LightGBMTrainer | None = champion
                for j in range(1, length + 1):
                    day = c - length + j
                    Xi, yi, rounds = increment(stream, stateful, strategy, day, day)
                    assert model is not None
                    model, w, cpu, note = timed_fit(
                        trainer(stream.categorical, strategy, model, rounds), Xi, yi
                    )
                    fitted = row_of(
                        stream, 1, day, len(Xi), strategy, j, model, (w, cpu), scorer, note
                    )
                    rows.append(replace(fitted, chain=chain))
                    if model is None:  # refused: no model to continue (scored as n/a)
                        break
        X, y = stream.xy(0, c)
        fresh, wall, cpu, _ = timed_fit(trainer(stream.categorical), X, y)
        rows.append(row_of(stream, 1, c, len(X), "scratch", 0, fresh, (wall, cpu), scorer))
        del X, y
        if progress:
            print(f"checkpoint day {c}: {time.perf_counter() - started:.0f} s", flush=True)
    return rows


def bike_days() -> list[pd.DataFrame]:
    frame = pd.read_csv(BIKE)
    for col in BIKE_CATEGORICAL:
        frame[col] = frame[col].astype(str)
    return [part.reset_index(drop=True) for _, part in frame.groupby("dteday", sort=True)]


def synthetic_days(n_days: int, rows_per_day: int, seed: int = 0) -> list[pd.DataFrame]:
    """A seeded stream: seasons, a slow trend, a drifting effect and noise.

    The day of the week is a feature (as in any real daily stream); the yearly season, the
    trend and the drift are not: only recent data tells where they are now."""
    rng = np.random.default_rng(seed)
    cats = [str(i) for i in range(10)]
    dows = [str(i) for i in range(7)]
    out = []
    for day in range(n_days):
        x = rng.normal(size=(rows_per_day, 8)).astype("float32")
        cat = rng.integers(0, 10, rows_per_day)
        season = 3.0 * np.sin(2 * np.pi * day / 365) + 1.0 * np.sin(2 * np.pi * day / 7)
        trend = 0.01 * day
        # the effect of x1 drifts slowly over the year: old data gets stale
        y = (
            2.0 * x[:, 0]
            + (1.0 + day / 365) * x[:, 1] * (x[:, 2] > 0)
            + np.sin(x[:, 3])
            + 0.5 * cat
            + season
            + trend
            + rng.normal(scale=1.0, size=rows_per_day)
        )
        frame = pd.DataFrame(x, columns=SYNTH_NUMERIC)
        frame["cat"] = pd.Categorical.from_codes(cat, categories=cats)
        frame["dow"] = pd.Categorical.from_codes(np.full(rows_per_day, day % 7), categories=dows)
        frame["y"] = y.astype("float32")
        out.append(frame)
    return out


def warm_words(stateful: StatefulSpec) -> str:
    if not stateful.scale_rounds:
        rounds = f"{stateful.increment_rounds} new trees"
    else:
        rounds = (
            f"new trees for the increment's share of the history ({SCRATCH_ROUNDS} x its "
            f"share, at least 1, at most {stateful.increment_rounds})"
        )
    replay = (
        f" on its rows and {stateful.replay:g} times as many replayed from the days before"
        if stateful.replay
        else " on the increment's rows"
    )
    return rounds + replay


def gap(a: float, b: float) -> str:
    """Relative difference of MAE a to MAE b (positive: a is worse)."""
    return "n/a" if not np.isfinite(a) else f"{(a - b) / b:+.1%}"


def markdown(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join("" if v is None else str(v) for v in row) + " |")
    return "\n".join(lines)


def lineage_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per cadence and strategy: mean MAE over every cutoff (the lineage's scratch days count
    with the scratch model it had that day), mean fit time of an increment, and the gap."""
    table = []
    for cadence, at in frame.groupby("cadence"):
        scratch = at[at["strategy"] == "scratch"].set_index("day")
        base = scratch["mae"].mean()
        table.append(
            {
                "increment": f"{cadence} day(s)",
                "strategy": "scratch on the whole history, every cutoff",
                "cutoffs": len(scratch),
                "mean fit s": round(scratch["wall_s"].mean(), 3),
                "mean MAE": round(base, 2),
                "vs scratch": "",
                "refused": "",
            }
        )
        for strategy in ("warm", "refit", "stale"):
            inc = at[at["strategy"] == strategy].set_index("day")
            mae = scratch["mae"].copy()  # days the lineage retrained from scratch
            mae.loc[inc.index] = inc["mae"]  # a refused run: the champion that kept serving
            refused = int((inc["note"] != "").sum())
            fitted = inc[inc["note"] == ""]
            table.append(
                {
                    "increment": f"{cadence} day(s)",
                    "strategy": strategy
                    if strategy != "stale"
                    else "stale (no increment, champion kept)",
                    "cutoffs": len(mae),
                    "mean fit s": round(fitted["wall_s"].mean(), 3) if strategy != "stale" else "",
                    "mean MAE": round(mae.mean(), 2),
                    "vs scratch": gap(mae.mean(), base),
                    "refused": f"{refused} of {len(inc)} runs" if refused else "",
                }
            )
    return pd.DataFrame(table)


def checkpoint_summary(frame: pd.DataFrame, every: int) -> pd.DataFrame:
    table = []
    for c, at in frame[frame["strategy"] == "scratch"].groupby("day"):
        scratch = at.iloc[0]

        def pick(strategy: str, chain: bool, at_day: int = c) -> pd.Series:
            """The model of the (chain or single) increment at ``at_day``; a chain refused
            before it has none: an all-NaN row (scored n/a)."""
            rows = frame[
                (frame["strategy"] == strategy)
                & (frame["day"] == at_day)
                & (frame["chain"] == chain)
            ]
            return rows.iloc[0] if len(rows) else pd.Series(np.nan, index=frame.columns)

        warm1, refit1 = pick("warm", False), pick("refit", False)
        chain_warm = frame[
            (frame["strategy"] == "warm")
            & frame["chain"]
            & frame["note"].eq("")
            & frame["day"].between(c - every + 1, c)
        ]
        warm_n, refit_n = pick("warm", True), pick("refit", True)
        stale_n = pick("stale", True)
        table.append(
            {
                "day": int(c),
                "history rows": f"{int(scratch.history_rows):,}",
                "scratch s": round(scratch.wall_s, 1),
                "warm s": round(warm1.wall_s, 2),
                "warm s, chain mean": round(chain_warm["wall_s"].mean(), 2),
                "refit s": round(refit1.wall_s, 2),
                "scratch / warm": f"{scratch.wall_s / warm1.wall_s:.0f}x",
                "MAE scratch": round(scratch.mae, 3),
                "warm (1 incr.)": gap(warm1.mae, scratch.mae),
                f"warm ({every} incr.)": gap(warm_n.mae, scratch.mae),
                "refit (1)": gap(refit1.mae, scratch.mae),
                f"refit ({every})": gap(refit_n.mae, scratch.mae),
                f"stale ({every} days old)": gap(stale_n.mae, scratch.mae),
            }
        )
    return pd.DataFrame(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (< 2 min)")
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--rows-per-day", type=int, default=100_000)
    parser.add_argument("--increment-rounds", type=int, default=DEFAULTS.increment_rounds)
    parser.add_argument(
        "--no-scale-rounds",
        action="store_true",
        help="every warm increment adds --increment-rounds (stateful.scale_rounds = false)",
    )
    parser.add_argument("--replay", type=float, default=DEFAULTS.replay)
    parser.add_argument("--scratch-every", type=int, default=DEFAULTS.scratch_every)
    parser.add_argument(
        "--checkpoints",
        default="30,90,180",
        help="days of the generated stream to compare at (comma separated); the last day with "
        "a next day to score on is always one",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    if args.quick:
        args.days, args.rows_per_day = 40, 5_000
    args.out.mkdir(parents=True, exist_ok=True)
    every, rounds = args.scratch_every, args.increment_rounds
    stateful = StatefulSpec(
        increment_rounds=rounds,
        scratch_every=every,
        scale_rounds=not args.no_scale_rounds,
        replay=args.replay,
    )
    started = time.perf_counter()

    bike_all = bike_days()
    bike = Stream(
        "bike",
        bike_all[:130] if args.quick else bike_all,
        BIKE_NUMERIC + BIKE_CATEGORICAL,
        BIKE_CATEGORICAL,
        "cnt",
    )
    rows: list[Row] = []
    for cadence in (1, 7):
        rows += lineage_replay(bike, BIKE_FIRST_DAYS, BIKE_HORIZON, cadence, every, stateful)
    bike_s = time.perf_counter() - started
    print(f"bike replay done in {bike_s:.0f} s", flush=True)

    synth = Stream(
        "synthetic",
        synthetic_days(args.days, args.rows_per_day),
        SYNTH_NUMERIC + SYNTH_CATEGORICAL,
        SYNTH_CATEGORICAL,
        "y",
    )
    wanted = [int(d) for d in args.checkpoints.split(",") if d.strip()]
    checkpoints = sorted({d for d in wanted if every <= d < args.days - 2} | {args.days - 2})
    rows += checkpoint_replay(synth, checkpoints, every, stateful, progress=True)
    elapsed = time.perf_counter() - started

    frame = pd.DataFrame([asdict(r) for r in rows])
    frame.to_csv(args.out / "warm_vs_scratch.csv", index=False)
    bike_table = lineage_summary(frame[frame["stream"] == "bike"])
    synth_frame = frame[frame["stream"] == "synthetic"]
    synth_table = checkpoint_summary(synth_frame, every)
    refusal = frame.loc[frame["note"] != "", "note"]  # the first: the reason
    last = synth_table.iloc[-1]
    last_scratch = synth_frame[synth_frame["strategy"] == "scratch"].iloc[-1]
    ratio = float(str(last["scratch / warm"]).rstrip("x"))
    gaps = [last["warm (1 incr.)"], last[f"warm ({every} incr.)"]]
    within = all(g != "n/a" and float(g.rstrip("%")) <= 1.0 for g in gaps)
    text = "\n".join(
        [
            "# Warm start vs refit vs scratch (LightGBM)",
            "",
            f"Command: `python bench/warm_vs_scratch.py {' '.join(argv or sys.argv[1:])}` "
            f"({elapsed / 60:.1f} min on this machine, Bike Sharing part {bike_s / 60:.1f} min). "
            f"Every fit uses num_threads=2; scratch = {SCRATCH_ROUNDS} rounds on the whole "
            f"history; warm = {warm_words(stateful)}, continuing the "
            "previous increment; refit = the previous model's trees, leaf values refitted on "
            f"the increment's rows; the lineage retrains from scratch every {every} increments "
            "(`[stateful]` defaults). Times are the wall seconds of `fit`.",
            "",
            f"## Bike Sharing, replayed day by day ({len(bike.days)} days, 24 rows a day), "
            f"MAE on the next {BIKE_HORIZON} days",
            "",
            "A run every day (a nightly stateful run) or every 7 days (a weekly one); its "
            "increment is the rows since its champion's cutoff. A refused run leaves the "
            "champion serving and its rows go to the next run. Mean MAE over every cutoff of "
            "the model serving then; a lineage's scratch days count with the scratch model.",
            "",
            markdown(bike_table),
            "",
            *([f"Why warm start was refused: {refusal.iloc[0]}", ""] if not refusal.empty else []),
            f"## Generated stream: {args.days} days x {args.rows_per_day:,} rows, "
            "MAE on the next day",
            "",
            "Gaps are relative to the scratch retrain at the same cutoff (positive: worse).",
            "",
            markdown(synth_table),
            "",
            f"At {int(last_scratch.history_rows):,} rows of history: scratch / warm = "
            f"{ratio:.0f}x (target >= 20x: {'met' if ratio >= 20 else 'NOT met'}); warm MAE vs "
            f"scratch {gaps[0]} after one increment, {gaps[1]} after {every} "
            f"(target within +1%: {'met' if within else 'NOT met'}).",
        ]
    )
    (args.out / "warm_vs_scratch.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
