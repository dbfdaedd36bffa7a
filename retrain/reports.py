"""Plots and tables that go with a retrain (PNG files written where the caller says)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from retrain.backtest import BacktestResult


def backtest_plot(
    path: Path,
    result: BacktestResult,
    timestamps: pd.Series,
    y: np.ndarray,
    candidate: np.ndarray,
    baseline: np.ndarray,
    champion: np.ndarray | None = None,
) -> Path:
    """Daily actual vs predicted on the holdout, and the metric of each model."""
    frame = pd.DataFrame(
        {"actual": y, "candidate": candidate, "baseline": baseline},
        index=pd.DatetimeIndex(timestamps),
    )
    if champion is not None:
        frame["champion"] = champion
    daily = frame.resample("D").mean().dropna(how="all")
    per_window = len(result.windows) > 1
    fig = Figure(figsize=(15 if per_window else 11, 4.2), layout="constrained")
    if per_window:
        ax, win, bar = fig.subplots(1, 3, width_ratios=[3, 2, 1])
        _window_panel(win, result, result.metric, "baseline")
    else:
        ax, bar = fig.subplots(1, 2, width_ratios=[3, 1])
    styles = {"actual": "k-", "candidate": "C0-", "champion": "C1--", "baseline": "C7:"}
    for col in daily.columns:
        ax.plot(daily.index, daily[col], styles[col], label=col, linewidth=1.4)
    ax.set_title("holdout: daily mean of label and predictions")
    ax.legend(loc="best", fontsize=8)
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    _metric_bars(bar, result, result.metric, "baseline")
    fig.suptitle(f"Backtest {'PASSED' if result.passed else 'FAILED'}", fontsize=11)
    fig.savefig(path, dpi=110)
    return path


def class_table(
    y: np.ndarray, predictions: dict[str, np.ndarray | None], classes: list[str]
) -> pd.DataFrame:
    """Per class and model (multiclass; predictions are rows x classes probabilities): the
    holdout rows of the class (support), precision, recall and F1 of its most probable class.

    >>> table = class_table(np.array([0, 1, 1]), {"candidate": np.eye(2)[[0, 1, 0]]}, ["a", "b"])
    >>> table[["class", "support", "precision", "recall"]].values.tolist()
    [['a', 1, 0.5, 1.0], ['b', 2, 1.0, 0.5]]
    """
    truth = np.asarray(y).astype("int64")
    rows = []
    for model, proba in predictions.items():
        if proba is None:
            continue
        predicted = np.asarray(proba).argmax(axis=1)
        for code, name in enumerate(classes):
            tp = int(np.sum((predicted == code) & (truth == code)))
            said, real = int(np.sum(predicted == code)), int(np.sum(truth == code))
            precision = tp / said if said else float("nan")
            recall = tp / real if real else float("nan")
            both = precision + recall
            f1 = 2 * precision * recall / both if said and real and both else 0.0
            rows.append(
                {
                    "model": model,
                    "class": name,
                    "support": real,
                    "predicted": said,
                    "precision": precision,
                    "recall": recall,
                    "f1": f1,
                }
            )
    return pd.DataFrame(rows)


def confusion_plot(
    path: Path,
    result: BacktestResult,
    y: np.ndarray,
    predictions: dict[str, np.ndarray | None],
    classes: list[str],
) -> Path:
    """Multiclass: the metric of every model (per backtest window when there are several) and
    the confusion matrix of each model on the holdout (rows: true class, columns: predicted;
    each row's share)."""
    shown = {name: p for name, p in predictions.items() if p is not None}
    fig = Figure(figsize=(4.2 * (len(shown) + 1), 4.2), layout="constrained")
    axes = fig.subplots(1, len(shown) + 1)
    if len(result.windows) > 1:
        _window_panel(axes[0], result, result.metric, "baseline")
    else:
        _metric_bars(axes[0], result, result.metric, "baseline")
    truth = np.asarray(y).astype("int64")
    k = len(classes)
    for ax, (name, proba) in zip(axes[1:], shown.items(), strict=True):
        counts = np.zeros((k, k))
        np.add.at(counts, (truth, np.asarray(proba).argmax(axis=1)), 1)
        share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    f"{int(counts[i, j])}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black",
                )
        ax.set_xticks(range(k), classes, fontsize=8)
        ax.set_yticks(range(k), classes, fontsize=8)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(f"{name}: confusion on the holdout", fontsize=9)
    fig.suptitle(f"Backtest {'PASSED' if result.passed else 'FAILED'}", fontsize=11)
    fig.savefig(path, dpi=110)
    return path


def window_plot(
    path: Path, result: BacktestResult, metric_label: str, baseline_label: str = "baseline"
) -> Path:
    """The metric of candidate, champion and baseline in every backtest window, and overall.

    For models whose predictions are not one number per row in time (the ranking family scores
    each user's top-k list): the backtest plot without the daily panel of ``backtest_plot``.
    """
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    win, bar = fig.subplots(1, 2, width_ratios=[3, 1])
    _window_panel(win, result, metric_label, baseline_label)
    _metric_bars(bar, result, metric_label, baseline_label)
    fig.suptitle(f"Backtest {'PASSED' if result.passed else 'FAILED'}", fontsize=11)
    fig.savefig(path, dpi=110)
    return path


def _window_panel(ax: Any, result: BacktestResult, metric: str, baseline_label: str) -> None:
    x = np.arange(1, len(result.windows) + 1)
    ax.plot(x, [w.candidate for w in result.windows], "C0o-", label="candidate")
    if result.champion is not None:
        label = f"champion v{result.champion_version}"
        ax.plot(x, [w.champion for w in result.windows], "C1s--", label=label)
    ax.plot(x, [w.baseline for w in result.windows], "C7^:", label=baseline_label)
    ax.set_xticks(x, [f"{i}\n{w.start[5:10]}" for i, w in zip(x, result.windows, strict=True)])
    ax.set_xlabel("backtest window (number, start)")
    ax.set_title(f"{metric} per window")
    ax.legend(fontsize=8)


def _metric_bars(ax: Any, result: BacktestResult, metric: str, baseline_label: str) -> None:
    rows = result.table()
    names = [r["model"] for r in rows]
    values = [r[result.metric] for r in rows]
    colors = {"candidate": "C0", "champion": "C1", "baseline": "C7"}
    labels = [baseline_label if n == "baseline" else n for n in names]
    ax.bar(labels, values, color=[colors[n] for n in names])
    ax.set_title(f"{metric} ({'higher' if result.greater_is_better else 'lower'} better)")
    for i, value in enumerate(values):
        ax.annotate(f"{value:.2f}", (i, value), ha="center", va="bottom", fontsize=8)


def learning_curve_plot(path: Path, evals: dict[str, dict[str, list[float]]]) -> Path | None:
    if not evals:
        return None
    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.subplots()
    for data_name, metrics in evals.items():
        for metric_name, values in metrics.items():
            ax.plot(np.arange(1, len(values) + 1), values, label=f"{data_name} {metric_name}")
    ax.set_xlabel("boosting round")
    ax.set_title("learning curve")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return path


def importance_plot(path: Path, importance: pd.DataFrame) -> Path:
    top = importance.head(20).iloc[::-1]
    fig = Figure(figsize=(6, 0.3 * len(top) + 1.2), layout="constrained")
    ax = fig.subplots()
    ax.barh(top["feature"], top["gain"], color="C0")
    ax.set_title("feature importance (gain)")
    fig.savefig(path, dpi=110)
    return path


def drift_report(path: Path, result: Any) -> Path:
    """PSI of every feature (and the champion's scores) with its threshold, fired in red."""
    drift = [s for s in result.signals if s.name in {"drift", "prediction_drift"} and s.threshold]
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(8, 0.35 * max(len(drift), 3) + 1.6), layout="constrained")
    ax = fig.subplots()
    if drift:
        names = [s.feature or "(model scores)" for s in drift]
        ax.barh(names, [s.value for s in drift], color=["C3" if s.fired else "C0" for s in drift])
        ax.axvline(drift[0].threshold, color="k", linestyle="--", linewidth=1, label="threshold")
        ax.legend(fontsize=8)
        ax.set_xlabel("population stability index (red: drift, significant after Holm)")
    else:
        ax.text(0.5, 0.5, "no drift test (not enough rows)", ha="center", va="center")
        ax.set_axis_off()
    decision = "retrain" if result.decision.retrain else "no retrain"
    ax.set_title(
        f"{result.model} champion v{result.champion_version} at {result.as_of:%Y-%m-%d %H:%M}: "
        f"{decision} ({result.fresh_rows} fresh rows)",
        fontsize=9,
    )
    fig.savefig(path, dpi=110)
    return path


def live_plot(path: Path, decision: Any) -> Path:
    """A live test at a glance: each arm's online metric with its interval, and the labelled
    requests per arm against the sample size the test needs (``decision``: a LiveDecision)."""
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    left, right = fig.subplots(1, 2)
    arms = list(decision.arms)
    names = [f"{a.arm}\nv{a.version}" for a in arms]
    for i, a in enumerate(arms):
        if a.metric is None or not np.isfinite(a.metric):
            continue
        low = a.metric - a.ci_low if a.ci_low is not None else 0.0
        high = a.ci_high - a.metric if a.ci_high is not None else 0.0
        left.errorbar([i], [a.metric], yerr=[[low], [high]], fmt="o", color=f"C{i}", capsize=6)
    left.set_xticks(range(len(arms)), names)
    left.set_xlim(-0.6, len(arms) - 0.4)
    better = "larger" if decision.greater_is_better else "smaller"
    left.set_title(f"online {decision.metric} ({better} is better), 95% interval", fontsize=9)
    right.bar(
        range(len(arms)), [a.labelled for a in arms], color=[f"C{i}" for i in range(len(arms))]
    )
    if decision.required_samples is not None:
        right.axhline(decision.required_samples, color="k", linestyle="--", linewidth=1)
        right.text(-0.4, decision.required_samples, " required", va="bottom", fontsize=8)
    right.set_xticks(range(len(arms)), names)
    right.set_title("labelled requests per arm", fontsize=9)
    fig.suptitle(
        f"Live test ({decision.routing}) of {decision.model}: {decision.action}", fontsize=10
    )
    fig.savefig(path, dpi=100)
    return path
