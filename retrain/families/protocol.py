"""The one face every model family shows: the flows, the monitor and the simulator call these.

A family is a module under ``retrain.families`` with an object satisfying :class:`Family`
(checked by mypy where it is assigned to a ``Family``-typed name), registered by name in
``retrain.families``. The shared types (``Prepared``, ``Champion``, ``Trained``, ``Evaluated``)
live in ``retrain.families.spine``; a family never imports another family.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from retrain.config import ModelSpec
from retrain.families.spine import Champion, Evaluated, Prepared, Scored, Trained
from retrain.features import Window
from retrain.servable import Inputs
from retrain.stateful import TrainingPlan


class Family(Protocol):
    """The steps that differ between model families; everything else is shared."""

    @property
    def name(self) -> str:
        """The spec's ``family`` value."""
        ...

    def metric_name(self, spec: ModelSpec) -> str:
        """How the family's metric is named in tables (e.g. ``rmse`` or ``ndcg@10``)."""
        ...

    def plan(self, mode: str, spec: ModelSpec, champion: Champion | None) -> TrainingPlan:
        """How to train the next candidate (pure decision: scratch, warm, refit, fold-in)."""
        ...

    def fit(
        self, spec: ModelSpec, prepared: Prepared, plan: TrainingPlan, champion: Champion | None
    ) -> Trained:
        """Train exactly what the plan asks for."""
        ...

    def fit_candidate(
        self, spec: ModelSpec, prepared: Prepared, plan: TrainingPlan, champion: Champion | None
    ) -> Trained:
        """Train the candidate a retrain registers: the plan, with the family's fallbacks
        (``stateful.compare_with_scratch``: a full retrain when the increment loses or cannot
        be trained)."""
        ...

    def refit(
        self, spec: ModelSpec, prepared: Prepared, validated: Trained, champion: Champion | None
    ) -> Trained:
        """The validated recipe fitted again on the data up to the as-of (``gate.refit``):
        scratch on the window ending at the as-of, an increment through the holdout."""
        ...

    def rebuild(
        self, spec: ModelSpec, tags: Mapping[str, str], registered: Any, parent: Any
    ) -> Trained:
        """Refit a registered version from the feature cache with its own parameters (the
        ``retrain rebuild`` check: an equal model proves the lineage)."""
        ...

    def evaluate(
        self, spec: ModelSpec, trained: Trained, holdout: Window, champion: Champion | None
    ) -> Evaluated:
        """The backtest: candidate, champion and baseline on the same holdout, through the gate."""
        ...

    def write_evidence(
        self,
        directory: Path,
        spec: ModelSpec,
        prepared: Prepared,
        trained: Trained,
        evaluated: Evaluated,
    ) -> dict[str, Path]:
        """Plots, tables and row samples of one retrain, written to ``directory``."""
        ...

    def baseline(self, spec: ModelSpec, frame: pd.DataFrame) -> Any:
        """The family's trivial model (a servable model of its own), fitted on the cached rows
        of a training window."""
        ...

    def signature_sample(
        self, spec: ModelSpec, prepared: Prepared, trained: Trained
    ) -> pd.DataFrame:
        """A few inputs of the servable model: its signature and input example."""
        ...

    def serving_inputs(self, spec: ModelSpec) -> Inputs:
        """The raw columns the servable model reads (the source's own), and how it derives its
        features from them (``retrain.servable``, bundled with every model version)."""
        ...

    def curves(self, trained: Trained) -> Mapping[str, list[float]]:
        """Training curves, logged as step metrics."""
        ...

    def predict_params(self, spec: ModelSpec) -> dict[str, Any]:
        """Parameters of the servable model's predict, with their defaults."""
        ...

    def score(
        self, spec: ModelSpec, model: Any, rows: pd.DataFrame, before: pd.DataFrame
    ) -> Scored:
        """Score a serving model on cached rows it never saw (``before``: every row before
        them, for a family whose metric depends on what a user had already seen)."""
        ...

    def pooled(self, spec: ModelSpec, scored: Sequence[Scored]) -> float:
        """The metric over every row of several scored sets (not the mean of their metrics)."""
        ...

    def monitored_features(self, spec: ModelSpec) -> list[str]:
        """The columns the monitor's drift and score signals read (none: age and volume only)."""
        ...
