"""The retraining-policy simulator for the recommendation family (implicit ALS).

Same replay as :mod:`retrain.simulate` (the :class:`~retrain.simulate.History` view, the
policies, the accounting and the report), on an interaction table ``user, item, weight, ts``
split into time partitions. At each step the champion recommends the top k items to the users
active in the next partition and is scored on it with :func:`retrain.ranking.evaluate_ranking`
(NDCG@k over those users, items seen before the partition filtered); then the policy decides.
``scheduled`` policies recompute ALS on the whole visible history; ``stateful`` ones ask the
real planner :func:`retrain.stateful.plan_training` and fold new interactions into the champion
(``ALSTrainer`` strategy ``foldin``, with every user's full history) with a full recompute every
``scratch_every`` increments; the ``popularity`` policy is the baseline every ranking backtest
scores. The ranking gate is not wired into the promotion policy yet: every ALS candidate is
promoted (the report says so).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retrain.config import StatefulSpec
from retrain.errors import SimulationError
from retrain.ingest import Partition, fingerprint
from retrain.ranking import evaluate_ranking, relevant_items
from retrain.simulate import (
    Decision,
    History,
    Never,
    Periodic,
    Policy,
    PolicyRun,
    PolicyState,
    ProgressCallback,
    ReplayData,
    SimChampion,
    Simulation,
    StepRecord,
    TrainingRecord,
    _Timer,
)
from retrain.stateful import ChampionState, plan_training
from retrain.trainers import ALSTrainer, PopularityRecommender

DAY = pd.Timedelta(days=1)
ALS_POLICY_NAMES = ("never", "monthly", "weekly", "daily", "stateful", "popularity")
MOVIELENS_COLUMNS = {"userId": "user", "movieId": "item", "rating": "weight", "timestamp": "ts"}


@dataclass(frozen=True)
class RankingSettings:
    """How the ALS replay trains and scores (ALS parameters as in the fold-in benchmark)."""

    freq: str = "D"
    k: int = 10
    factors: int = 64
    iterations: int = 15
    regularization: float = 0.05
    alpha: float = 1.0
    popularity_window: str = "180D"
    scratch_every: int = 30
    min_rating: float | None = None
    seed: int = 42

    def trainer(self, strategy: str = "recompute", init: ALSTrainer | None = None) -> ALSTrainer:
        return ALSTrainer(
            factors=self.factors,
            iterations=self.iterations,
            regularization=self.regularization,
            alpha=self.alpha,
            random_state=self.seed,
            min_rating=self.min_rating,
            strategy=strategy,
            init_model=init,
            popularity_window=self.popularity_window,
            duplicates="last",
        )


def read_interactions(path: Path) -> pd.DataFrame:
    """An interaction table from a CSV file: ``user, item, weight, ts`` or MovieLens's
    ``userId, movieId, rating, timestamp`` (Unix seconds)."""
    path = Path(path)
    if path.is_dir():
        path = path / "ratings.csv"
    if not path.is_file():
        raise SimulationError(
            f"{path} does not exist: pass a ratings CSV (e.g. MovieLens ratings.csv) with --data"
        )
    frame = pd.read_csv(path).rename(columns=MOVIELENS_COLUMNS)
    missing = [c for c in ("user", "item", "weight", "ts") if c not in frame.columns]
    if missing:
        raise SimulationError(
            f"{path} lacks column(s) {missing}: it needs user, item, weight, ts (or MovieLens's "
            "userId, movieId, rating, timestamp)"
        )
    if pd.api.types.is_numeric_dtype(frame["ts"]):
        frame["ts"] = pd.to_datetime(frame["ts"], unit="s")
    else:
        frame["ts"] = pd.to_datetime(frame["ts"])
    return frame[["user", "item", "weight", "ts"]].sort_values("ts", kind="stable")


def interaction_replay(frame: pd.DataFrame, freq: str, end: str | None = None) -> ReplayData:
    """Time partitions of an interaction table, in the replay's form (no feature cache: the
    interactions are the model's input as they are)."""
    if end is not None:
        frame = frame[frame["ts"] < pd.Timestamp(end)]
    if frame.empty:
        raise SimulationError("no interaction to replay: check --data and --end")
    periods = frame["ts"].dt.to_period(freq)
    partitions, frames = [], []
    for period, part in frame.groupby(periods, sort=True):
        part = part.reset_index(drop=True)
        start, stop = period.start_time, (period + 1).start_time
        partitions.append(Partition(str(period), start, stop, fingerprint(part), part))
        frames.append(part)
    offsets = tuple(int(v) for v in np.cumsum([0, *(len(f) for f in frames)]))
    return ReplayData(tuple(partitions), pd.concat(frames, ignore_index=True), offsets, 0, 0)


def make_ranking_policy(name: str) -> Policy:
    fixed: dict[str, Policy] = {
        "never": Never(),
        "monthly": Periodic("monthly", pd.Timedelta(days=30)),
        "weekly": Periodic("weekly", pd.Timedelta(days=7)),
        "daily": Periodic("daily", DAY),
        "stateful": Periodic("stateful", DAY, mode="stateful"),
        "popularity": Periodic("popularity", DAY, mode="baseline"),
    }
    if name not in fixed:
        raise SimulationError(
            f"unknown ALS policy {name!r}: choose from {', '.join(ALS_POLICY_NAMES)}"
        )
    return fixed[name]


def parse_ranking_policies(text: str) -> tuple[Policy, ...]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or len(set(names)) != len(names):
        raise SimulationError(
            f"--policies must list distinct policies from {', '.join(ALS_POLICY_NAMES)}"
        )
    return tuple(make_ranking_policy(n) for n in names)


def _first_index(data: ReplayData, start: str | None) -> int:
    if start is None:
        raise SimulationError("the ALS replay needs --start: the first model trains before it")
    cutoff = pd.Timestamp(start)
    for i, part in enumerate(data.partitions):
        if part.start >= cutoff:
            if i == 0:
                break
            return i
    raise SimulationError(
        f"--start {start} leaves no data before it or none after it "
        f"(the data spans {data.partitions[0].start:%Y-%m-%d} to "
        f"{data.partitions[-1].end:%Y-%m-%d})"
    )


class _RankingReplayer:
    def __init__(self, policy: Policy, settings: RankingSettings) -> None:
        self.policy = policy
        self.settings = settings
        self.champion: SimChampion | None = None
        self.state = PolicyState(None, None)
        self.trainings: list[TrainingRecord] = []

    def train(self, history: History, decision: Decision) -> str:
        at = history.end
        interactions = history.frame(history.start, at)
        strategy, reason, increments = "recompute", decision.reason, 0
        if decision.mode == "baseline":
            strategy = "popularity"
        elif decision.mode == "stateful" and self.champion is not None:
            plan = plan_training(
                "stateful",
                StatefulSpec(scratch_every=self.settings.scratch_every),
                ChampionState(str(self.champion.version), self.champion.increments, at, (), ()),
                (),
                (),
            )
            strategy = "foldin" if plan.strategy != "scratch" else "recompute"
            reason, increments = plan.reason, plan.increments
        with _Timer() as fit_time:
            model: Any
            if strategy == "popularity":
                model = PopularityRecommender(
                    self.settings.popularity_window, self.settings.min_rating
                ).fit(interactions)
            else:
                init = self.champion.model if strategy == "foldin" and self.champion else None
                model = self.settings.trainer(strategy, init).fit(interactions)
        version = len(self.trainings) + 1
        self.champion = SimChampion(
            version, model, strategy, history.start, at, "", None, increments
        )
        self.state = PolicyState(self.champion, at)
        self.trainings.append(
            TrainingRecord(
                self.policy.name,
                at,
                strategy,
                reason,
                history.start,
                at,
                len(interactions),
                fit_time.wall,
                fit_time.cpu,
                0.0,
                0.0,
                True,
                True,
                "promoted: the ranking gate is not wired into the promotion policy yet",
                version,
            )
        )
        return f"{strategy}, promoted"


def replay_ranking_policy(
    policy: Policy,
    data: ReplayData,
    settings: RankingSettings,
    start: str | None,
    progress: ProgressCallback | None = None,
) -> PolicyRun:
    """Prequential replay of one policy on interactions: score the next partition, then decide."""
    started = time.perf_counter()
    t0 = _first_index(data, start)
    replayer = _RankingReplayer(policy, settings)
    mode = "baseline" if isinstance(policy, Periodic) and policy.mode == "baseline" else ""
    replayer.train(data.history(t0), Decision(True, "first model", mode or "scheduled"))
    steps: list[StepRecord] = []
    total = len(data.partitions) - t0
    for t in range(t0, len(data.partitions)):
        champion = replayer.champion
        assert champion is not None
        part, upcoming = data.partitions[t], data.features(t)
        seen = data.history(t)
        past = seen.frame(seen.start, seen.end)
        # only the partition's users matter (their seen items, warm or cold): a smaller table
        mine = past[past["user"].isin(upcoming["user"].unique())]
        train = mine if len(mine) else past
        if relevant_items(train, upcoming, settings.min_rating).empty:
            users, ndcg = 0, math.nan  # nobody in this partition found an unseen item to like
        else:
            scores = evaluate_ranking(
                champion.model, train, upcoming, k=settings.k, min_rating=settings.min_rating
            ).segment("all")
            users, ndcg = scores.users, scores.ndcg
        history = data.history(t + 1)
        with _Timer() as decide_time:
            decision = policy.decide(history, replayer.state)
        text = replayer.train(history, decision) if decision.train else "keep"
        steps.append(
            StepRecord(
                policy.name,
                part.key,
                part.start,
                users,
                ndcg,
                champion.version,
                text,
                decide_time.wall,
                decide_time.cpu,
            )
        )
        if progress is not None:
            progress(policy.name, t - t0 + 1, total)
    scored = [s for s in steps if s.rows]
    weight = sum(s.rows for s in scored)
    overall = math.fsum(s.metric * s.rows for s in scored) / weight if weight else math.nan
    return PolicyRun(
        policy=policy.name,
        metric=f"ndcg@{settings.k}",
        overall=overall,
        mean_step=float(np.mean([s.metric for s in scored])) if scored else math.nan,
        steps=tuple(steps),
        trainings=tuple(replayer.trainings),
        wall_s=time.perf_counter() - started,
    )


def simulate_ranking(
    policies: Sequence[Policy],
    data: ReplayData,
    settings: RankingSettings,
    start: str | None,
    name: str = "als",
    progress: ProgressCallback | None = None,
    notes: Sequence[str] = (),
) -> Simulation:
    """Replay the interactions for every policy, one after the other."""
    if not policies:
        raise SimulationError("no policy to simulate: pass at least one")
    t0 = _first_index(data, start)
    runs = tuple(replay_ranking_policy(p, data, settings, start, progress) for p in policies)
    return Simulation(
        spec_name=name,
        metric=f"ndcg@{settings.k}",
        greater_is_better=True,
        first_step=data.partitions[t0].key,
        last_step=data.partitions[-1].key,
        partitions=len(data.partitions) - t0,
        features_computed=0,
        features_cached=0,
        runs=runs,
        notes=(
            "ALS family: the interactions are read as they are (no feature cache); every "
            "candidate is promoted (the ranking gate is not wired into promotion yet); step "
            "metric = NDCG over the users active in the partition, overall = weighted by users",
            *notes,
        ),
    )
