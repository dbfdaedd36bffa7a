"""Backtest: candidate, champion and a trivial baseline scored on the same unseen holdout.

The verdict compares the candidate with the champion (relative tolerance from the spec) and with
the baseline (training-window mean for regression, majority class for classification); the
candidate must beat the baseline. A paired bootstrap gives a confidence interval of the
improvement over the champion.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from retrain.config import GREATER_IS_BETTER, RANKING_METRICS, ModelSpec
from retrain.errors import BacktestError


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    from scipy.stats import rankdata

    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(p)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _logloss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-15, 1 - 1e-15)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _true_class_probability(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Multiclass: each row's probability of its true class (p is rows x classes, y the codes)."""
    return np.clip(p[np.arange(len(y)), y.astype("int64")], 1e-15, 1.0)


def _hits(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """1 where the prediction is right: the most probable class (multiclass, p rows x classes)
    or the side of 0.5 (binary)."""
    if p.ndim == 2:
        return (p.argmax(axis=1) == y).astype("float64")
    return ((p >= 0.5) == (y == 1)).astype("float64")


def _macro_f1(y: np.ndarray, p: np.ndarray) -> float:
    """F1 of each class, averaged over the classes in the labels or the predictions (as
    scikit-learn's ``f1_score(average="macro")``).

    >>> round(_macro_f1(np.array([0, 0, 1, 2]), np.eye(3)[[0, 1, 1, 2]]), 4)
    0.7778
    """
    if len(y) == 0:
        return float("nan")
    predicted = p.argmax(axis=1)
    truth = y.astype("int64")
    classes = np.union1d(truth, predicted)
    scores = []
    for c in classes:
        tp = float(np.sum((predicted == c) & (truth == c)))
        fp = float(np.sum((predicted == c) & (truth != c)))
        fn = float(np.sum((predicted != c) & (truth == c)))
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def _mape(y: np.ndarray, p: np.ndarray) -> float:
    mask = y != 0
    return float(np.mean(np.abs((y[mask] - p[mask]) / y[mask]))) if mask.any() else float("nan")


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "mae": lambda y, p: float(np.mean(np.abs(y - p))),
    "rmse": lambda y, p: float(np.sqrt(np.mean((y - p) ** 2))),
    "mape": _mape,
    "auc": _auc,
    "logloss": _logloss,
    "accuracy": lambda y, p: float(np.mean(_hits(y, p))) if len(y) else float("nan"),
    "multi_logloss": lambda y, p: float(-np.mean(np.log(_true_class_probability(y, p)))),
    "macro_f1": _macro_f1,
}
# Ranking metrics arrive already scored, one value per row (a user in a backtest window, see
# retrain.families.als): the metric of a set of rows is their mean, so windows and the paired
# bootstrap resample users. ``y`` is not used.
for _name in RANKING_METRICS:
    METRICS[_name] = lambda y, p: float(np.mean(p)) if len(p) else float("nan")


def score(metric: str, y: np.ndarray, pred: np.ndarray) -> float:
    if metric not in METRICS:
        raise BacktestError(f"unknown metric {metric!r}; choose one of {sorted(METRICS)}")
    return METRICS[metric](np.asarray(y, dtype="float64"), np.asarray(pred, dtype="float64"))


def baseline_predictions(
    task: str, y_train: np.ndarray, n: int, metric: str | None = None, n_classes: int = 0
) -> np.ndarray:
    """The trivial model: training-window mean (regression) or majority class (binary,
    multiclass).

    For a probability metric (logloss, multi_logloss) the baseline predicts the training
    positive rate (binary) or class priors (multiclass) instead of a hard class, which any
    clipped log loss would punish without meaning. A multiclass baseline is rows x
    ``n_classes`` probabilities, like the model's (the majority class: probability 1).

    >>> baseline_predictions("multiclass", np.array([0, 2, 2, 1]), 1, "accuracy", 3)
    array([[0., 0., 1.]])
    >>> baseline_predictions("multiclass", np.array([0, 2, 2, 1]), 1, "multi_logloss", 3)
    array([[0.25, 0.25, 0.5 ]])
    """
    y_train = np.asarray(y_train, dtype="float64")
    if task == "multiclass":
        counts = np.bincount(y_train.astype("int64"), minlength=n_classes).astype("float64")
        if metric == "multi_logloss":
            row = counts / counts.sum()
        else:  # ties: the first class in the spec's order
            row = np.eye(counts.size)[int(np.argmax(counts))]
        return np.tile(row, (n, 1))
    if task == "binary":
        if metric == "logloss":
            return np.full(n, float(np.mean(y_train)))
        majority = float(np.mean(y_train) >= 0.5)
        return np.full(n, majority)
    return np.full(n, float(np.mean(y_train)))


# metrics that are a mean of one loss per row: their paired bootstrap is one gather per draw
_ROW_LOSSES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "mae": lambda y, p: np.abs(y - p),
    "rmse": lambda y, p: (y - p) ** 2,  # the square root is taken after the mean
    "logloss": lambda y, p: (
        -(
            y * np.log(np.clip(p, 1e-15, 1 - 1e-15))
            + (1 - y) * np.log(1 - np.clip(p, 1e-15, 1 - 1e-15))
        )
    ),
    "accuracy": _hits,
    "multi_logloss": lambda y, p: -np.log(_true_class_probability(y, p)),
    **{name: (lambda y, p: p) for name in RANKING_METRICS},
}
# cells of the (samples x rows) index matrix drawn at once: a block of indices and the losses
# gathered with it stay in the CPU's cache (one matrix of 4M cells, the former bound, cost
# about twice the CPU on a 1,400-row holdout: page faults and memory traffic). The draws are
# the same whatever the block: the generator's stream does not depend on how it is split, and
# each draw's mean is taken over its own row of the block.
_BOOTSTRAP_CELLS = 65_536


def _bootstrap_indices(rng: np.random.Generator, samples: int, n: int) -> Iterator[np.ndarray]:
    """The resampled row indices, ``samples`` rows of ``n`` each, in blocks of bounded size
    (the same indices as one ``rng.integers(0, n, (samples, n))``)."""
    chunk = max(1, _BOOTSTRAP_CELLS // max(n, 1))
    for start in range(0, samples, chunk):
        yield rng.integers(0, n, (min(chunk, samples - start), n))


def _resampled_means(values: np.ndarray, idx: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    if weights is None:
        return values[idx].mean(axis=1)
    w = weights[idx]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (values[idx] * w).sum(axis=1) / w.sum(axis=1)


def paired_bootstrap(
    metric: str,
    y: np.ndarray,
    candidate: np.ndarray,
    reference: np.ndarray,
    samples: int,
    seed: int,
    greater_is_better: bool,
    blocks: np.ndarray | None = None,
) -> tuple[float, float]:
    """95% interval of the candidate's improvement over the reference (positive = better).

    ``blocks`` (one id per row, e.g. its partition): each draw resamples whole blocks instead
    of rows, so rows that share their conditions (the hours of one day) stay together and the
    interval is not narrower than the data's independent units allow. A metric that is not a
    mean of row losses (AUC, macro-F1) ignores it.

    Paired: every draw resamples the same rows for both models (the difference is computed row
    set by row set, so what the two share cancels). Vectorised: the draws are one seeded matrix
    of row indices (in chunks of bounded memory); a metric that is a mean of row losses (every
    one but AUC and macro-F1) is one gather and one mean per draw, AUC and macro-F1 are scored
    draw by draw. Multiclass predictions are rows x classes probabilities.
    """
    rng = np.random.default_rng(seed)
    y = np.asarray(y, dtype="float64")
    candidate = np.asarray(candidate, dtype="float64")
    reference = np.asarray(reference, dtype="float64")
    n = len(y)
    sign = 1.0 if greater_is_better else -1.0
    parts: list[np.ndarray] = []
    loss = _ROW_LOSSES.get(metric)
    weights: np.ndarray | None = None
    if metric == "mape":
        weights = (y != 0).astype("float64")
        safe = np.where(y != 0, y, 1.0)
        cand_rows = np.abs((y - candidate) / safe)
        ref_rows = np.abs((y - reference) / safe)
    elif loss is not None:
        cand_rows, ref_rows = loss(y, candidate), loss(y, reference)
    if blocks is not None and (loss is not None or weights is not None):
        codes = np.unique(np.asarray(blocks), return_inverse=True)[1].ravel()
        w = np.ones(n) if weights is None else weights
        count = np.bincount(codes, weights=w)
        cand_sum = np.bincount(codes, weights=cand_rows * w)
        ref_sum = np.bincount(codes, weights=ref_rows * w)
        for idx in _bootstrap_indices(rng, samples, count.size):
            total = count[idx].sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                cand, ref = cand_sum[idx].sum(axis=1) / total, ref_sum[idx].sum(axis=1) / total
            if metric == "rmse":
                cand, ref = np.sqrt(cand), np.sqrt(ref)
            parts.append(cand - ref)
    for idx in _bootstrap_indices(rng, samples, n) if not parts else ():
        if loss is None and weights is None:  # AUC, macro-F1: not a mean of row losses
            parts.append(
                np.array(
                    [
                        score(metric, y[i], candidate[i]) - score(metric, y[i], reference[i])
                        for i in idx
                    ]
                )
            )
            continue
        cand = _resampled_means(cand_rows, idx, weights)
        ref = _resampled_means(ref_rows, idx, weights)
        if metric == "rmse":
            cand, ref = np.sqrt(cand), np.sqrt(ref)
        parts.append(cand - ref)
    diffs = sign * np.concatenate(parts) if parts else np.empty(0)
    diffs = diffs[~np.isnan(diffs)]
    if diffs.size == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(diffs, [0.025, 0.975])
    return float(low), float(high)


@dataclass(frozen=True)
class WindowScore:
    """One backtest window: every model's metric and the candidate's improvement."""

    start: str
    end: str
    rows: int
    candidate: float
    baseline: float
    champion: float | None
    improvement: float | None


@dataclass(frozen=True)
class SliceScore:
    """One slice (a value of a categorical feature): the candidate's change vs the champion."""

    feature: str
    value: str
    rows: int
    candidate: float
    champion: float
    # relative change of the metric, positive = the candidate is worse on this slice
    degradation: float


@dataclass(frozen=True)
class BacktestResult:
    """Evidence and verdict of one backtest. ``improvement`` > 0 means the candidate is better."""

    metric: str
    greater_is_better: bool
    holdout_start: str
    holdout_end: str
    rows: int
    candidate: float
    baseline: float
    champion: float | None
    champion_version: str | None
    improvement: float | None
    ci_low: float | None
    ci_high: float | None
    tolerance: float
    passed: bool
    reasons: tuple[str, ...]
    windows: tuple[WindowScore, ...] = ()
    windows_lost: int | None = None
    slices: tuple[SliceScore, ...] = ()

    def table(self) -> list[dict[str, Any]]:
        rows = [{"model": "candidate", "version": "(new)", self.metric: self.candidate}]
        if self.champion is not None:
            rows.append(
                {"model": "champion", "version": self.champion_version, self.metric: self.champion}
            )
        rows.append({"model": "baseline", "version": "-", self.metric: self.baseline})
        return rows

    def window_table(self) -> list[dict[str, Any]]:
        return [
            {
                "window": f"{w.start[:16]} .. {w.end[:16]}",
                "rows": w.rows,
                "candidate": w.candidate,
                "champion": w.champion,
                "baseline": w.baseline,
                "improvement": w.improvement,
            }
            for w in self.windows
        ]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["reasons"] = list(self.reasons)
        return out

    def markdown(self) -> str:
        def num(value: float | None) -> str:
            return "-" if value is None else f"{value:.4f}"

        verdict = "PASSED" if self.passed else "FAILED"
        lines = [
            f"## Backtest {verdict}",
            "",
            f"Holdout `{self.holdout_start}` to `{self.holdout_end}` ({self.rows} rows), metric "
            f"**{self.metric}** ({'higher' if self.greater_is_better else 'lower'} is better).",
            "",
            f"| model | version | {self.metric} |",
            "|---|---|---|",
        ]
        for row in self.table():
            lines.append(f"| {row['model']} | {row['version']} | {row[self.metric]:.4f} |")
        if self.improvement is not None:
            lines += [
                "",
                f"Improvement over the champion: {self.improvement:+.4f} "
                f"(95% paired bootstrap CI {self.ci_low:+.4f} to {self.ci_high:+.4f}); "
                f"tolerance {self.tolerance:.1%} of the champion's metric.",
            ]
        if len(self.windows) > 1:
            lines += [
                "",
                f"### Per window ({self.windows_lost or 0} lost by the candidate)",
                "",
                "| window | rows | candidate | champion | baseline | improvement |",
                "|---|---|---|---|---|---|",
            ]
            for w in self.windows:
                lines.append(
                    f"| {w.start[:16]} .. {w.end[:16]} | {w.rows} | {num(w.candidate)} | "
                    f"{num(w.champion)} | {num(w.baseline)} | {num(w.improvement)} |"
                )
        if self.slices:
            lines += [
                "",
                "### Per slice (degradation > 0: the candidate is worse)",
                "",
                "| feature | value | rows | candidate | champion | degradation |",
                "|---|---|---|---|---|---|",
            ]
            for sl in self.slices:
                lines.append(
                    f"| {sl.feature} | {sl.value} | {sl.rows} | {sl.candidate:.4f} | "
                    f"{sl.champion:.4f} | {sl.degradation:+.1%} |"
                )
        lines += ["", "### Verdict", *[f"- {r}" for r in self.reasons]]
        return "\n".join(lines)


def significant_over_baseline(
    metric: str,
    y: np.ndarray,
    candidate_pred: np.ndarray,
    baseline_pred: np.ndarray,
    cand: float,
    base: float,
    samples: int,
    seed: int,
) -> tuple[bool, str]:
    """The baseline check of ``gate.significant_baseline`` (and ``gate.prefer_fresh``): the
    candidate beats the trivial baseline *significantly*, the lower end of the 95% paired
    interval of its improvement over the baseline above zero (not only its point estimate,
    which a model that learned nothing beats by chance half of the time on a balanced binary
    label).

    ``gate.prefer_fresh`` lets a candidate the holdout cannot tell from the champion win the
    tie as the fresher model (non-inferiority). A tie alone would also let through a model
    that learned nothing (e.g. one trained on shuffled labels) when the champion has itself
    gone stale, and a first model has no champion to tie with: this check asks every candidate
    for evidence that it learned something. Returns whether it passes and the reason.
    """
    gib = metric in GREATER_IS_BETTER
    low, high = paired_bootstrap(metric, y, candidate_pred, baseline_pred, samples, seed, gib)
    interval = f"95% CI of the improvement {low:+.4f} to {high:+.4f}"
    if not np.isnan(low) and low > 0:
        return (
            True,
            f"candidate beats the baseline significantly ({cand:.4f} vs {base:.4f}; {interval})",
        )
    return False, (
        f"candidate does not beat the trivial baseline significantly ({cand:.4f} vs "
        f"{base:.4f}; the {interval} reaches zero): no evidence that the model learned "
        "something useful on this window (gate.significant_baseline)"
    )


@dataclass(frozen=True)
class FoldEvidence:
    """The fold of ``gate.undecided``: the candidate's recipe refitted on part of its own
    training window (its own labels) and scored on the rest, against the trivial baseline of
    the part it was fitted on. ``kind``: ``interleaved`` (every k-th partition held out) or
    ``forward`` (the newest ``windows.holdout`` held out). ``passed``: the recipe beats the
    baseline there significantly (the lower end of the 95% paired interval above zero)."""

    passed: bool
    reason: str
    rows: int
    candidate: float
    baseline: float
    ci_low: float
    ci_high: float
    kind: str = "forward"


def fold_evidence(
    metric: str,
    task: str,
    y_fit: np.ndarray,
    y_held: np.ndarray,
    pred_held: np.ndarray,
    samples: int,
    seed: int,
    kind: str = "forward",
    every: int | None = None,
) -> FoldEvidence:
    """Whether a recipe learned something on its own training data: fitted on the rows of
    ``y_fit``, its predictions ``pred_held`` of the held-out rows beat the trivial baseline of
    the fitted rows significantly (:func:`significant_over_baseline`). ``kind``: which rows were
    held out, for the reason (``forward``: the window's newest ``windows.holdout``;
    ``interleaved``: every ``every``-th partition of the window).

    The evidence the holdout cannot give (``gate.undecided``): after an abrupt drift a model
    trained on shuffled labels can be genuinely better than the baseline and a stale champion
    on the holdout's rows (a random function of the features that lines up with the new
    concept), but the labels it learned from carry no signal: given the fitted rows, the
    held-out labels are independent of everything the fold's fit saw and of the held-out
    features, so its predictions cannot beat the baseline except by the test's own error
    (2.5%), whichever rows are held out.
    """
    y_held = np.asarray(y_held, dtype="float64")
    pred_held = np.asarray(pred_held, dtype="float64")
    n_classes = pred_held.shape[1] if pred_held.ndim == 2 else 0
    base_pred = baseline_predictions(task, y_fit, y_held.size, metric, n_classes)
    cand, base = score(metric, y_held, pred_held), score(metric, y_held, base_pred)
    gib = metric in GREATER_IS_BETTER
    low, high = paired_bootstrap(metric, y_held, pred_held, base_pred, samples, seed, gib)
    passed = bool(not np.isnan(low) and low > 0)
    verdict = "beats" if passed else "does not beat"
    if kind == "interleaved":
        fitted = (
            f"interleaved fold: the recipe fitted on the candidate's own training window "
            f"without every {every}-th partition {verdict} the baseline significantly on "
            f"those partitions' {y_held.size} rows"
        )
    else:
        fitted = (
            f"forward fold: the recipe fitted on the older part of the candidate's own training "
            f"window {verdict} the baseline significantly on its newest {y_held.size} rows"
        )
    reason = (
        f"{fitted} ({cand:.4f} vs {base:.4f}; 95% CI of the improvement {low:+.4f} to {high:+.4f})"
    )
    return FoldEvidence(passed, reason, int(y_held.size), cand, base, low, high, kind)


def _better(a: float, b: float, greater_is_better: bool) -> bool:
    return a > b if greater_is_better else a < b


def _improvement(cand: float, champ: float, gib: bool) -> float:
    return (cand - champ) if gib else (champ - cand)


@dataclass(frozen=True)
class GateSettings:
    """What a backtest judges by: the metric and the gate's thresholds, built once per spec.

    ``max_slice_degradation`` None: slices are scored and shown but never fail the gate.
    """

    metric: str
    task: str
    tolerance: float = 0.0
    bootstrap_samples: int = 1000
    seed: int = 0
    max_windows_lost: int | None = None
    max_slice_degradation: float | None = None
    min_slice_rows: int = 30
    prefer_fresh: bool = False
    # gate.significant_baseline: which candidates the baseline check asks for significance
    # ("always", "no_champion", "never"; prefer_fresh always asks it)
    significant_baseline: str = "never"
    # gate.undecided: what a candidate the holdout cannot decide gets ("refuse": nothing, the
    # strict rule; "interleaved_fold" / "forward_fold": the fold's evidence, see backtest)
    undecided: str = "refuse"

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> GateSettings:
        """The settings of ``spec``'s gate (its slice limit applies only when it names slices)."""
        gate = spec.gate
        return cls(
            metric=spec.metric,
            task=spec.task,
            tolerance=gate.tolerance,
            bootstrap_samples=gate.bootstrap_samples,
            seed=spec.seed,
            max_windows_lost=gate.max_windows_lost,
            max_slice_degradation=gate.max_slice_degradation if gate.slices else None,
            min_slice_rows=gate.min_slice_rows,
            prefer_fresh=gate.prefer_fresh,
            significant_baseline=gate.significant_baseline,
            undecided=gate.undecided,
        )


def backtest(
    settings: GateSettings,
    *,
    y_holdout: np.ndarray,
    candidate_pred: np.ndarray,
    y_train: np.ndarray,
    holdout_start: pd.Timestamp,
    holdout_end: pd.Timestamp,
    champion_pred: np.ndarray | None = None,
    champion_version: str | None = None,
    champion_train_end: pd.Timestamp | None = None,
    window_ids: np.ndarray | None = None,
    window_bounds: Sequence[tuple[pd.Timestamp, pd.Timestamp]] = (),
    slices: Mapping[str, np.ndarray] | None = None,
    baseline_pred: np.ndarray | None = None,
    same_recipe: bool = False,
    fold: Callable[[], FoldEvidence | None] | None = None,
    blocks: np.ndarray | None = None,
    shift_served: bool = False,
) -> BacktestResult:
    """Score candidate, champion and baseline on the same holdout windows; give the verdict.

    The gate (``settings``): the candidate beats the baseline; with a champion, the lower bound
    of the 95% paired bootstrap interval of the improvement is above ``-tolerance x |champion
    metric|``, the candidate loses at most ``max_windows_lost`` windows, and no slice of
    ``slices`` with at least ``min_slice_rows`` rows degrades by more than
    ``max_slice_degradation``. ``baseline_pred`` replaces the training-window mean / majority
    class (the ranking family passes its popularity baseline's per-user scores). With
    ``settings.prefer_fresh`` (``gate.prefer_fresh``) a candidate that the interval cannot tell
    from the champion passes too (only one significantly worse is refused), and the candidate
    must beat the baseline significantly: see :func:`significant_over_baseline`; so must every
    candidate with ``settings.significant_baseline = "always"`` (``gate.significant_baseline``), and
    every candidate without a champion with ``"no_champion"``.

    ``settings.undecided`` other than ``"refuse"`` (``gate.undecided``): a candidate the holdout
    cannot decide is judged on more evidence, the fold (``fold``, called at most once and only
    then; the family fits it, interleaved or forward, see :func:`fold_evidence`):

    - a first model (no champion) that beats the baseline's point estimate but not
      significantly passes when the fold shows its recipe beats the baseline significantly on
      its own training data;
    - a candidate that is a refit of the champion's recipe on moved data (``same_recipe``:
      same family, parameters, features and window length, from scratch) that the holdout
      does not show better (the interval reaches below ``-tolerance``) is judged for
      non-inferiority: it is refused when it is significantly worse than the champion, by the
      paired interval over the holdout's partitions (``blocks``: the rows of one partition
      share its conditions), and otherwise passes as the fresher fit when the fold shows it
      learned something. The two fits differ only by the newest cadence of data; which of
      the two validated fits the holdout favours is mostly the luck of those fits, which does
      not carry over to the served refits, so a tie carries no evidence for the older data;
    - such a refit that the partition interval shows significantly worse than the champion's
      *validated* fit, when the champion's served refit already learned every row this fit
      added over that validated fit and none of those it dropped (``shift_served``, see
      :func:`retrain.families.spine.shift_served`): keeping the champion would not undo the
      change of data the holdout judged, so the evidence is not against the candidate's refit.
      It serves as the fresher fit when it keeps at least half of the champion's improvement
      over the baseline (the partition interval of its improvement over the champion above
      minus half the champion's improvement over the baseline: the usual margin of
      non-inferiority designs, which a fit of the same recipe on mostly the same rows keeps
      and a fit of labels without signal does not) and the fold shows it learned something;
    - a refit of the champion's recipe below the baseline's point estimate, with the
      champion no better (both stale on this holdout, e.g. after a concept came back), goes
      on to the champion comparison when the fold shows it learned something.

    A candidate that is not the champion's recipe is judged by the strict rule as before; so
    is every candidate with ``"refuse"``.
    """
    metric, task, tolerance = settings.metric, settings.task, settings.tolerance
    fold_cache: list[FoldEvidence | None] = []

    def own_fold() -> FoldEvidence | None:
        if settings.undecided == "refuse" or fold is None:
            return None
        if not fold_cache:
            fold_cache.append(fold())
        return fold_cache[0]

    max_windows_lost = settings.max_windows_lost
    max_slice_degradation = settings.max_slice_degradation
    min_slice_rows = settings.min_slice_rows
    prefer_fresh = settings.prefer_fresh
    y = np.asarray(y_holdout, dtype="float64")
    if y.size == 0:
        raise BacktestError("the holdout holds no row: widen windows.holdout")
    gib = metric in GREATER_IS_BETTER
    candidate_pred = np.asarray(candidate_pred, dtype="float64")
    cand = score(metric, y, candidate_pred)
    base_pred = (
        baseline_predictions(
            task,
            y_train,
            y.size,
            metric,
            candidate_pred.shape[1] if candidate_pred.ndim == 2 else 0,
        )
        if baseline_pred is None
        else np.asarray(baseline_pred, dtype="float64")
    )
    base = score(metric, y, base_pred)
    reasons: list[str] = []
    passed = True
    if np.isnan(cand):
        passed = False
        reasons.append(f"{metric} is undefined on this holdout (e.g. one class only)")
    elif (
        prefer_fresh
        or settings.significant_baseline == "always"
        or (settings.significant_baseline == "no_champion" and champion_pred is None)
    ):
        base_passed, base_reason = significant_over_baseline(
            metric,
            y,
            candidate_pred,
            base_pred,
            cand,
            base,
            settings.bootstrap_samples,
            settings.seed,
        )
        passed = base_passed
        if not base_passed and champion_pred is None and _better(cand, base, gib):
            # a first model the holdout cannot decide: the forward fold's evidence
            evidence = own_fold()
            if evidence is not None and evidence.passed:
                passed = True
                base_reason = (
                    f"candidate beats the baseline ({cand:.4f} vs {base:.4f}), not "
                    f"significantly on the holdout, and {evidence.reason}: it learned "
                    "something (gate.undecided)"
                )
            elif evidence is not None:
                base_reason += f"; nor on its own training data ({evidence.reason})"
        reasons.append(base_reason)
    elif _better(cand, base, gib):
        reasons.append(f"candidate beats the baseline ({cand:.4f} vs {base:.4f})")
    else:
        stale = (
            same_recipe
            and champion_pred is not None
            and not _better(score(metric, y, np.asarray(champion_pred, dtype="float64")), cand, gib)
        )
        evidence = own_fold() if stale else None
        if evidence is not None and evidence.passed:
            # the champion does no better: both fits of the recipe are stale on this holdout;
            # the champion comparison below decides, on the fold's evidence (gate.undecided)
            reasons.append(
                f"candidate does not beat the baseline on the holdout ({cand:.4f} vs "
                f"{base:.4f}), nor does the champion's fit of the same recipe: both are stale "
                f"here, and {evidence.reason}: it learned something (gate.undecided)"
            )
        else:
            passed = False
            reasons.append(
                f"candidate does not beat the trivial baseline ({cand:.4f} vs {base:.4f}): the "
                "model learned nothing useful on this window"
                + (f"; {evidence.reason}" if evidence is not None else "")
            )

    champ_pred = None if champion_pred is None else np.asarray(champion_pred, dtype="float64")
    leaked = champion_train_end is not None and champion_train_end > holdout_start
    if champ_pred is not None and leaked:
        raise BacktestError(
            f"the champion ({champion_version}) trained on data up to {champion_train_end}, "
            f"inside the holdout that starts at {holdout_start}: the comparison would not be "
            "fair. Retrain with a later --as-of so the holdout lies after both models' "
            "training data."
        )

    windows: list[WindowScore] = []
    ids = np.zeros(y.size, dtype=int) if window_ids is None else np.asarray(window_ids)
    bounds = list(window_bounds) or [(holdout_start, holdout_end)]
    for i, (start, end) in enumerate(bounds):
        mask = ids == i
        if not mask.any():
            continue
        w_cand = score(metric, y[mask], candidate_pred[mask])
        w_champ = None if champ_pred is None else score(metric, y[mask], champ_pred[mask])
        windows.append(
            WindowScore(
                start=str(start),
                end=str(end),
                rows=int(mask.sum()),
                candidate=w_cand,
                baseline=score(metric, y[mask], base_pred[mask]),
                champion=w_champ,
                improvement=None if w_champ is None else _improvement(w_cand, w_champ, gib),
            )
        )

    champ = improvement = low = high = None
    windows_lost = None
    slice_scores: list[SliceScore] = []
    if champ_pred is not None:
        champ = score(metric, y, champ_pred)
        improvement = _improvement(cand, champ, gib)
        low, high = paired_bootstrap(
            metric, y, candidate_pred, champ_pred, settings.bootstrap_samples, settings.seed, gib
        )
        windows_lost = sum(1 for w in windows if (w.improvement or 0.0) < 0)
        if max_windows_lost is not None and windows_lost > max_windows_lost:
            passed = False
            reasons.append(
                f"candidate loses {windows_lost} of {len(windows)} backtest windows to the "
                f"champion (at most {max_windows_lost} allowed)"
            )
        elif len(windows) > 1:
            reasons.append(f"candidate loses {windows_lost} of {len(windows)} backtest windows")
        for feature, values in (slices or {}).items():
            as_str = pd.Series(values).astype("string").fillna("<missing>").to_numpy()
            for value in sorted(set(as_str)):
                mask = as_str == value
                if int(mask.sum()) < min_slice_rows:
                    continue
                s_cand = score(metric, y[mask], candidate_pred[mask])
                s_champ = score(metric, y[mask], champ_pred[mask])
                worse = -_improvement(s_cand, s_champ, gib)
                degradation = worse / abs(s_champ) if s_champ else float(worse > 0)
                slice_scores.append(
                    SliceScore(feature, str(value), int(mask.sum()), s_cand, s_champ, degradation)
                )
        if max_slice_degradation is not None:
            bad = [sl for sl in slice_scores if sl.degradation > max_slice_degradation]
            if bad:
                passed = False
                worst = max(bad, key=lambda sl: sl.degradation)
                reasons.append(
                    f"{len(bad)} slice(s) degrade by more than {max_slice_degradation:.0%}, worst "
                    f"{worst.feature}={worst.value} ({worst.degradation:+.1%}, {worst.rows} rows)"
                )
        allowed = tolerance * abs(champ)
        lower = improvement if np.isnan(low) else low
        upper = improvement if np.isnan(high) else high
        if improvement >= -allowed and lower >= -allowed:
            reasons.append(
                f"candidate {'beats' if improvement > 0 else 'is within tolerance of'} the "
                f"champion v{champion_version} ({cand:.4f} vs {champ:.4f}; 95% CI of the "
                f"improvement {low:+.4f} to {high:+.4f})"
            )
        elif same_recipe and settings.undecided != "refuse" and not prefer_fresh:
            # a refit of the champion's recipe (gate.undecided): non-inferiority over the
            # holdout's partitions, and the fold's evidence that it learned something
            block_low, block_high = (
                paired_bootstrap(
                    metric,
                    y,
                    candidate_pred,
                    champ_pred,
                    settings.bootstrap_samples,
                    settings.seed,
                    gib,
                    blocks=blocks,
                )
                if blocks is not None
                else (low, high)
            )
            top = improvement if np.isnan(block_high) else block_high
            interval = f"95% CI of the improvement over partitions {block_low:+.4f} to {top:+.4f}"
            served = top < -allowed and shift_served and passed
            # non-inferiority with a margin of half the champion's effect over the trivial
            # baseline (the usual margin of non-inferiority designs: keep at least half the
            # active control's effect over placebo). A refit of the same recipe on rows its
            # champion's refit mostly shares cannot lose half the recipe's skill unless its
            # data differ from those rows, which is what the served-change argument assumes
            effect = _improvement(champ, base, gib)  # the champion's over the baseline
            margin = 0.5 * max(effect, 0.0)
            bottom = improvement if np.isnan(block_low) else block_low
            kept = served and bottom > -margin
            evidence = own_fold() if passed and (top >= -allowed or kept) else None
            held = (
                f"it keeps at least half of the champion's {effect:+.4f} "
                f"over the baseline ({base:.4f}): the {interval} is above -{margin:.4f}"
            )
            if kept and evidence is not None and evidence.passed:
                reasons.append(
                    f"candidate is worse than the champion v{champion_version}'s validated fit "
                    f"({cand:.4f} vs {champ:.4f}; the whole {interval} is below "
                    f"-{allowed:.4f}), but the champion's served refit already learned every "
                    "row this fit added over that fit and none of those it dropped: keeping "
                    "it would not undo the change of data the holdout judged; the fresher fit "
                    f"serves (gate.undecided); {held}; {evidence.reason}"
                )
            elif served:
                passed = False
                if not kept:
                    why = (
                        f"it loses more than half of the champion's "
                        f"{effect:+.4f} over the baseline ({base:.4f}): "
                        f"the {interval} reaches below -{margin:.4f}"
                    )
                else:
                    why = evidence.reason if evidence is not None else "no fold could be built"
                reasons.append(
                    f"candidate is worse than the champion v{champion_version} ({cand:.4f} vs "
                    f"{champ:.4f}): a refit of its recipe, significantly worse (the whole "
                    f"{interval} is below -{allowed:.4f}), and no evidence that it is the same "
                    f"recipe's fit of those rows and learned something ({why}): the champion "
                    "stays (gate.undecided)"
                )
            elif top < -allowed:
                passed = False
                reasons.append(
                    f"candidate is worse than the champion v{champion_version} ({cand:.4f} vs "
                    f"{champ:.4f}): a refit of its recipe, significantly worse (the whole "
                    f"{interval} is below -{allowed:.4f}): the champion stays (gate.undecided)"
                )
            elif evidence is not None and evidence.passed:
                reasons.append(
                    f"candidate ties the champion v{champion_version} ({cand:.4f} vs "
                    f"{champ:.4f}; {interval}) and is a refit of its recipe on newer data: "
                    f"the fresher fit wins the tie (gate.undecided); {evidence.reason}"
                )
            elif evidence is not None:
                passed = False
                reasons.append(
                    f"candidate ties the champion v{champion_version} ({cand:.4f} vs "
                    f"{champ:.4f}; {interval}) as a refit of its recipe, but {evidence.reason}: "
                    "no evidence that it learned something; the champion stays (gate.undecided)"
                )
            else:
                passed = False
                reasons.append(
                    f"candidate ties the champion v{champion_version} ({cand:.4f} vs "
                    f"{champ:.4f}; {interval}) as a refit of its recipe: the champion stays "
                    "(the checks above refuse it, or the fold could not be built)"
                )
        elif prefer_fresh and upper >= -allowed:
            # a tie: the fresher candidate wins it (the baseline check above asked for
            # evidence that it learned something)
            reasons.append(
                f"candidate ties the champion v{champion_version} ({cand:.4f} vs {champ:.4f}; "
                f"the 95% CI of the improvement {low:+.4f} to {high:+.4f} shows neither "
                "better): the fresher candidate wins the tie (gate.prefer_fresh)"
            )
        elif improvement >= -allowed:
            passed = False
            reasons.append(
                f"candidate may be worse than the champion v{champion_version}: the 95% CI of "
                f"the improvement reaches {low:+.4f}, below the {tolerance:.1%} tolerance "
                f"(-{allowed:.4f}): the champion stays"
            )
        else:
            passed = False
            significantly = (
                f"; the whole 95% CI of the improvement, {low:+.4f} to {high:+.4f}, is below "
                f"-{allowed:.4f}"
                if prefer_fresh
                else ""
            )
            reasons.append(
                f"candidate is worse than the champion v{champion_version} ({cand:.4f} vs "
                f"{champ:.4f}, more than the {tolerance:.1%} tolerance{significantly}): the "
                "champion stays"
            )
    else:
        reasons.append("no champion yet: the candidate only has to beat the baseline")

    return BacktestResult(
        metric=metric,
        greater_is_better=gib,
        holdout_start=str(holdout_start),
        holdout_end=str(holdout_end),
        rows=int(y.size),
        candidate=cand,
        baseline=base,
        champion=champ,
        champion_version=champion_version,
        improvement=improvement,
        ci_low=low,
        ci_high=high,
        tolerance=tolerance,
        passed=passed,
        reasons=tuple(reasons),
        windows=tuple(windows),
        windows_lost=windows_lost,
        slices=tuple(slice_scores),
    )
