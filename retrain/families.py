"""Model families: the steps that differ between LightGBM and implicit ALS, behind one face.

The flows call ``family_of(spec)`` and use its steps; ingest, the feature cache, the ledger, the
gate decision, promotion and the registry are shared.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from retrain import pipeline, recommend
from retrain.config import ModelSpec
from retrain.features import Window
from retrain.pipeline import Champion, Evaluated, Prepared, Trained
from retrain.stateful import TrainingPlan, plan_training


@dataclass(frozen=True)
class Family:
    name: str
    # mode, spec, champion -> how to train the next candidate
    plan: Callable[[str, ModelSpec, Champion | None], TrainingPlan]
    fit_candidate: Callable[[ModelSpec, Prepared, TrainingPlan, Champion | None], Trained]
    evaluate: Callable[[ModelSpec, Trained, Window, Champion | None], Evaluated]
    write_evidence: Callable[[Path, ModelSpec, Prepared, Trained, Evaluated], dict[str, Path]]
    # a few model inputs for the registered model's signature
    signature_sample: Callable[[ModelSpec, Prepared, Trained], pd.DataFrame]
    # training curves logged as step metrics
    curves: Callable[[Trained], Mapping[str, list[float]]]
    # the validated recipe fitted again on the data up to the as-of (gate.refit)
    refit: Callable[[ModelSpec, Prepared, Trained, Champion | None], Trained] = pipeline.refit
    # parameters of the registered model's predict, with their defaults
    predict_params: Callable[[ModelSpec], dict[str, Any]] = lambda spec: {}


def _lightgbm_plan(mode: str, spec: ModelSpec, champion: Champion | None) -> TrainingPlan:
    return plan_training(
        mode,
        spec.stateful,
        champion.state() if champion else None,
        spec.features.columns,
        spec.features.categorical,
    )


def _lightgbm_sample(spec: ModelSpec, prepared: Prepared, trained: Trained) -> pd.DataFrame:
    return pipeline.sample_rows(spec, prepared.holdout, n=5)[list(spec.features.columns)]


def _lightgbm_curves(trained: Trained) -> Mapping[str, list[float]]:
    train = trained.model.evals_result_.get("train", {})
    return {f"train_{name}": list(values) for name, values in train.items()}


LIGHTGBM = Family(
    name="lightgbm",
    plan=_lightgbm_plan,
    fit_candidate=pipeline.fit_candidate,
    evaluate=pipeline.evaluate,
    write_evidence=pipeline.write_evidence,
    signature_sample=_lightgbm_sample,
    curves=_lightgbm_curves,
)

ALS = Family(
    name="als",
    plan=recommend.plan,
    fit_candidate=recommend.fit_candidate,
    evaluate=recommend.evaluate,
    write_evidence=recommend.write_evidence,
    signature_sample=lambda spec, prepared, trained: recommend.signature_sample(spec, trained),
    curves=lambda trained: {},
    refit=recommend.refit,
    predict_params=lambda spec: {"k": spec.als.k},
)

FAMILIES = {family.name: family for family in (LIGHTGBM, ALS)}


def family_of(spec: ModelSpec) -> Family:
    return FAMILIES[spec.family]
