"""The simulator on the recommendation family (implicit ALS), driven by an ALS spec: the same
replay, History view, feature cache, family steps and gate as a retrain."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retrain.config import ModelSpec, parse_spec
from retrain.errors import LookAheadError
from retrain.simulate import (
    Decision,
    History,
    PolicyState,
    ReplayData,
    Simulation,
    load_replay,
    parse_policies,
    replay_policy,
    simulate,
)
from tests.conftest import als_spec_dict, taste_stream

POLICIES = "never,daily,stateful,continual,baseline"


@pytest.fixture(scope="module")
def als_spec(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    """40 days of planted-taste ratings (daily partitions), 20-day train, 4-day holdout; the
    continual policy retrains on volume (400 new ratings) or age (8 days), 3 days apart at
    least."""
    root = tmp_path_factory.mktemp("als-sim")
    path = root / "data" / "ratings.csv"
    path.parent.mkdir()
    taste_stream().to_csv(path, index=False)
    return parse_spec(
        als_spec_dict(
            path,
            root / "state",
            **{
                "stateful.scratch_every": 3,
                "monitor.any": ["volume", "age"],
                "monitor.min_new_rows": 400,
                "monitor.max_age": "8D",
                "monitor.cooldown": "3D",
            },
        )
    )


@pytest.fixture(scope="module")
def als_replay(als_spec: ModelSpec) -> ReplayData:
    return load_replay(als_spec)


@pytest.fixture(scope="module")
def als_simulation(als_spec: ModelSpec, als_replay: ReplayData) -> Simulation:
    return simulate(als_spec, parse_policies(POLICIES, als_spec), als_replay)


@dataclass(frozen=True)
class PeekNextPartition:
    name: str = "peek"

    def decide(self, history: History, state: PolicyState) -> Decision:
        history.partition(len(history))
        return Decision(False, "peeked")


@dataclass(frozen=True)
class Recorder:
    """Retrains (stateful: fold-in) every second step and records the cutoff it was shown."""

    seen: list[pd.Timestamp] = field(default_factory=list)
    name: str = "recorder"

    def decide(self, history: History, state: PolicyState) -> Decision:
        self.seen.append(history.end)
        return Decision(len(self.seen) % 2 == 0, "every second step", "stateful")


def test_an_als_policy_that_peeks_at_the_next_partition_fails(
    als_spec: ModelSpec, als_replay: ReplayData
) -> None:
    with pytest.raises(LookAheadError, match="before the cutoff only"):
        replay_policy(als_spec, PeekNextPartition(), als_replay)


def test_an_als_policy_decides_only_after_the_partition_was_scored(
    als_spec: ModelSpec, als_replay: ReplayData
) -> None:
    policy = Recorder()
    run = replay_policy(als_spec, policy, als_replay)
    assert run.metric == "ndcg@5"
    assert policy.seen == [s.start + pd.Timedelta(days=1) for s in run.steps]
    assert {t.strategy for t in run.fits[1:]} <= {"foldin", "scratch"}
    assert "foldin" in {t.strategy for t in run.fits}
    for training in run.fits:
        # trained on the training window, which ends before the holdout and the cutoff
        assert training.data_end is not None and training.data_end < training.at
        later = [s for s in run.steps if s.start >= training.at]
        if later and training.promoted:
            assert later[0].champion_version == training.version
        # a model is never scored on a partition before its cutoff
        used = [s for s in run.steps if s.champion_version == training.version]
        assert all(s.start >= training.at for s in used)


def test_als_compute_accounting_adds_up(als_simulation: Simulation) -> None:
    for run in als_simulation.runs:
        assert run.train_cpu_s == pytest.approx(
            math.fsum(t.fit_cpu_s + t.gate_cpu_s for t in run.trainings), abs=1e-12
        )
        assert run.train_wall_s == pytest.approx(
            math.fsum(t.fit_wall_s + t.gate_wall_s for t in run.trainings), abs=1e-12
        )
        assert run.total_cpu_s == pytest.approx(run.train_cpu_s + run.decide_cpu_s)
        decide_wall = math.fsum(s.decide_wall_s for s in run.steps)
        assert run.train_wall_s + decide_wall <= run.wall_s
        assert run.retrains == len(run.fits) - 1
        for t in run.fits:
            assert t.fit_wall_s > 0 and t.rows > 0
            if t.strategy != "baseline":
                assert t.gate_wall_s > 0  # the ranking backtest ran
    runs = {r.policy: r for r in als_simulation.runs}
    assert runs["never"].retrains == 0
    assert runs["daily"].retrains == len(runs["daily"].steps)
    assert runs["daily"].train_cpu_s > runs["never"].train_cpu_s
    # users are weighted: the overall metric is the users-weighted mean of the steps'
    steps = [s for s in runs["daily"].steps if s.rows]
    weighted = math.fsum(s.metric * s.rows for s in steps) / sum(s.rows for s in steps)
    assert runs["daily"].overall == pytest.approx(weighted)


def test_continual_als_retrains_on_age_and_volume_through_the_trigger(
    als_simulation: Simulation,
) -> None:
    continual = next(r for r in als_simulation.runs if r.policy == "continual")
    assert continual.retrains > 0
    for t in continual.fits[1:]:
        assert "volume" in t.reason or "age" in t.reason, t.reason
    # the trigger's cooldown holds: at least 3 days between two retrains
    gaps = pd.Series([t.at for t in continual.fits[1:]]).diff().dropna()
    assert (gaps >= pd.Timedelta(days=3)).all()
    assert continual.retrains < len(continual.steps)


def test_the_gate_refuses_als_candidates_worse_than_the_champion(
    als_simulation: Simulation,
) -> None:
    daily = next(r for r in als_simulation.runs if r.policy == "daily")
    assert daily.promotions < daily.retrains
    refused = [t for t in daily.fits[1:] if not t.promoted]
    assert refused
    for t in refused:
        assert not t.gate_passed
        assert "gate failed" in t.verdict and "the champion stays" in t.verdict
    for t in daily.fits:
        assert t.promoted == t.gate_passed
    # a refused candidate never serves: the steps after it keep the champion's version
    promoted = {t.version for t in daily.fits if t.promoted}
    assert {s.champion_version for s in daily.steps} <= promoted


def test_the_popularity_baseline_is_a_policy_of_the_als_replay(
    als_simulation: Simulation,
) -> None:
    runs = {r.policy: r for r in als_simulation.runs}
    baseline = runs["baseline"]
    assert {t.strategy for t in baseline.fits} == {"baseline"}
    # on planted tastes every ALS policy beats the most popular items
    assert all(runs[p].overall > baseline.overall for p in ("never", "daily", "stateful"))


def test_stateful_als_fold_ins_read_only_the_partitions_since_the_champion(
    als_simulation: Simulation,
) -> None:
    run = next(r for r in als_simulation.runs if r.policy == "stateful")
    trainings = list(run.fits)
    folds = [(before, t) for before, t in itertools.pairwise(trainings) if t.strategy == "foldin"]

    assert folds, [t.strategy for t in trainings]
    for before, fold in folds:
        # a week of partitions, not the lineage's weeks of history
        assert 0 < fold.rows < before.rows, (before, fold)


def test_a_second_als_simulation_computes_no_feature(
    als_spec: ModelSpec, als_replay: ReplayData, als_simulation: Simulation
) -> None:
    cache = Path(als_spec.state.features)
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*.parquet")}
    assert len(before) == len(als_replay.partitions)
    again = load_replay(als_spec)
    assert (again.computed, again.cached) == (0, len(als_replay.partitions))
    second = simulate(als_spec, parse_policies("never,stateful", als_spec), again)
    assert (second.features_computed, second.features_cached) == (0, len(again.partitions))
    # the family's steps read the cache too, and wrote nothing new into it
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*.parquet")} == before


def test_the_popular_items_serve_when_no_first_model_passes_the_gate(
    tmp_path: Path,
) -> None:
    # everyone likes the same ten films (ids 900-909): the popular items are the best answer,
    # and an ALS whose factors a huge regularisation crushes ranks at random
    rng = np.random.default_rng(0)
    rows = []
    for day in range(40):
        for user in rng.choice(90, 30, replace=False):
            liked = rng.random() < 0.8
            item = int(rng.integers(900, 910)) if liked else int(rng.integers(100, 200))
            when = pd.Timestamp("2024-01-01") + pd.Timedelta(days=day, hours=int(user) % 24)
            rows.append((int(user), item, 5.0 if liked else 3.0, int(when.timestamp())))
    path = tmp_path / "ratings.csv"
    pd.DataFrame(rows, columns=["userId", "movieId", "rating", "timestamp"]).drop_duplicates(
        ["userId", "movieId"]
    ).to_csv(path, index=False)
    spec = parse_spec(als_spec_dict(path, tmp_path / "state", **{"als.regularization": 1e6}))
    data = load_replay(spec)
    never = replay_policy(spec, parse_policies("never", spec)[0], data)
    first = never.trainings[0]
    assert not first.gate_passed and not first.promoted
    assert "does not beat the trivial baseline" in first.verdict
    assert {s.champion_version for s in never.steps} == {0}
    assert (never.retrains, never.promotions) == (0, 0)
    # version 0 is the popularity baseline of the first training window: it scores as the
    # baseline policy does before that one refits
    baseline = replay_policy(spec, parse_policies("baseline", spec)[0], data)
    assert never.steps[0].metric == pytest.approx(baseline.steps[0].metric)
    assert never.steps[0].rows == baseline.steps[0].rows > 0
