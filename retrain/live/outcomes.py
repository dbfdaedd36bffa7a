"""Per-request outcomes of a live test: logged predictions joined with their feedback.

A predict answer (tabular) is scored against the labels its feedback carries: the per-request
value is the mean row loss of the spec's metric (absolute error for mae and mape, squared error
for rmse, log loss for logloss and auc, correctness for accuracy). A recommend answer is scored
by its clicks: 1 when a clicked item was in the list that arm produced, else 0. An interleaved
answer credits the team whose items were clicked.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from retrain.live.interleave import credit

# per-request value of each metric; the online metric is its mean
LOSSES = {"mae": "absolute", "mape": "absolute", "rmse": "squared", "logloss": "log", "auc": "log"}
GREATER_IS_BETTER = {"accuracy": True, "ctr": True}


@dataclass(frozen=True)
class Outcome:
    request_id: str
    arm: str  # champion | challenger
    version: str
    at: datetime
    served: bool  # False: a shadow score, never shown
    latency_ms: float | None
    error: bool
    value: float | None  # None: no (complete) feedback yet
    winner: str | None = None  # interleaving: champion | challenger | tie


def online_metric(family: str, metric: str) -> tuple[str, bool]:
    """The name of the online metric of a spec and whether larger is better."""
    if family == "als":
        return "ctr", True
    if metric == "accuracy":
        return "accuracy", True
    return {"auc": "logloss"}.get(metric, metric), False


def _row_values(metric: str, labels: Sequence[float], predictions: Sequence[float]) -> float:
    y = np.asarray(labels, dtype=float)
    p = np.asarray(predictions, dtype=float)
    if y.shape != p.shape:
        raise ValueError(f"{y.size} labels for {p.size} predictions")
    kind = LOSSES.get(metric)
    if kind == "absolute":
        return float(np.abs(y - p).mean())
    if kind == "squared":
        return float(((y - p) ** 2).mean())
    if kind == "log":
        q = np.clip(p, 1e-12, 1 - 1e-12)
        return float(-(y * np.log(q) + (1 - y) * np.log(1 - q)).mean())
    if metric == "accuracy":
        return float(((p >= 0.5).astype(float) == y).mean())
    raise ValueError(f"no online form of metric {metric!r}")


def _labels(
    outcome: Mapping[str, Any], code: Callable[[Any], float | None] = float
) -> list[float] | None:
    """The feedback's labels as numbers (``code``: the spec's label mapping, e.g. "UP" -> 1);
    None when there is none, or one the mapping does not know (the answer stays unlabelled)."""
    if "labels" in outcome:
        raw = list(outcome["labels"])
    elif "label" in outcome:
        raw = [outcome["label"]]
    else:
        return None
    try:
        values = [code(v) for v in raw]
    except (TypeError, ValueError):
        return None
    return None if any(v is None for v in values) else [float(v) for v in values if v is not None]


def _value(
    family: str,
    metric: str,
    output: Mapping[str, Any],
    feedback: Mapping[str, Any],
    code: Callable[[Any], float | None] = float,
) -> tuple[float | None, str | None]:
    if family == "als":
        clicked = {str(i) for i in feedback.get("clicks", ())}
        lists = output.get("recommendations", ())
        if output.get("teams") is not None:
            items = [str(i) for r in lists for i in r["items"]]
            teams = [t for r in output["teams"] for t in r]
            return None, credit(teams, items, list(clicked))
        hit = any(str(i) in clicked for r in lists for i in r["items"])
        return float(hit), None
    labels = _labels(feedback, code)
    if labels is None:
        return None, None
    return _row_values(metric, labels, output["predictions"]), None


def outcomes(
    family: str,
    metric: str,
    predictions: Iterable[Mapping[str, Any]],
    feedback: Iterable[Mapping[str, Any]],
    *,
    now: datetime,
    label_delay: timedelta,
    label_code: Callable[[Any], float | None] = float,
) -> list[Outcome]:
    """Join logged answers with feedback (the newest per request), in time order.

    An answer younger than ``label_delay`` is left out entirely (its labels may still come); an
    older answer without feedback counts as unlabelled for a tabular model and as "no click" for
    a recommender (a click that never came is the outcome). ``label_code`` turns a feedback
    label into the number the model predicts (``ModelSpec.label_code``: "UP" -> 1 with
    ``positive = "UP"``).
    """
    latest: dict[str, Mapping[str, Any]] = {}
    for row in sorted(feedback, key=lambda r: r["at"]):
        latest[str(row["request_id"])] = row["outcome"]
    found = []
    for row in predictions:
        if row["at"] > now - label_delay:
            continue
        error = bool(row.get("error"))
        value: float | None = None
        winner: str | None = None
        fb = latest.get(str(row["request_id"]))
        if not error and (fb is not None or family == "als"):
            value, winner = _value(family, metric, row["output"] or {}, fb or {}, label_code)
            if value is not None and not math.isfinite(value):
                value = None
        found.append(
            Outcome(
                request_id=str(row["request_id"]),
                arm=str(row["arm"]),
                version=str(row["version"]),
                at=row["at"],
                served=row.get("role", "served") == "served",
                latency_ms=row.get("latency_ms"),
                error=error,
                value=value,
                winner=winner,
            )
        )
    return sorted(found, key=lambda o: (o.at, o.request_id, o.arm))
