"""Benchmark: how far ONE warm increment may move its champion (the design of stateful.scale_rounds
and stateful.replay, docs/modes.md#warm-increments-of-any-size).

At every ``step``-th cutoff of a stream: a champion from scratch on the training window, then
one increment of k = 1 and 7 days with each recipe (50 rounds or the rounds for the
increment's share of the window; no replay, 1x or 3x its rows replayed from the days before,
or a whole window), and a scratch fit on the slid window; all scored on the 7 days after the
increment. Printed: per k and recipe, cutoffs, refusals, how often it beat / lost to the
champion, the mean metric and its change relative to the champion's.

    python bench/warm_increment_choice.py stat 20 5  # generated stationary, every 5th cutoff
    python bench/warm_increment_choice.py bike 5     # Bike Sharing, min_data_in_leaf = 5
    python bench/warm_increment_choice.py drift 20   # the drift stream (retrain/demo/drift.toml)
"""

import glob
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from retrain.backtest import score
from retrain.errors import TrainingError
from retrain.trainers import LightGBMTrainer

DATA = Path(__file__).resolve().parents[1] / "retrain" / "demo" / "data"


def bike():
    f = pd.read_csv(str(DATA / "bike_sharing_hourly" / "hour.csv"))
    for c in ["weathersit", "weekday"]:
        f[c] = f[c].astype(str)
    days = [p.reset_index(drop=True) for _, p in f.groupby("dteday", sort=True)]
    feats = [
        "temp",
        "atemp",
        "hum",
        "windspeed",
        "hr",
        "holiday",
        "workingday",
        "season",
        "mnth",
        "weathersit",
        "weekday",
    ]
    return days, feats, ["weathersit", "weekday"], "cnt", "regression", "mae", 90, 300


def drift():
    f = pd.concat(
        [pd.read_parquet(p) for p in sorted(glob.glob(str(DATA / "drift_stream" / "*.parquet")))]
    )
    f["day"] = f["ts"].dt.floor("D")
    days = [p.reset_index(drop=True) for _, p in f.groupby("day", sort=True)]
    return (
        days,
        ["x0", "x1", "x2", "x3", "x4", "x5", "channel"],
        ["channel"],
        "y",
        "binary",
        "accuracy",
        60,
        200,
    )


def stationary(n_days=200, rows=200, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _d in range(n_days):
        x = rng.normal(size=(rows, 4))
        y = (
            2 * x[:, 0]
            + np.sin(2 * x[:, 1])
            + x[:, 2] * (x[:, 3] > 0)
            + rng.normal(scale=1.0, size=rows)
        )
        fr = pd.DataFrame(x, columns=["a", "b", "c", "d"])
        fr["y"] = y
        out.append(fr)
    return out, ["a", "b", "c", "d"], [], "y", "regression", "mae", 60, 300


def xy(days, a, b, feats, label):
    f = pd.concat(days[a:b], ignore_index=True)
    return f[feats], f[label].to_numpy(dtype="float64")


def run(stream, leaf, ks=(1, 7), step=12, horizon=7):
    days, feats, cats, label, task, metric, W, R = stream
    params = {"learning_rate": 0.05, "num_leaves": 31, "min_data_in_leaf": leaf}
    sign = -1 if metric == "accuracy" else 1
    res = {}
    for c in range(W, len(days) - max(ks) - horizon, step):
        X, y = xy(days, c - W, c, feats, label)
        champ = LightGBMTrainer(
            task=task, params=params, num_boost_round=R, categorical=cats, random_state=7
        ).fit(X, y)
        for k in ks:
            Xe, ye = xy(days, c + k, c + k + horizon, feats, label)

            def sc(m, Xe=Xe, ye=ye):
                return score(metric, ye, m.predict(Xe))

            base = sc(champ)
            _Xn, yn = xy(days, c, c + k, feats, label)
            n_new = len(yn)
            variants = {}
            full = 50
            scaled = max(1, min(50, math.ceil(R * n_new / len(y))))
            for name, rounds, ratio in [
                ("warm50", full, 0),
                ("scaled", scaled, 0),
                ("warm50+r1", full, 1),
                ("warm50+r3", full, 3),
                ("scaled+r1", scaled, 1),
                ("scaled+r3", scaled, 3),
                ("warm50+rW", full, None),
                ("scaled+rW", scaled, None),
            ]:
                if ratio is None:
                    start = c + k - W
                else:
                    need = ratio * n_new
                    start = c
                    got = 0
                    while got < need and start > c - W:
                        start -= 1
                        got += len(days[start])
                Xr, yr = xy(days, start, c + k, feats, label)
                m = LightGBMTrainer(
                    task=task,
                    params=params,
                    num_boost_round=rounds,
                    categorical=cats,
                    random_state=7,
                    strategy="warm",
                    init_model=champ,
                )
                try:
                    m.fit(Xr, yr)
                    v = sc(m)
                    refused = 0
                except TrainingError:
                    v = base
                    refused = 1
                variants[name] = (v, refused)
            Xs, ys = xy(days, c + k - W, c + k, feats, label)
            s = LightGBMTrainer(
                task=task, params=params, num_boost_round=R, categorical=cats, random_state=7
            ).fit(Xs, ys)
            variants["scratch"] = (sc(s), 0)
            for name, (v, r) in variants.items():
                d = res.setdefault((k, name), [0, 0, 0, 0, 0.0, 0.0])
                d[0] += 1
                d[1] += r
                d[2] += int(sign * (v - base) < -1e-12)  # better than champion
                d[3] += int(sign * (v - base) > 1e-12)  # worse
                d[4] += v
                d[5] += base
    print(f"leaf={leaf}")
    print("k name n refused better worse mean_metric mean_champion rel")
    for (k, name), (n, r, b, w, v, base) in sorted(res.items()):
        print(f"{k} {name:11s} {n} {r} {b} {w} {v / n:.4f} {base / n:.4f} {(v - base) / base:+.2%}")


if __name__ == "__main__":
    which = sys.argv[1]
    leaf = int(sys.argv[2])
    st = {"bike": bike, "drift": drift, "stat": stationary}[which]()
    t = time.time()
    run(st, leaf, step=int(sys.argv[3]) if len(sys.argv) > 3 else 12)
    print(f"{time.time() - t:.0f}s")
