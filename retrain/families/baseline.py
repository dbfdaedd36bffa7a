"""The trivial baselines every backtest scores, as models of their own (DESIGN: baselines first).

Tabular families: the training window's mean (regression), majority class (binary, multiclass)
or positive rate / class priors (with a probability metric: logloss, multi_logloss), see
:func:`retrain.backtest.baseline_predictions`.
Ranking families: the most popular items of the recent past
(:class:`retrain.trainers.popularity.PopularityRecommender`). A family's ``baseline`` step
returns one of these, fitted on the training window.

The baseline is a model (``gate.promote_baseline``): it is saved, registered and served like
any version (``retrain.servable.ConstantModel`` / ``PopularityModel`` inside the MLflow
model), judged by the same gate (:func:`baseline_verdict`: the backtest with the baseline as
the candidate, against the champion, the refused candidate as the bar), and refitted on the
data up to the as-of before it is registered (:func:`fresh_baseline`). The flow and the
simulator take the decision with :func:`retrain.promotion.baseline_promotion`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from retrain import servable
from retrain.backtest import BacktestResult, GateSettings, backtest, baseline_predictions
from retrain.errors import TrainingError
from retrain.families.lineage import Tag
from retrain.families.spine import (
    Evaluated,
    Prepared,
    Trained,
    evidence_tables,
    serving_prepared,
)
from retrain.features import FeatureCache
from retrain.freshness import last_row
from retrain.ingest import TS
from retrain.stateful import TrainingPlan
from retrain.trainers.popularity import PopularityRecommender

if TYPE_CHECKING:
    from retrain.config import ModelSpec
    from retrain.families.protocol import Family

# the strategy tag (and the simulator's strategy) of a baseline version
STRATEGY = "baseline"


class BaselineModel:
    """Predicts the training labels' mean, majority class or positive rate.

    sklearn style: ``__init__`` stores, ``fit`` validates and learns ``y_train_`` and the one
    value it predicts, ``value_`` (multiclass: the majority class's code; what it predicts is
    ``row_``, one row of class probabilities, priors or one-hot, and it answers the class label
    of ``classes`` when served).

    >>> BaselineModel("regression").fit(pd.DataFrame(), np.array([1.0, 3.0])).predict(
    ...     pd.DataFrame(index=range(2)))
    array([2., 2.])
    >>> BaselineModel("binary", "auc").fit(pd.DataFrame(), np.array([1.0, 1.0, 0.0])).kind
    'majority'
    """

    y_train_: np.ndarray
    value_: float
    row_: np.ndarray
    # a trivial baseline: no increment continues from it
    is_baseline = True

    def __init__(
        self,
        task: str = "regression",
        metric: str | None = None,
        n_classes: int = 0,
        classes: tuple[Any, ...] = (),
    ) -> None:
        self.task = task
        self.metric = metric
        self.n_classes = n_classes
        self.classes = classes

    @property
    def kind(self) -> str:
        """What the value is: ``mean``, ``majority``, ``positive_rate`` or (multiclass with a
        probability metric) ``class_priors``."""
        if self.task == "multiclass":
            return "class_priors" if self.metric == "multi_logloss" else "majority"
        if self.task != "binary":
            return "mean"
        return "positive_rate" if self.metric == "logloss" else "majority"

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> BaselineModel:
        y = np.asarray(y, dtype="float64")
        if y.size == 0:
            raise TrainingError("the baseline needs at least one training row")
        if self.task == "multiclass" and self.classes and len(self.classes) != self.n_classes:
            raise TrainingError(
                f"a multiclass baseline of {self.n_classes} classes was given "
                f"{len(self.classes)} class labels: pass the spec's class_labels"
            )
        self.y_train_ = y
        first = baseline_predictions(self.task, y, 1, self.metric, self.n_classes)[0]
        self.row_ = np.atleast_1d(np.asarray(first, dtype="float64"))
        # multiclass: the most frequent class code (what the model predicts is the matrix)
        self.value_ = float(np.argmax(first)) if self.task == "multiclass" else float(first)
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        if not hasattr(self, "value_"):
            raise TrainingError("this BaselineModel is not fitted yet: call fit(X, y) first")
        if self.task == "multiclass":  # one row of class probabilities (priors or one-hot)
            return np.tile(self.row_, (len(X), 1))
        return np.full(len(X), self.value_, dtype="float64")

    def non_default_params(self) -> dict[str, Any]:
        return {"baseline": self.kind}

    def save(self, directory: Path | str) -> Path:
        """The value and what it is (JSON): what ``servable.ConstantModel`` serves."""
        if not hasattr(self, "value_"):
            raise TrainingError("this BaselineModel is not fitted yet: nothing to save")
        if self.task == "multiclass" and len(self.classes) != self.row_.size:
            raise TrainingError(
                "a multiclass baseline needs its class labels to be saved (it answers the "
                "class as the training data wrote it): fit it with classes=spec.classes"
            )
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta: dict[str, Any] = {
            "kind": "constant",
            "baseline": self.kind,
            "task": self.task,
            "metric": self.metric,
            "value": self.value_,
            "rows": int(self.y_train_.size),
        }
        if self.task == "multiclass":  # what ConstantModel answers: the class, or the row
            meta["probabilities"] = self.row_.tolist()
            meta["classes"] = list(self.classes)
        (directory / servable.BASELINE_FILE).write_text(json.dumps(meta, indent=2))
        return directory

    @classmethod
    def load(cls, directory: Path | str) -> BaselineModel:
        served = servable.ConstantModel.load(directory)
        meta = json.loads((Path(directory) / servable.BASELINE_FILE).read_text())
        classes = tuple(meta.get("classes", ()))
        model = cls(meta["task"], meta["metric"], len(classes), classes)
        model.value_ = served.value
        model.row_ = np.asarray(meta.get("probabilities", [served.value]), dtype="float64")
        model.y_train_ = np.full(int(meta.get("rows", 1)), served.value)
        return model


def popularity(
    interactions: pd.DataFrame, window: str, min_rating: float | None, ranked: Any = None
) -> PopularityRecommender:
    """The ranking baseline fitted on a ``user, item, weight, ts`` table (``ranked``: a model
    fitted on this very table, whose item map and popularity order the baseline reuses when
    they are its own: :meth:`PopularityRecommender.shares_ranking`)."""
    return PopularityRecommender(window, min_rating).fit(interactions, ranked)


def load_baseline(directory: Path) -> BaselineModel | PopularityRecommender:
    """The baseline saved in ``directory`` (by ``BaselineModel.save`` or
    ``PopularityRecommender.save``), as the family steps take it."""
    meta = json.loads((directory / servable.BASELINE_FILE).read_text())
    if meta.get("kind") == "popularity":
        return PopularityRecommender.load(directory)
    return BaselineModel.load(directory)


def is_baseline(model: Any) -> bool:
    """The model is a trivial baseline (nothing to warm-start or fold in from)."""
    return bool(getattr(model, "is_baseline", False))


def baseline_kind(model: Any) -> str:
    return "popularity" if isinstance(model, PopularityRecommender) else str(model.kind)


def _as_baseline(reason: str) -> str:
    return reason.replace("candidate", "baseline")


def baseline_verdict(
    settings: GateSettings,
    candidate_pred: np.ndarray,
    baseline_pred: np.ndarray,
    refresh: bool = False,
    **holdout: Any,
) -> BacktestResult:
    """The gate with the baseline as the candidate: the same backtest (champion comparison,
    paired bootstrap, windows lost, slices) on the same rows, the refused candidate taking the
    baseline's place as the bar to beat. ``settings`` and ``holdout``: the gate's settings and
    the other keyword arguments of :func:`retrain.backtest.backtest`, as the family's evaluate
    passed them. In the result,
    ``candidate`` and ``baseline`` are both the baseline's metric (the version is the
    baseline); the refused candidate's is in the first reason.

    ``refresh``: the champion is itself a trivial baseline, so the fresh one is the same recipe
    on newer data (the argument of ``gate.refit``), and the comparison on the holdout would be
    unfair to it: the baseline judged here trained before the holdout, a refitted champion up
    to its own as-of. The verdict then passes without the champion comparison (the family
    asks only for a refused candidate): production never serves an older baseline than the
    one refitted on current data. The champion's metric is still in the result.

    No champion: the verdict passes whenever the baseline's metric is defined (a refused
    candidate leaves nothing serving; the baseline serves rather than nothing).
    """
    # the bar is the refused candidate's point estimate (gate.significant_baseline asks a
    # candidate for evidence over the trivial model, not the trivial model over a candidate;
    # gate.prefer_fresh still asks it, as before)
    verdict = backtest(
        replace(settings, significant_baseline="never"),
        candidate_pred=baseline_pred,
        baseline_pred=candidate_pred,
        **holdout,
    )
    first, *rest = verdict.reasons
    cand, base = verdict.baseline, verdict.candidate
    if refresh and verdict.champion is not None:
        rest = [
            f"champion v{verdict.champion_version} is a trivial baseline too: the same recipe "
            f"refitted on newer data replaces it (on this holdout {base:.4f} vs "
            f"{verdict.champion:.4f}; the baseline judged here trained before the holdout, "
            "the champion past its start)"
        ]
        verdict = replace(verdict, passed=True)
    if first.startswith("candidate beats the baseline"):
        first = f"the baseline beats the refused candidate ({base:.4f} vs {cand:.4f})"
    elif first.startswith("candidate does not beat"):
        first = f"the baseline does not beat the refused candidate ({base:.4f} vs {cand:.4f})"
    rest = [
        "no champion yet: the baseline only has to beat the candidate"
        if r.startswith("no champion yet")
        else _as_baseline(r)
        for r in rest
    ]
    if verdict.champion is None and not verdict.passed and verdict.candidate == verdict.candidate:
        # no champion: a refused candidate leaves nothing serving, and the fresh baseline (its
        # metric defined on the holdout) serves rather than nothing
        rest.append(
            f"no champion: the baseline serves rather than nothing (the refused candidate "
            f"scored {cand:.4f})"
        )
        verdict = replace(verdict, passed=True)
    return replace(
        verdict,
        baseline=verdict.candidate,
        reasons=(first, *rest),
        windows=tuple(replace(w, baseline=w.candidate) for w in verdict.windows),
    )


def fresh_baseline(
    spec: ModelSpec, family: Family, prepared: Prepared, reason: str = "baseline promoted"
) -> Trained:
    """The family's baseline fitted on the data up to the as-of (``gate.refit``: the training
    window that ends at the as-of; without it the training window before the holdout, the one
    the gate judged it on)."""
    window = serving_prepared(spec, prepared).train if spec.gate.refit else prepared.train
    cache = FeatureCache(spec.state.features, spec)
    cache.materialize(window.partitions)
    frame = cache.load(window.partitions)
    if not len(frame):
        raise TrainingError(f"the baseline's window {window.describe()} holds no row")
    model = family.baseline(spec, frame)
    y = frame[spec.label].to_numpy(dtype="float64")
    stats = {"rows": float(len(frame)), "label_mean": float(np.mean(y))}
    return Trained(
        model,
        window,
        len(frame),
        stats,
        TrainingPlan(STRATEGY, reason, None, 0),
        (window.version,),
        y,
        last_row(frame[TS]),
    )


def baseline_tags(model: Any, beaten_candidate: str | None) -> dict[str, str]:
    """The tags that say a version is the trivial baseline, which one, and whom it beat."""
    return {
        str(Tag.KIND): "baseline",
        str(Tag.BASELINE): baseline_kind(model),
        str(Tag.BEATEN_CANDIDATE): beaten_candidate or "none",
    }


def baseline_evaluated(evaluated: Evaluated) -> Evaluated:
    """The evidence of the baseline's own verdict: its gate result, and its predictions in the
    candidate's place."""
    if evaluated.baseline_result is None:
        raise TrainingError("the baseline was not judged: nothing to register")
    return replace(evaluated, result=evaluated.baseline_result, candidate=evaluated.baseline)


def write_baseline_evidence(
    directory: Path, spec: ModelSpec, prepared: Prepared, evaluated: Evaluated
) -> dict[str, Path]:
    """Tables, report and row samples of a baseline version (its verdict: ``evaluated``)."""
    from retrain.reports import window_plot

    result = evaluated.result
    out = evidence_tables(directory, spec, prepared, result)
    out["backtest_plot"] = window_plot(directory / "backtest.png", result, result.metric)
    (directory / "backtest.md").write_text(result.markdown())
    out["backtest_report"] = directory / "backtest.md"
    return out


def baseline_metrics(result: BacktestResult, trained: Trained) -> Mapping[str, float]:
    out = {
        f"backtest_{result.metric}": result.candidate,
        f"baseline_{result.metric}": result.baseline,
        "train_rows": float(trained.rows),
        "holdout_rows": float(result.rows),
    }
    if result.champion is not None:
        out[f"champion_{result.metric}"] = result.champion
    return out
