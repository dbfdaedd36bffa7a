"""The oracle's loss matrix is built through the family steps, as the replay trains: its first
row is the simulator's ``never`` policy, and no scratch policy beats the oracle's best."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from retrain.config import ModelSpec, parse_spec
from retrain.demo import synth
from retrain.errors import SimulationError
from retrain.features import FeatureCache
from retrain.oracle_losses import LossMatrix, build_loss_matrix, oracle_of
from retrain.simulate import ReplayData, load_replay, make_policy, simulate


def _spec(source: Path, state: Path, **extra: Any) -> ModelSpec:
    data: dict[str, Any] = {
        "name": "drift-test",
        "task": "binary",
        "label": "y",
        "metric": "accuracy",
        "source": {"kind": "files", "path": str(source)},
        "timestamp": {"column": "ts"},
        "features": {
            "numeric": list(synth.FEATURES),
            "categorical": ["channel"],
            "leakage": ["concept"],
        },
        "windows": {"train": "6D", "holdout": "2D"},
        "gate": {"bootstrap_samples": 100, "require_approval": False},
        "lightgbm": {"num_boost_round": 15, "params": {"num_leaves": 7}},
        "state": {"dir": str(state)},
        **extra,
    }
    return parse_spec(data)


# 26 days, concept A then abruptly B at day 13: retraining pays
SCHEDULE = (synth.Segment(0, 13, "A"), synth.Segment(13, 26, "B"))


@pytest.fixture(scope="module")
def drifting(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelSpec, ReplayData]:
    root = tmp_path_factory.mktemp("drift")
    synth.write_stream(root / "data", seed=1, days=26, rows_per_day=60, schedule=SCHEDULE)
    spec = _spec(root / "data", root / "state")
    return spec, load_replay(spec)


@pytest.fixture(scope="module")
def full(drifting: tuple[ModelSpec, ReplayData]) -> LossMatrix:
    return build_loss_matrix(*drifting)


def test_the_first_row_is_the_never_policy_and_the_matrix_is_prequential(
    drifting: tuple[ModelSpec, ReplayData], full: LossMatrix
) -> None:
    spec, data = drifting
    matrix = full
    n = len(matrix.partitions)
    assert matrix.partitions[0] == "2024-01-09"  # after 6 + 2 days of windows
    assert matrix.loss.shape == (n, n) and matrix.starts == tuple(range(n))
    assert np.isnan(matrix.loss[np.tril_indices(n, -1)]).all()
    assert (matrix.loss[np.triu_indices(n)] >= 0).all()
    assert (matrix.cpu_s > 0).all() and matrix.total_rows == 60 * n
    simulation = simulate(spec, (make_policy("never", spec), make_policy("daily", spec)), data)
    result = oracle_of(matrix, simulation)
    never, daily = simulation.runs
    assert never.fits[0].promoted  # the first model passed the gate: the same model
    assert result.never == pytest.approx(never.overall)
    got = {c.policy: c for c in result.captures}
    assert got["never"].gain_share == pytest.approx(0.0)
    # daily trains only models the oracle may choose: it cannot beat the best schedule
    assert result.best >= daily.overall
    assert 0.0 < got["daily"].gain_share <= 1.0
    assert result.best > result.never + 0.1  # the drift at day 13 is worth a retrain


def test_every_n_restricts_the_oracle_to_every_nth_step(
    drifting: tuple[ModelSpec, ReplayData], full: LossMatrix
) -> None:
    spec, data = drifting
    sparse = build_loss_matrix(spec, data, every=5)
    assert sparse.starts == tuple(range(0, len(full.partitions), 5))
    np.testing.assert_allclose(sparse.loss[1], full.loss[5])
    assert oracle_of(sparse).best <= oracle_of(full).best


def test_the_oracle_scores_from_a_later_first_partition_when_told(
    drifting: tuple[ModelSpec, ReplayData], full: LossMatrix
) -> None:
    # a grid's simulation may start later than the base spec's windows allow
    spec, data = drifting
    later = build_loss_matrix(spec, data, every=4, scored_from=pd.Timestamp("2024-01-15"))
    assert later.partitions[0] == "2024-01-15"
    assert later.partitions == full.partitions[6:]


def test_the_oracle_reads_each_cached_partition_from_disk_once(
    drifting: tuple[ModelSpec, ReplayData], monkeypatch: pytest.MonkeyPatch
) -> None:
    # as the replay does: its fits cost what a policy's fits cost, not a re-read per fit
    spec, data = drifting
    reads: list[str] = []
    real = FeatureCache.read_table

    def counted(self: FeatureCache, part: Any) -> Any:
        reads.append(part.key)
        return real(self, part)

    monkeypatch.setattr(FeatureCache, "read_table", counted)
    matrix = build_loss_matrix(spec, data, every=2)
    assert len(matrix.starts) > 5  # many fits over overlapping windows
    assert reads and len(reads) == len(set(reads))


def test_a_ranking_spec_and_a_bad_every_are_refused_by_name(
    drifting: tuple[ModelSpec, ReplayData],
) -> None:
    spec, data = drifting
    with pytest.raises(SimulationError, match="--oracle-every must be at least 1, got 0"):
        build_loss_matrix(spec, data, every=0)
    ranking = spec.model_copy(update={"task": "ranking"})
    with pytest.raises(SimulationError, match=r"scores tabular models .* not 'ranking'"):
        build_loss_matrix(ranking, data)
