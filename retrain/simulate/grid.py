"""Policy search: every combination of spec settings (a grid) replayed with every policy.

A grid axis is a dotted spec key and its values (``windows.train=30D,60D,90D``); the grid is the
product of its axes. Every point is the spec with those keys set; points that share the feature
spec and the source share one :class:`ReplayData` (the feature cache is read once). The runs of
all points form one :class:`Simulation`, so the Pareto front and the choice span the whole grid,
and the chosen run's point is the spec diff to apply.

>>> axes = parse_grid(["windows.train=30D,60D", "gate.tolerance=0.0,0.01"])
>>> [dict(p) for p in grid_points(axes)][1]
{'windows.train': '30D', 'gate.tolerance': 0.01}
"""

from __future__ import annotations

import hashlib
import itertools
import json
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from retrain.config import ModelSpec
from retrain.errors import SimulationError
from retrain.simulate.history import ReplayData, first_step
from retrain.simulate.policies import Policy
from retrain.simulate.replay import ProgressCallback, Simulation, simulate

Point = tuple[tuple[str, Any], ...]


def parse_value(raw: str) -> Any:
    """A value as TOML reads it (numbers, booleans, lists, quoted strings), else the string."""
    try:
        return tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        return raw.strip()


@dataclass(frozen=True)
class GridAxis:
    key: str
    values: tuple[Any, ...]


def parse_grid(items: Sequence[str]) -> tuple[GridAxis, ...]:
    """``--grid key=v1,v2,...`` options as axes (a key listed once)."""
    axes: list[GridAxis] = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        values = tuple(parse_value(v) for v in raw.split(",") if v.strip())
        if not sep or not key or not values:
            raise SimulationError(
                f"--grid {item!r} is not key=value,value,...: write e.g. "
                "--grid windows.train=30D,60D,90D"
            )
        if any(a.key == key for a in axes):
            raise SimulationError(f"--grid {key} given twice: list all its values in one --grid")
        axes.append(GridAxis(key, values))
    return tuple(axes)


def grid_points(axes: Sequence[GridAxis]) -> list[Point]:
    """Every combination of the axes' values (one empty point without axes)."""
    return [
        tuple(zip((a.key for a in axes), combo, strict=True))
        for combo in itertools.product(*(a.values for a in axes))
    ]


def point_id(point: Point) -> str:
    """A short stable name of a grid point (its runs' directory under the checkpoints)."""
    blob = json.dumps([list(kv) for kv in point], default=str).encode()
    return "point-" + hashlib.sha256(blob).hexdigest()[:12] if point else "base"


def simulate_grid(
    spec_at: Callable[[Point], ModelSpec],
    policies_for: Callable[[ModelSpec], Sequence[Policy]],
    load: Callable[[ModelSpec], ReplayData],
    axes: Sequence[GridAxis],
    progress: ProgressCallback | None = None,
    notes: Sequence[str] = (),
    jobs: int = 1,
    checkpoints: Path | None = None,
    resume: bool = False,
) -> Simulation:
    """Replay every policy at every grid point; one Simulation holds every run (labelled with
    its point). ``spec_at(point)`` builds and validates the spec of a point."""
    points = grid_points(axes)
    specs = [(point, spec_at(point)) for point in points]
    data: dict[str, ReplayData] = {}

    def key_of(spec: ModelSpec) -> str:
        # the windows and gate settings do not change the features: one replay data per
        # feature spec and source
        return spec.feature_spec_hash() + spec.source.model_dump_json()

    for _, spec in specs:
        if key_of(spec) not in data:
            data[key_of(spec)] = load(spec)
    # every point scores the same partitions (else a shorter window would also be scored on
    # days the others cannot score, and the metrics would not compare): from the latest first
    # step of the grid's windows
    scored_from = (
        max(
            data[key_of(spec)].partitions[first_step(data[key_of(spec)], spec)].start
            for _, spec in specs
        )
        if axes
        else None
    )
    runs = []
    first: Simulation | None = None
    for point, spec in specs:
        sim = simulate(
            spec,
            policies_for(spec),
            data[key_of(spec)],
            progress=_labelled(progress, point),
            jobs=jobs,
            checkpoints=(checkpoints / point_id(point)) if checkpoints is not None else None,
            resume=resume,
            scored_from=scored_from,
        )
        first = first or sim
        runs += [replace(run, point=point) for run in sim.runs]
    assert first is not None
    extra = (
        [
            f"grid: {' x '.join(f'{a.key} in {list(a.values)}' for a in axes)}; every point "
            f"scored on the same partitions, from {first.first_step}"
        ]
        if axes
        else []
    )
    computed = sum(d.computed for d in data.values())
    cached = sum(d.cached for d in data.values())
    return replace(
        first,
        runs=tuple(runs),
        notes=(*notes, *extra),
        features_computed=computed,
        features_cached=cached,
    )


def _labelled(progress: ProgressCallback | None, point: Point) -> ProgressCallback | None:
    if progress is None or not point:
        return progress
    label = ", ".join(f"{k}={v}" for k, v in point)
    return lambda name, done, total: progress(f"{name} [{label}]", done, total)


def spec_diff(base: ModelSpec, point: Mapping[str, Any] | Point) -> dict[str, tuple[Any, Any]]:
    """The keys of ``point`` whose value differs from ``base``: key -> (now, recommended)."""
    items = point.items() if isinstance(point, Mapping) else point
    dumped = base.model_dump(mode="json")
    out: dict[str, tuple[Any, Any]] = {}
    for key, value in items:
        node: Any = dumped
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node != value:
            out[key] = (node, value)
    return out
