"""The gradient-boosting family (LightGBM): its steps of a retrain, behind ``Family``.

From scratch on the training window; warm start continues boosting from the champion on the
partitions after its training end (``increment_window``: a partition straddling the training
end belongs to the increment, whole); ``refit`` keeps the champion's trees and learns new leaf
values. With ``stateful.compare_with_scratch`` a scratch model is fitted too and wins when the
increment loses to it (or could not grow a tree). The backtest scores candidate, champion and the
trivial baseline on the same holdout rows.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retrain import servable
from retrain.backtest import (
    FoldEvidence,
    GateSettings,
    backtest,
    baseline_predictions,
    fold_evidence,
    score,
)
from retrain.config import ModelSpec
from retrain.errors import BacktestError, DataError, NoTreesAddedError, TrainingError
from retrain.families.baseline import BaselineModel, baseline_verdict, is_baseline
from retrain.families.lineage import Lineage
from retrain.families.protocol import Family
from retrain.families.spine import (
    Champion,
    Evaluated,
    Prepared,
    Scored,
    Trained,
    champion_comparison,
    evidence_tables,
    increment_window,
    interleaved_partitions,
    partition_ids,
    same_recipe,
    serving_prepared,
    shift_served,
    source_rows,
    split_windows,
    with_replay,
)
from retrain.features import FeatureCache, Window, make_window
from retrain.freshness import last_row
from retrain.ingest import TS, ingest
from retrain.promotion import baseline_asked
from retrain.stateful import (
    STATEFUL_MODES,
    TrainingPlan,
    increment_rounds,
    plan_training,
    scratch,
)
from retrain.trainers import LightGBMTrainer

logger = logging.getLogger(__name__)


def _xy(spec: ModelSpec, frame: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    return frame[list(spec.features.columns)], frame[spec.label].to_numpy(dtype="float64")


def label_stats(task: str, y: np.ndarray, classes: Sequence[str] = ()) -> dict[str, float]:
    """The label balance of a training window (``classes``: a multiclass spec's class labels,
    whose codes y holds)."""
    if task == "multiclass":
        counts = np.bincount(np.asarray(y, dtype="int64"), minlength=len(classes))
        share = counts / max(int(counts.sum()), 1)
        return {f"share_{name}": float(share[i]) for i, name in enumerate(classes)}
    if task == "binary":
        return {"positive_rate": float(np.mean(y)), "positives": float(np.sum(y))}
    return {
        "mean": float(np.mean(y)),
        "std": float(np.std(y)),
        "min": float(np.min(y)),
        "max": float(np.max(y)),
    }


def make_trainer(
    spec: ModelSpec,
    plan: TrainingPlan | None = None,
    init_model: Any = None,
    rounds: int | None = None,
) -> LightGBMTrainer:
    """The trainer a plan asks for; ``rounds``: a warm increment's boosting rounds
    (:func:`retrain.stateful.increment_rounds`; None: ``stateful.increment_rounds``)."""
    strategy = plan.strategy if plan is not None else "scratch"
    return LightGBMTrainer(
        task=spec.task,
        params=dict(spec.lightgbm.params),
        num_boost_round=(
            spec.lightgbm.num_boost_round
            if strategy == "scratch"
            else rounds or spec.stateful.increment_rounds
        ),
        categorical=spec.features.categorical,
        random_state=spec.seed,
        strategy=strategy,
        init_model=init_model if strategy != "scratch" else None,
        refit_decay_rate=spec.stateful.refit_decay_rate,
        classes=spec.classes or (),
    )


# what fit() adds to a warm plan's reason (the served refit of a validated plan says its own)
HOW = re.compile(r": \d+ round\(s\) on [^;]*")


def warm_increment(
    spec: ModelSpec, prepared: Prepared, increment: Window, since: pd.Timestamp
) -> tuple[Window, int, str]:
    """What a warm increment learns from and for how long: the increment's partitions with the
    champion's newest ones replayed in front (``stateful.replay`` times the increment's rows:
    :func:`retrain.families.spine.with_replay`), the boosting rounds for the increment's share
    of the training window (:func:`retrain.stateful.increment_rounds`), and both in words."""
    new_rows, window_rows = increment.rows, prepared.train.rows
    rounds = increment_rounds(spec.stateful, spec.lightgbm.num_boost_round, new_rows, window_rows)
    wanted = math.ceil(spec.stateful.replay * new_rows)
    window = with_replay(spec, prepared, increment, since, wanted)
    replayed = window.rows - new_rows
    how = f"{rounds} round(s) on {new_rows} new row(s)"
    if spec.stateful.scale_rounds:
        how += f" ({new_rows / max(window_rows, 1):.1%} of the training window's {window_rows})"
    if replayed:
        how += f" and {replayed} replayed row(s) of the champion's newest partitions"
    return window, rounds, how


def fit(
    spec: ModelSpec,
    prepared: Prepared,
    plan: TrainingPlan | None = None,
    champion: Champion | None = None,
) -> Trained:
    """Train the candidate the plan asks for (features read from the cache)."""
    plan = plan or scratch("from scratch")
    lineage: tuple[str, ...]
    rounds: int | None = None
    if plan.strategy == "scratch":
        window, lineage = prepared.train, ()
    else:
        if champion is None or champion.train_end is None:
            raise TrainingError(f"a {plan.strategy} increment needs the champion's training end")
        window = increment_window(spec, prepared, champion.train_end)
        lineage = champion.data_versions
        if plan.strategy == "warm":
            window, rounds, how = warm_increment(spec, prepared, window, champion.train_end)
            plan = replace(plan, reason=f"{HOW.sub('', plan.reason)}: {how}")
    trainer = make_trainer(spec, plan, champion.model if champion else None, rounds)
    end: pd.Timestamp | None = None  # the dask path does not collect the rows: window end
    if spec.compute.engine == "dask":
        from retrain.compute import fit_on_dask

        model, y = fit_on_dask(spec, window, trainer)
    else:
        frame = FeatureCache(spec.state.features, spec).load(window.partitions)
        X, y = _xy(spec, frame)
        model = trainer.fit(X, y)
        end = last_row(frame[TS])
    return Trained(
        model,
        window,
        len(y),
        label_stats(spec.task, y, spec.class_labels),
        plan,
        (*lineage, window.version),
        y,
        end,
    )


def refit(
    spec: ModelSpec, prepared: Prepared, validated: Trained, champion: Champion | None
) -> Trained:
    """The validated recipe (its strategy, parameters and parent) fitted again on the data up
    to the as-of: the model that is registered and served when ``gate.refit`` is on."""
    parent = champion if validated.plan.strategy != "scratch" else None
    return fit(spec, serving_prepared(spec, prepared), validated.plan, parent)


def fit_candidate(
    spec: ModelSpec, prepared: Prepared, plan: TrainingPlan, champion: Champion | None
) -> Trained:
    """Fit as planned; with ``stateful.compare_with_scratch`` keep scratch if warm start lost
    (or could not grow a tree from the increment)."""
    if plan.strategy == "scratch" or not spec.stateful.compare_with_scratch:
        return fit(spec, prepared, plan, champion)
    try:
        trained = fit(spec, prepared, plan, champion)
    except NoTreesAddedError as error:
        reason = "warm start added no trees on the increment: full retrain instead"
        logger.info("%s (%s)", reason, error)
        return fit(spec, prepared, scratch(reason), None)
    rival = fit(spec, prepared, scratch("compared with the warm increment"), None)
    holdout = FeatureCache(spec.state.features, spec).load(prepared.holdout.partitions)
    X, y = _xy(spec, holdout)
    warm_score = score(spec.metric, y, trained.model.predict(X))
    scratch_score = score(spec.metric, y, rival.model.predict(X))
    allowed = spec.gate.tolerance * abs(scratch_score)
    gap = (scratch_score - warm_score) if spec.greater_is_better else (warm_score - scratch_score)
    if gap > allowed:
        reason = (
            f"{plan.strategy} increment lost to scratch on the holdout ({spec.metric} "
            f"{warm_score:.4f} vs {scratch_score:.4f}): full retrain instead"
        )
        logger.info(reason)
        return replace(rival, plan=scratch(reason))
    return replace(
        trained,
        plan=replace(
            plan,
            reason=f"{plan.reason}; beat scratch on the holdout ({warm_score:.4f} vs "
            f"{scratch_score:.4f})",
        ),
    )


def _score_both(
    model: Any, champion: Any, frame: pd.DataFrame, features: Sequence[str]
) -> tuple[np.ndarray, Any]:
    """The candidate's and the champion's scores of the rows of ``frame`` (its ``features``
    columns); one encoding for both when the two encode them the same way, as one float64
    matrix (the same scores as two ``predict`` calls)."""
    if isinstance(model, LightGBMTrainer) and (champion is None or model.same_encoding(champion)):
        encoded = model.encode_matrix(frame)  # reads the model's features only
        other = None if champion is None else champion.predict_matrix(encoded)
        return model.predict_matrix(encoded), other
    X = frame[list(features)]
    return model.predict(X), None if champion is None else champion.predict(X)


def _fold_rows(spec: ModelSpec, trained: Trained) -> tuple[pd.DataFrame, np.ndarray] | None:
    """The candidate's training rows and its own labels, for a fold (None: an increment, the
    dask engine whose rows are not collected in process, or labels that do not line up)."""
    if trained.plan.strategy != "scratch" or spec.compute.engine == "dask":
        return None
    frame = FeatureCache(spec.state.features, spec).load(trained.window.partitions)
    y = np.asarray(trained.y_train, dtype="float64")
    if len(frame) != y.size:
        return None
    return frame, y


def _fold_fit(
    spec: ModelSpec, frame: pd.DataFrame, y: np.ndarray, held: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The recipe fitted on the rows not ``held``: their labels, the held rows' labels and
    the fit's predictions of them."""
    X = frame[list(spec.features.columns)]
    model = make_trainer(spec).fit(X[~held], y[~held])
    return y[~held], y[held], model.predict(X[held])


def forward_fold(spec: ModelSpec, trained: Trained) -> FoldEvidence | None:
    """The forward fold of ``gate.undecided = "forward_fold"`` for a scratch candidate: its
    recipe fitted on its training window but the newest ``windows.holdout`` (with the
    candidate's own labels, ``trained.y_train``), scored on that newest part against the
    older part's trivial baseline (:func:`retrain.backtest.fold_evidence`). None when it
    cannot be built (see :func:`_fold_rows`, and a part without rows)."""
    rows = _fold_rows(spec, trained)
    if rows is None:
        return None
    frame, y = rows
    cut = trained.window.end - spec.windows.holdout_delta
    held = (pd.to_datetime(frame[TS]) >= cut).to_numpy()
    if held.all() or not held.any():
        return None
    y_fit, y_held, pred = _fold_fit(spec, frame, y, held)
    gate = spec.gate
    return fold_evidence(
        spec.metric, spec.task, y_fit, y_held, pred, gate.bootstrap_samples, spec.seed
    )


def interleaved_fold(spec: ModelSpec, trained: Trained) -> FoldEvidence | None:
    """The interleaved fold of ``gate.undecided = "interleaved_fold"`` for a scratch candidate:
    its recipe fitted on its training window without every k-th partition (counted back from
    the newest, about as many partitions as ``windows.holdout`` holds:
    :func:`retrain.families.spine.interleaved_partitions`), with the candidate's own labels,
    scored on those partitions against the fitted part's trivial baseline
    (:func:`retrain.backtest.fold_evidence`). The held-out partitions lie across the whole
    window, so a concept change inside the window (a gradual drift, a concept that comes
    back) is on both sides of the fold and does not fail a recipe that learns; labels with
    no signal still fail it. None when it cannot be built (see :func:`_fold_rows`, and a
    window of one partition)."""
    rows = _fold_rows(spec, trained)
    if rows is None:
        return None
    frame, y = rows
    chosen = interleaved_partitions(trained.window, spec.windows.holdout_delta)
    if chosen is None:
        return None
    every, held_parts = chosen
    ids = partition_ids(trained.window, frame[TS]) - 1  # 0-based partition of each row
    held = held_parts[np.clip(ids, 0, held_parts.size - 1)]
    if held.all() or not held.any():
        return None
    y_fit, y_held, pred = _fold_fit(spec, frame, y, held)
    gate = spec.gate
    return fold_evidence(
        spec.metric,
        spec.task,
        y_fit,
        y_held,
        pred,
        gate.bootstrap_samples,
        spec.seed,
        kind="interleaved",
        every=every,
    )


def own_fold(spec: ModelSpec, trained: Trained) -> FoldEvidence | None:
    """The fold ``gate.undecided`` names (None with ``"refuse"``: no fold is fitted)."""
    mode = spec.gate.undecided
    if mode == "interleaved_fold":
        return interleaved_fold(spec, trained)
    if mode == "forward_fold":
        return forward_fold(spec, trained)
    return None


def evaluate(
    spec: ModelSpec, trained: Trained, holdout: Window, champion: Champion | None
) -> Evaluated:
    """Backtest candidate, champion and baseline on the same holdout (the part of it after the
    champion's training end, or the champion's validated fit on all of it, when the champion
    was refitted past its start: see :func:`retrain.families.spine.champion_comparison`)."""
    gate = spec.gate
    comparison = champion_comparison(holdout, champion, gate.refit, gate.equal_staleness)
    holdout, note, versus = comparison.holdout, comparison.note, comparison.model
    frame = FeatureCache(spec.state.features, spec).load(holdout.partitions)
    after = (pd.to_datetime(frame[TS]) >= holdout.start).to_numpy()
    if not after.all():  # a holdout judged from the champion's training end on
        frame = frame[after]
    if not len(frame):
        raise BacktestError(f"the holdout holds no row after {holdout.start}: {note}")
    y = frame[spec.label].to_numpy(dtype="float64")
    candidate, champion_pred = _score_both(trained.model, versus, frame, spec.features.columns)
    bounds, window_ids = split_windows(holdout, gate.backtest_windows, frame[TS])
    settings = GateSettings.from_spec(spec)
    judged: dict[str, Any] = dict(
        y_holdout=y,
        y_train=trained.y_train,
        holdout_start=holdout.start,
        holdout_end=holdout.end,
        champion_pred=champion_pred,
        champion_version=champion.version if champion else None,
        champion_train_end=comparison.train_end,
        window_ids=window_ids,
        window_bounds=bounds,
        slices={col: frame[col].to_numpy() for col in gate.slices},
    )
    result = backtest(
        settings,
        candidate_pred=candidate,
        same_recipe=same_recipe(trained, comparison, champion),
        fold=lambda: own_fold(spec, trained),
        blocks=partition_ids(holdout, frame[TS]),
        shift_served=shift_served(trained, comparison, champion),
        **judged,
    )
    baseline = baseline_predictions(
        spec.task, trained.y_train, len(y), spec.metric, len(spec.class_labels)
    )
    verdict = None
    refresh = champion is not None and is_baseline(champion.model)
    if gate.promote_baseline and baseline_asked(result, refresh):
        verdict = baseline_verdict(settings, candidate, baseline, refresh, **judged)
    if note:
        result = replace(result, reasons=(*result.reasons, note))
    return Evaluated(
        result, frame[TS], y, candidate, baseline, champion_pred, verdict, refresh, comparison
    )


def _predictions(evaluated: Evaluated) -> dict[str, Any]:
    return {
        "candidate": evaluated.candidate,
        "champion": evaluated.champion,
        "baseline": evaluated.baseline,
    }


def write_evidence(
    directory: Path, spec: ModelSpec, prepared: Prepared, trained: Trained, evaluated: Evaluated
) -> dict[str, Path]:
    """Plots, tables and row samples of one retrain, written to ``directory``."""
    out = evidence_tables(directory, spec, prepared, evaluated.result)
    if spec.task == "multiclass":
        from retrain.reports import class_table

        class_table(evaluated.y, _predictions(evaluated), list(spec.class_labels)).to_csv(
            directory / "backtest_classes.csv", index=False
        )
        out["backtest_classes"] = directory / "backtest_classes.csv"
    importance = trained.model.feature_importance()
    importance.to_csv(directory / "feature_importance.csv", index=False)
    out["feature_importance"] = directory / "feature_importance.csv"
    if spec.reports.wants_plots(evaluated.result.passed):
        # matplotlib loads only when a plot is drawn
        from retrain.reports import (
            backtest_plot,
            confusion_plot,
            importance_plot,
            learning_curve_plot,
        )

        if spec.task == "multiclass":
            out["backtest_plot"] = confusion_plot(
                directory / "backtest.png",
                evaluated.result,
                evaluated.y,
                _predictions(evaluated),
                list(spec.class_labels),
            )
        else:
            out["backtest_plot"] = backtest_plot(
                directory / "backtest.png",
                evaluated.result,
                evaluated.timestamps,
                evaluated.y,
                evaluated.candidate,
                evaluated.baseline,
                evaluated.champion,
            )
        out["importance_plot"] = importance_plot(directory / "feature_importance.png", importance)
        curve = learning_curve_plot(directory / "learning_curve.png", trained.model.evals_result_)
        if curve is not None:
            out["learning_curve"] = curve
    if evaluated.result.slices:
        pd.DataFrame([asdict(sl) for sl in evaluated.result.slices]).to_csv(
            directory / "backtest_slices.csv", index=False
        )
        out["backtest_slices"] = directory / "backtest_slices.csv"
    (directory / "backtest.md").write_text(evaluated.result.markdown())
    out["backtest_report"] = directory / "backtest.md"
    return out


def rebuild(spec: ModelSpec, tags: Mapping[str, str], registered: Any, parent: Any) -> Trained:
    """Train a registered version again from the feature cache, with its own parameters.

    The training window comes from the version's tags and must have the same data version
    (same partition fingerprints, same feature spec); the trainer's parameters and seed come
    from the registered model itself. Equal ``model_string()`` = byte-identical model.
    """
    lineage = Lineage(tags)
    if lineage.is_baseline or is_baseline(registered):
        raise TrainingError(
            "this version is the trivial baseline (retrain.kind = baseline): there is no "
            "booster to rebuild; its value is in the version's baseline.json"
        )
    expected, start, end = lineage.data_version, lineage.window_start, lineage.window_end
    if not (expected and start is not None and end is not None):
        raise DataError("the version has no retrain.data_version/window tags: cannot rebuild it")
    cutoff = lineage.holdout_end or end
    result = ingest(spec, as_of=cutoff)
    window = make_window("train", start, end, result.partitions, spec.feature_spec_hash())
    if window.version != expected:
        raise DataError(
            f"the data changed since this version was trained: its window now has data version "
            f"{window.version}, the version was trained on {expected}. Restore the source "
            "partitions (or the feature spec) to rebuild it."
        )
    cache = FeatureCache(spec.state.features, spec)
    cache.materialize(window.partitions)
    frame = cache.load(window.partitions)
    X, y = _xy(spec, frame)
    strategy = lineage.strategy
    if strategy != "scratch" and parent is None:
        raise TrainingError(f"a {strategy} version needs its parent version to rebuild")
    model = LightGBMTrainer(
        task=registered.task,
        params=registered.params,
        num_boost_round=registered.num_boost_round,
        categorical=registered.categorical,
        random_state=registered.random_state,
        strategy=strategy,
        init_model=parent if strategy != "scratch" else None,
        refit_decay_rate=registered.refit_decay_rate,
        reference_rows=registered.reference_rows,
        classes=getattr(registered, "classes", ()),
    ).fit(X, y)
    plan = TrainingPlan(strategy, "rebuild", lineage.parent_version, lineage.increments)
    return Trained(
        model,
        window,
        len(frame),
        label_stats(spec.task, y, spec.class_labels),
        plan,
        (window.version,),
        y,
        last_row(frame[TS]),
    )


def serving_inputs(spec: ModelSpec) -> servable.TabularInputs:
    """The raw columns a served model reads: the timestamp (when features derive from it), the
    numeric and the categorical columns, as the source has them."""
    return servable.TabularInputs(
        numeric=spec.features.numeric,
        categorical=spec.features.categorical,
        derived=spec.features.derived,
        timestamp=spec.timestamp.column,
        hours_from=spec.timestamp.hours_from,
        timestamp_format=spec.timestamp.format,
    )


def plan(mode: str, spec: ModelSpec, champion: Champion | None) -> TrainingPlan:
    """Scratch, warm start or refit (the stateful planner, ``stateful.plan_training``); from
    scratch after a baseline champion (nothing to continue boosting from)."""
    if champion is not None and is_baseline(champion.model) and mode in STATEFUL_MODES:
        return scratch(
            f"champion v{champion.version} is the trivial baseline: nothing to warm-start "
            "from, full retrain instead"
        )
    return plan_training(
        mode,
        spec.stateful,
        champion.state() if champion else None,
        spec.features.columns,
        spec.features.categorical,
        spec.class_labels,
    )


class LightGBMFamily:
    """The gradient-boosting family's steps (see the module's docstring)."""

    name = "lightgbm"

    def metric_name(self, spec: ModelSpec) -> str:
        return spec.metric

    def plan(self, mode: str, spec: ModelSpec, champion: Champion | None) -> TrainingPlan:
        return plan(mode, spec, champion)

    def fit(
        self, spec: ModelSpec, prepared: Prepared, plan: TrainingPlan, champion: Champion | None
    ) -> Trained:
        return fit(spec, prepared, plan, champion)

    def fit_candidate(
        self, spec: ModelSpec, prepared: Prepared, plan: TrainingPlan, champion: Champion | None
    ) -> Trained:
        return fit_candidate(spec, prepared, plan, champion)

    def refit(
        self, spec: ModelSpec, prepared: Prepared, validated: Trained, champion: Champion | None
    ) -> Trained:
        return refit(spec, prepared, validated, champion)

    def rebuild(
        self, spec: ModelSpec, tags: Mapping[str, str], registered: Any, parent: Any
    ) -> Trained:
        return rebuild(spec, tags, registered, parent)

    def evaluate(
        self, spec: ModelSpec, trained: Trained, holdout: Window, champion: Champion | None
    ) -> Evaluated:
        return evaluate(spec, trained, holdout, champion)

    def write_evidence(
        self,
        directory: Path,
        spec: ModelSpec,
        prepared: Prepared,
        trained: Trained,
        evaluated: Evaluated,
    ) -> dict[str, Path]:
        return write_evidence(directory, spec, prepared, trained, evaluated)

    def baseline(self, spec: ModelSpec, frame: pd.DataFrame) -> BaselineModel:
        _, y = _xy(spec, frame)
        classes = tuple(spec.classes or ())  # as the data writes them, like the trainer's
        return BaselineModel(spec.task, spec.metric, len(classes), classes).fit(pd.DataFrame(), y)

    def signature_sample(
        self, spec: ModelSpec, prepared: Prepared, trained: Trained
    ) -> pd.DataFrame:
        return source_rows(spec, prepared.holdout, n=5)[list(serving_inputs(spec).columns)]

    def serving_inputs(self, spec: ModelSpec) -> servable.TabularInputs:
        return serving_inputs(spec)

    def curves(self, trained: Trained) -> Mapping[str, list[float]]:
        train = trained.model.evals_result_.get("train", {})
        return {f"train_{name}": list(values) for name, values in train.items()}

    def predict_params(self, spec: ModelSpec) -> dict[str, Any]:
        # a multiclass model answers its class; probabilities=True adds one column per class
        return {"probabilities": False} if spec.task == "multiclass" else {}

    def score(
        self, spec: ModelSpec, model: Any, rows: pd.DataFrame, before: pd.DataFrame
    ) -> Scored:
        X, y = _xy(spec, rows)
        pred = model.predict(X)
        return Scored(len(y), score(spec.metric, y, pred), y, pred)

    def pooled(self, spec: ModelSpec, scored: Sequence[Scored]) -> float:
        if not scored:
            return float("nan")
        return score(
            spec.metric,
            np.concatenate([s.y for s in scored]),
            np.concatenate([s.pred for s in scored]),
        )

    def monitored_features(self, spec: ModelSpec) -> list[str]:
        return list(spec.features.columns)


FAMILY: Family = LightGBMFamily()
