"""Policy search: every grid point replayed with every policy, the feature cache read once, the
Pareto front and the choice over the whole grid, the choice as a spec diff."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from retrain.config import ModelSpec, parse_spec
from retrain.errors import SimulationError
from retrain.simulate import Never, Periodic, ReplayData, candidates_of, load_replay, pareto_front
from retrain.simulate.grid import grid_points, parse_grid, simulate_grid, spec_diff
from tests.conftest import spec_dict


def test_parse_grid_reads_dotted_keys_and_typed_values() -> None:
    axes = parse_grid(["windows.holdout=1D, 7D", "gate.tolerance=0.0,0.02"])

    assert [(a.key, a.values) for a in axes] == [
        ("windows.holdout", ("1D", "7D")),
        ("gate.tolerance", (0.0, 0.02)),
    ]
    assert len(grid_points(axes)) == 4


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["windows.train"], "is not key=value,value"),
        (["windows.train="], "is not key=value,value"),
        (["windows.train=30D", "windows.train=60D"], "given twice"),
    ],
)
def test_parse_grid_rejects_bad_axes_naming_the_fix(items: list[str], message: str) -> None:
    with pytest.raises(SimulationError, match=message):
        parse_grid(items)


def test_every_point_is_replayed_with_every_policy_reading_the_features_once(
    tmp_path: Path, bike_dir: Path
) -> None:
    base = spec_dict(bike_dir, tmp_path / "state")
    loads: list[ModelSpec] = []

    def spec_at(point):
        data = spec_dict(bike_dir, tmp_path / "state", **dict(point))
        return parse_spec(data)

    def load(spec: ModelSpec) -> ReplayData:
        loads.append(spec)
        return load_replay(spec, end="2011-04-12")

    axes = parse_grid(["windows.holdout=3D,7D"])
    simulation = simulate_grid(
        spec_at,
        lambda spec: [Never(), Periodic("weekly", pd.Timedelta(days=7))],
        load,
        axes,
    )

    labels = [run.label for run in simulation.runs]
    assert labels == [
        "never [windows.holdout=3D]",
        "weekly [windows.holdout=3D]",
        "never [windows.holdout=7D]",
        "weekly [windows.holdout=7D]",
    ]
    assert len(loads) == 1  # the windows do not change the features: one replay data
    front = pareto_front(candidates_of(simulation), simulation.greater_is_better)
    assert set(front) <= set(labels)
    assert [row["policy"] for row in simulation.table()] == labels
    assert spec_diff(parse_spec(base), dict(simulation.runs[0].point)) == {
        "windows.holdout": ("7D", "3D")
    }


def test_points_with_different_windows_are_scored_on_the_same_partitions(
    tmp_path: Path, bike_dir: Path
) -> None:
    # a 14-day window could be scored a week earlier than a 21-day one; the grid scores both
    # from the later start, or their metrics would cover different days
    def spec_at(point):
        return parse_spec(spec_dict(bike_dir, tmp_path / "state", **dict(point)))

    simulation = simulate_grid(
        spec_at,
        lambda spec: [Never()],
        lambda spec: load_replay(spec, end="2011-04-05"),
        parse_grid(["windows.train=14D,21D"]),
    )

    short, long = simulation.runs
    assert simulation.first_step == "2011-03-29"  # 21 + 7 days after 2011-03-01
    assert [s.partition for s in short.steps] == [s.partition for s in long.steps]
    assert short.steps[0].partition == "2011-03-29" and len(short.steps) == 7
    # the short window's first model still trains on its own 14 days, at the common cutoff
    assert short.trainings[0].data_end == long.trainings[0].data_end
    assert short.trainings[0].data_start > long.trainings[0].data_start
    assert "scored on the same partitions, from 2011-03-29" in simulation.notes[-1]
