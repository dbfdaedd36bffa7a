"""Retraining-policy simulator: "how often should we retrain?", answered from the user's history.

- ``history``: what a policy may see (:class:`History`, no look-ahead) and the replay's data;
- ``policies``: never, periodic cadences, stateful, baseline, continual (the monitor's signals);
- ``replay``: every policy's decisions carried out through the family's own steps
  (``family_of(spec)``: plan, fit_candidate, evaluate) and the promotion decision, with the
  compute of every fit, gate and decision; finished runs kept on disk for ``resume``;
- ``choice``: the Pareto front and the cheapest policy within a tolerance of the best;
- ``report``: the HTML report with its charts and tables (imports matplotlib: import it
  where a report is written).
"""

from retrain.simulate.choice import (
    Candidate,
    PolicyChoice,
    candidates_of,
    choose_policy,
    pareto_front,
)
from retrain.simulate.history import History, ReplayData, first_step, load_replay
from retrain.simulate.policies import (
    POLICY_NAMES,
    Continual,
    Decision,
    Never,
    Periodic,
    Policy,
    PolicyState,
    SimChampion,
    make_policy,
    parse_policies,
)
from retrain.simulate.replay import (
    SIMULATOR,
    Checkpoints,
    PolicyRun,
    ProgressCallback,
    Simulation,
    StepRecord,
    TrainingRecord,
    metric_name,
    replay_key,
    replay_policy,
    simulate,
)

__all__ = [
    "POLICY_NAMES",
    "SIMULATOR",
    "Candidate",
    "Checkpoints",
    "Continual",
    "Decision",
    "History",
    "Never",
    "Periodic",
    "Policy",
    "PolicyChoice",
    "PolicyRun",
    "PolicyState",
    "ProgressCallback",
    "ReplayData",
    "SimChampion",
    "Simulation",
    "StepRecord",
    "TrainingRecord",
    "candidates_of",
    "choose_policy",
    "first_step",
    "load_replay",
    "make_policy",
    "metric_name",
    "pareto_front",
    "parse_policies",
    "replay_key",
    "replay_policy",
    "simulate",
]
