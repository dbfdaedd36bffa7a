"""The replay carries out production's own steps: the family's plan, fit_candidate and evaluate,
the monitor's signal code; a refused step is recorded, an unexpected one named and resumable."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

import retrain.families.lightgbm as lightgbm_family
import retrain.monitor_check as monitor_check
import retrain.simulate.replay as replay_module
from retrain.config import ModelSpec, parse_spec
from retrain.errors import SimulationError
from retrain.simulate import (
    Continual,
    Decision,
    History,
    Never,
    Periodic,
    PolicyState,
    ReplayData,
    load_replay,
    replay_policy,
    simulate,
)
from tests.conftest import spec_dict

DAY = pd.Timedelta(days=1)
# 24 hourly rows a day: one day cannot grow a tree (a split needs 2 x min_data_in_leaf = 40 rows)
# without the champion's rows replayed with it
DAILY_WARM = Periodic("stateful-daily", DAY, mode="stateful")
NO_REPLAY = {"stateful.replay": 0.0}


def _spec(tmp_path: Path, bike_dir: Path, **overrides: object) -> ModelSpec:
    return parse_spec(spec_dict(bike_dir, tmp_path / "state", **overrides))


def _replay(spec: ModelSpec) -> ReplayData:
    return load_replay(spec, end="2011-04-12")  # 42 days: 14 replayed steps


def test_a_replay_whose_daily_warm_increments_are_refused_completes_and_records_them(
    tmp_path, bike_dir
):
    spec = _spec(tmp_path, bike_dir, **NO_REPLAY)

    run = replay_policy(spec, DAILY_WARM, _replay(spec))

    failed = [t for t in run.trainings if t.strategy == "failed"]
    assert failed, "a one-day warm increment should be refused"
    assert all("fit failed: warm start added no trees" in t.reason for t in failed)
    assert len(run.steps) == 14
    # the champion kept serving through the refusals, and the next increment covered the rows
    after = run.trainings[run.trainings.index(failed[0]) + 1]
    assert after.strategy == "warm"
    assert after.data_end - after.data_start >= 2 * DAY


def test_the_replay_falls_back_to_scratch_as_a_flow_does_with_compare_with_scratch(
    tmp_path, bike_dir
):
    spec = _spec(tmp_path, bike_dir, **{"stateful.compare_with_scratch": True, **NO_REPLAY})

    run = replay_policy(spec, DAILY_WARM, _replay(spec))

    assert not [t for t in run.trainings if t.strategy == "failed"]
    fallbacks = [t for t in run.trainings if "warm start added no trees" in t.reason]
    assert fallbacks and all(t.strategy == "scratch" for t in fallbacks)


def test_daily_warm_increments_with_the_champions_rows_replayed_are_never_refused(
    tmp_path, bike_dir
):
    spec = _spec(tmp_path, bike_dir)

    run = replay_policy(spec, DAILY_WARM, _replay(spec))

    assert not [t for t in run.trainings if t.strategy == "failed"]
    assert [t for t in run.trainings if t.strategy == "warm"]


def test_the_replay_trains_and_gates_through_the_family_steps_the_flow_uses(
    tmp_path, bike_dir, monkeypatch
):
    spec = _spec(tmp_path, bike_dir)
    calls: list[str] = []
    for step in ("plan", "fit_candidate", "evaluate"):
        original = getattr(lightgbm_family, step)

        def spy(*args, _original=original, _step=step, **kwargs):
            calls.append(_step)
            return _original(*args, **kwargs)

        monkeypatch.setattr(lightgbm_family, step, spy)

    run = replay_policy(spec, Periodic("weekly", 7 * DAY), _replay(spec))

    trainings = len(run.fits)
    assert trainings >= 2
    assert calls.count("fit_candidate") == trainings
    assert calls.count("evaluate") == trainings
    assert calls.count("plan") == trainings


def test_the_continual_policy_measures_with_the_monitor_signal_code(
    tmp_path, bike_dir, monkeypatch
):
    spec = _spec(tmp_path, bike_dir)
    checks: list[pd.Timestamp] = []
    original = monitor_check.compute_signals

    def spy(**kwargs):
        checks.append(kwargs["now"])
        return original(**kwargs)

    monkeypatch.setattr(monitor_check, "compute_signals", spy)

    run = replay_policy(spec, Continual(spec), _replay(spec))

    assert len(checks) == len(run.steps)


@dataclass(frozen=True)
class BreaksOnTheFifthStep:
    """A policy with a bug: its decision raises an unexpected error at one step."""

    name: str = "buggy"

    def decide(self, history: History, state: PolicyState) -> Decision:
        if len(history) == 33:
            raise KeyError("temp")
        return Decision(False, "keep")


def test_an_unexpected_error_names_policy_step_and_as_of_and_resume_keeps_finished_runs(
    tmp_path, bike_dir, monkeypatch
):
    spec = _spec(tmp_path, bike_dir)
    data = _replay(spec)
    runs = tmp_path / "runs"

    with pytest.raises(SimulationError) as error:
        simulate(spec, [Never(), BreaksOnTheFifthStep()], data, checkpoints=runs)

    message = str(error.value)
    assert "policy buggy: the decide step at as-of 2011-04-03 00:00:00 failed (KeyError" in message
    assert "--resume" in message
    assert (runs / "never.pkl").exists()

    replayed: list[str] = []
    original = replay_module.replay_policy

    def counting(spec, policy, data, progress=None, scored_from=None):
        replayed.append(policy.name)
        return original(spec, policy, data, progress, scored_from)

    monkeypatch.setattr(replay_module, "replay_policy", counting)
    simulation = simulate(
        spec, [Never(), Periodic("weekly", 7 * DAY)], data, checkpoints=runs, resume=True
    )

    assert replayed == ["weekly"]
    assert [r.policy for r in simulation.runs] == ["never", "weekly"]
