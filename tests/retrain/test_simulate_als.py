"""The simulator on the recommendation family: ALS recompute, fold-in and popularity replayed."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from retrain.errors import LookAheadError, SimulationError
from retrain.simulate_als import (
    RankingSettings,
    interaction_replay,
    parse_ranking_policies,
    read_interactions,
    replay_ranking_policy,
    simulate_ranking,
)

SETTINGS = RankingSettings(factors=8, iterations=5, scratch_every=3, popularity_window="14D")


@pytest.fixture(scope="module")
def interactions() -> pd.DataFrame:
    """40 days of ratings by 60 users of 80 items; each user prefers one quarter of the items."""
    rng = np.random.default_rng(0)
    rows = []
    for day in range(40):
        for _ in range(30):
            user = int(rng.integers(0, 60))
            group = user % 4 if rng.random() < 0.8 else int(rng.integers(0, 4))
            item = int(group * 20 + rng.integers(0, 20))
            second = int(rng.integers(86400))
            ts = pd.Timestamp("2020-01-01") + pd.Timedelta(days=day, seconds=second)
            rows.append((user, item, float(rng.integers(1, 6)), ts))
    return pd.DataFrame(rows, columns=["user", "item", "weight", "ts"])


def test_als_replay_scores_each_day_before_training_on_it(interactions: pd.DataFrame) -> None:
    data = interaction_replay(interactions, "D")
    policies = parse_ranking_policies("never,weekly,stateful,popularity")
    simulation = simulate_ranking(policies, data, SETTINGS, start="2020-01-21")
    assert simulation.partitions == 20 and simulation.metric == "ndcg@10"
    runs = {r.policy: r for r in simulation.runs}
    for run in simulation.runs:
        assert len(run.steps) == 20
        scored = [s.metric for s in run.steps if s.rows]
        assert scored and all(0.0 <= m <= 1.0 for m in scored)
        assert run.train_cpu_s == pytest.approx(math.fsum(t.cpu_s for t in run.trainings))
        for training in run.trainings:
            assert training.data_end is not None and training.data_end <= training.at
            # a model is first used on the partition that starts at its cutoff, never earlier
            used = [s for s in run.steps if s.champion_version == training.version]
            assert all(s.start >= training.at for s in used)
    assert runs["never"].retrains == 0
    assert runs["weekly"].retrains == 2  # days 7 and 14 of the 20 replayed
    strategies = [t.strategy for t in runs["stateful"].trainings]
    # the real stateful planner: fold-in increments, a recompute after scratch_every of them
    assert strategies[:5] == ["recompute", "foldin", "foldin", "foldin", "recompute"]
    assert {t.strategy for t in runs["popularity"].trainings} == {"popularity"}
    fold = [t for t in runs["stateful"].trainings if t.strategy == "foldin"]
    full = [t for t in runs["weekly"].trainings if t.strategy == "recompute"]
    assert np.median([t.fit_cpu_s for t in fold]) < np.median([t.fit_cpu_s for t in full])


def test_als_policies_cannot_read_the_partition_they_are_scored_on(
    interactions: pd.DataFrame,
) -> None:
    class Peek:
        name = "peek"

        def decide(self, history, state):  # type: ignore[no-untyped-def]
            return history.partition(len(history))

    data = interaction_replay(interactions, "D")
    with pytest.raises(LookAheadError, match="before the cutoff only"):
        replay_ranking_policy(Peek(), data, SETTINGS, start="2020-01-21")


def test_als_inputs_are_checked_with_the_fix(tmp_path: Path, interactions: pd.DataFrame) -> None:
    with pytest.raises(SimulationError, match="pass a ratings CSV"):
        read_interactions(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"userId": [1], "rating": [4.0]}).to_csv(bad, index=False)
    with pytest.raises(SimulationError, match=r"lacks column\(s\) \['item', 'ts'\]"):
        read_interactions(bad)
    movielens = tmp_path / "ratings.csv"
    pd.DataFrame(
        {"userId": [1, 2], "movieId": [10, 20], "rating": [4.0, 3.5], "timestamp": [0, 86400]}
    ).to_csv(movielens, index=False)
    frame = read_interactions(tmp_path)
    assert list(frame.columns) == ["user", "item", "weight", "ts"]
    assert frame["ts"].iloc[1] == pd.Timestamp("1970-01-02")
    with pytest.raises(SimulationError, match="unknown ALS policy 'continual'"):
        parse_ranking_policies("never,continual")
    data = interaction_replay(interactions, "D")
    with pytest.raises(SimulationError, match="needs --start"):
        simulate_ranking(parse_ranking_policies("never"), data, SETTINGS, start=None)
