"""Benchmark: LightGBM warm start vs refit vs scratch retrain, as the history grows.

Two streams, replayed day by day with the project's own ``LightGBMTrainer``:

* Bike Sharing hourly (the bundled real data): after a first model on 60 days, every day a warm
  increment (``strategy="warm"``, 10 new trees on that day's rows, continuing the previous warm
  model), a refit (``strategy="refit"`` of the previous refit model on that day's rows) and, every
  ``--bike-scratch-every`` days, a scratch model on the WHOLE history. Each is scored (MAE) on the
  next 7 days.
* A generated stream of ``--days`` days x ``--rows-per-day`` rows (default 365 x 100,000): 8
  numeric features, one categorical, a target with a weekly and yearly season, a slow upward
  trend and noise. Warm increments every day; refit and scratch on the whole history at the
  checkpoints only (scratch on 36.5M rows takes minutes). Scored on the next day.

Times are wall (perf_counter) and CPU (process_time) seconds of ``fit``; every fit uses
``num_threads=2``. This is a benchmark, not a test: run it on a quiet machine and read the
ratios, which are measured in the same run.

    python bench/warm_vs_scratch.py            # full run (~20-30 min on 2 cores)
    python bench/warm_vs_scratch.py --quick    # smoke run (< 2 min)
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from retrain.backtest import score
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
PARAMS = {"learning_rate": 0.05, "num_leaves": 31, "num_threads": 2}
SCRATCH_ROUNDS = 200
INCREMENT_ROUNDS = 10


@dataclass(frozen=True)
class Row:
    stream: str
    day: int
    history_rows: int
    increment_rows: int
    strategy: str
    wall_s: float
    cpu_s: float
    mae: float


def timed_fit(trainer: LightGBMTrainer, X: pd.DataFrame, y: np.ndarray) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.fit(X, y)
    return time.perf_counter() - wall, time.process_time() - cpu


def trainer(
    categorical: list[str], strategy: str = "scratch", init=None, rounds: int = SCRATCH_ROUNDS
) -> LightGBMTrainer:
    return LightGBMTrainer(
        params=dict(PARAMS),
        num_boost_round=rounds,
        categorical=categorical,
        random_state=7,
        strategy=strategy,
        init_model=init,
    )


def replay(
    stream: str,
    days: list[pd.DataFrame],
    features: list[str],
    categorical: list[str],
    label: str,
    first_days: int,
    horizon: int,
    scratch_days: set[int],
    refit_days: set[int] | None,
    score_every_day: bool = True,
) -> list[Row]:
    """Warm every day; scratch (and refit, unless refit_days is None = every day) on given days.

    Without ``score_every_day`` the warm model is scored only on the scratch days (scoring a
    chain of thousands of trees every day would dominate the run time)."""
    rows: list[Row] = []
    history = pd.concat(days[:first_days], ignore_index=True)
    warm = trainer(categorical).fit(history[features], history[label].to_numpy())
    refit = warm
    n_history = len(history)
    for d in range(first_days, len(days) - horizon):
        today = days[d]
        n_history += len(today)
        future = pd.concat(days[d + 1 : d + 1 + horizon], ignore_index=True)
        Xf, yf = future[features], future[label].to_numpy()
        X, y = today[features], today[label].to_numpy()

        nxt = trainer(categorical, "warm", warm, INCREMENT_ROUNDS)
        wall, cpu = timed_fit(nxt, X, y)
        warm = nxt
        rows.append(
            Row(
                stream,
                d,
                n_history,
                len(today),
                "warm",
                wall,
                cpu,
                score("mae", yf, warm.predict(Xf)),
            )
        )
        if refit_days is None or d in refit_days:
            nxt = trainer(categorical, "refit", refit)
            wall, cpu = timed_fit(nxt, X, y)
            refit = nxt
            rows.append(
                Row(
                    stream,
                    d,
                    n_history,
                    len(today),
                    "refit",
                    wall,
                    cpu,
                    score("mae", yf, refit.predict(Xf)),
                )
            )
        if d in scratch_days:
            whole = pd.concat(days[: d + 1], ignore_index=True)
            fresh = trainer(categorical)
            wall, cpu = timed_fit(fresh, whole[features], whole[label].to_numpy())
            del whole
            rows.append(
                Row(
                    stream,
                    d,
                    n_history,
                    len(today),
                    "scratch",
                    wall,
                    cpu,
                    score("mae", yf, fresh.predict(Xf)),
                )
            )
    return rows


def bike_days() -> list[pd.DataFrame]:
    frame = pd.read_csv(BIKE)
    for col in BIKE_CATEGORICAL:
        frame[col] = frame[col].astype(str)
    return [part.reset_index(drop=True) for _, part in frame.groupby("dteday", sort=True)]


def synthetic_days(n_days: int, rows_per_day: int, seed: int = 0) -> list[pd.DataFrame]:
    """A seeded stream: seasons, a slow trend and noise; recent data matters."""
    rng = np.random.default_rng(seed)
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
        frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(8)])
        frame["cat"] = cat.astype(str)
        frame["y"] = y.astype("float32")
        out.append(frame)
    return out


def summary(rows: list[Row], stream: str, days: list[int]) -> pd.DataFrame:
    frame = pd.DataFrame([asdict(r) for r in rows if r.stream == stream])
    table = []
    for day in days:
        at = frame[frame["day"] == day]
        if at.empty or "scratch" not in set(at["strategy"]):
            continue
        by = {r.strategy: r for r in at.itertuples()}
        warm, scratch = by["warm"], by["scratch"]
        refit = by.get("refit")
        table.append(
            {
                "day": day,
                "history rows": int(warm.history_rows),
                "warm s": round(warm.wall_s, 3),
                "refit s": round(refit.wall_s, 3) if refit else None,
                "scratch s": round(scratch.wall_s, 2),
                "scratch / warm": round(scratch.wall_s / warm.wall_s, 1),
                "MAE warm": round(warm.mae, 3),
                "MAE refit": round(refit.mae, 3) if refit else None,
                "MAE scratch": round(scratch.mae, 3),
                "warm vs scratch": f"{(warm.mae - scratch.mae) / scratch.mae:+.1%}",
            }
        )
    return pd.DataFrame(table)


def markdown(frame: pd.DataFrame) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join("" if v is None else str(v) for v in row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (< 2 min)")
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--rows-per-day", type=int, default=100_000)
    parser.add_argument("--bike-scratch-every", type=int, default=30)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    if args.quick:
        args.days, args.rows_per_day = 40, 5_000
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    bike = bike_days()
    if args.quick:
        bike = bike[:120]
    bike_checkpoints = [d for d in (90, 180, 365, 540, 700) if d < len(bike) - 7] or [100]
    scratch_days = set(range(60, len(bike), args.bike_scratch_every)) | set(bike_checkpoints)
    rows = replay(
        "bike",
        bike,
        BIKE_NUMERIC + BIKE_CATEGORICAL,
        BIKE_CATEGORICAL,
        "cnt",
        60,
        7,
        scratch_days,
        None,
    )
    print(f"bike replay done in {time.perf_counter() - started:.0f} s", flush=True)

    synth = synthetic_days(args.days, args.rows_per_day)
    checkpoints = [d for d in (7, 30, 90, 180, args.days - 2) if d < args.days - 1]
    features = [f"x{i}" for i in range(8)] + ["cat"]
    rows += replay(
        "synthetic", synth, features, ["cat"], "y", 1, 1, set(checkpoints), set(checkpoints)
    )
    elapsed = time.perf_counter() - started

    pd.DataFrame([asdict(r) for r in rows]).to_csv(args.out / "warm_vs_scratch.csv", index=False)
    bike_table = summary(rows, "bike", bike_checkpoints)
    synth_table = summary(rows, "synthetic", checkpoints)
    bike_all = pd.DataFrame([asdict(r) for r in rows if r.stream == "bike"])
    mean_mae = bike_all.groupby("strategy")["mae"].mean().round(2).to_dict()
    last = synth_table.iloc[-1]
    ratio_ok = last["scratch / warm"] >= 20
    gap = (last["MAE warm"] - last["MAE scratch"]) / last["MAE scratch"]
    text = "\n".join(
        [
            "# Warm start vs refit vs scratch (LightGBM)",
            "",
            f"Command: `python bench/warm_vs_scratch.py{' --quick' if args.quick else ''}` "
            f"({elapsed / 60:.1f} min on this machine). Every fit uses num_threads=2; "
            f"scratch = {SCRATCH_ROUNDS} rounds on the whole history, "
            f"warm = {INCREMENT_ROUNDS} new trees per day on that day's rows, chained from the "
            "previous warm model (no reset), "
            "refit = leaf values refitted on that day's rows.",
            "",
            f"## Bike Sharing, replayed day by day ({len(bike)} days), MAE on the next 7 days",
            "",
            markdown(bike_table),
            "",
            "Mean MAE over every replayed day: "
            + ", ".join(f"{k} {v}" for k, v in sorted(mean_mae.items()))
            + f" (scratch only every {args.bike_scratch_every} days and at the checkpoints).",
            "",
            f"## Generated stream: {args.days} days x {args.rows_per_day:,} rows, "
            "MAE on the next day",
            "",
            markdown(synth_table),
            "",
            f"At {int(last['history rows']):,} rows of history: scratch / warm = "
            f"{last['scratch / warm']}x (target >= 20x: {'met' if ratio_ok else 'NOT met'}); "
            f"warm MAE vs scratch {gap:+.1%} "
            f"(target within +1%: {'met' if gap <= 0.01 else 'NOT met'}).",
        ]
    )
    (args.out / "warm_vs_scratch.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
