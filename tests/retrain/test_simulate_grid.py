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
