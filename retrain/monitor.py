"""Monitoring signals: how old the champion is, how much new data arrived, whether it drifted,
whether the champion's predictions drifted and whether its quality decayed.

Drift of a feature needs BOTH a significant two-sample test (KS for numeric, chi-squared for
categorical; p-values corrected for the number of features with Holm's method) AND a population
stability index above a threshold, and both samples need a minimum size: a big sample makes
every test significant, so significance alone never counts as drift.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from retrain.backtest import score
from retrain.config import MonitorSpec
from retrain.features import PARTITION

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Signal:
    """One measured signal. ``fired`` says whether it crossed its threshold."""

    name: str  # age | volume | drift | prediction_drift | quality | data_problem
    value: float
    threshold: float | None
    fired: bool
    feature: str | None = None
    p_value: float | None = None
    detail: str = ""


def _category_counts(reference: np.ndarray, fresh: np.ndarray) -> np.ndarray:
    """2 x n counts of every category seen on either side (missing values are a category)."""
    ref = pd.Series(reference).astype("string").fillna("<missing>")
    new = pd.Series(fresh).astype("string").fillna("<missing>")
    cats = sorted(set(ref) | set(new))
    return np.vstack(
        [
            ref.value_counts().reindex(cats, fill_value=0).to_numpy(),
            new.value_counts().reindex(cats, fill_value=0).to_numpy(),
        ]
    )


def psi(reference: np.ndarray, fresh: np.ndarray, categorical: bool, bins: int = 10) -> float:
    """Population stability index of ``fresh`` against ``reference``.

    >>> round(psi(np.arange(1000.0), np.arange(1000.0), categorical=False), 6)
    0.0
    >>> psi(np.array(["a"] * 50 + ["b"] * 50), np.array(["a"] * 90 + ["b"] * 10), True) > 0.25
    True
    """
    if categorical:
        p, q = _category_counts(reference, fresh).astype("float64")
    else:
        ref_f = np.asarray(reference, dtype="float64")
        new_f = np.asarray(fresh, dtype="float64")
        ref_f, new_f = ref_f[~np.isnan(ref_f)], new_f[~np.isnan(new_f)]
        edges = np.unique(np.quantile(ref_f, np.linspace(0, 1, bins + 1)))
        if edges.size < 2:
            edges = np.array([ref_f.min() - 0.5, ref_f.max() + 0.5])
        edges[0], edges[-1] = -np.inf, np.inf
        p = np.histogram(ref_f, edges)[0].astype("float64")
        q = np.histogram(new_f, edges)[0].astype("float64")
    p = np.clip(p / max(p.sum(), 1.0), 1e-4, None)
    q = np.clip(q / max(q.sum(), 1.0), 1e-4, None)
    return float(np.sum((q - p) * np.log(q / p)))


def two_sample_p(reference: np.ndarray, fresh: np.ndarray, categorical: bool) -> float:
    """KS test (numeric) or chi-squared test of the category counts (categorical)."""
    if categorical:
        table = _category_counts(reference, fresh)
        if table.shape[1] < 2:
            return 1.0
        return float(stats.chi2_contingency(table)[1])
    ref_f = np.asarray(reference, dtype="float64")
    new_f = np.asarray(fresh, dtype="float64")
    return float(stats.ks_2samp(ref_f[~np.isnan(ref_f)], new_f[~np.isnan(new_f)]).pvalue)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given).

    >>> holm([0.01, 0.04, 0.03])
    [0.03, 0.06, 0.06]
    """
    p = np.asarray(p_values, dtype="float64")
    order = np.argsort(p)
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[idx]))
        adjusted[idx] = running
    return [round(float(v), 12) for v in adjusted]


def data_problems(
    fresh: pd.DataFrame, features: Sequence[str], partition_rows: dict[str, int]
) -> list[Signal]:
    """Garbage that must never trigger a retrain: missing or all-null features, empty partitions."""
    problems = [
        Signal(
            "data_problem",
            1.0,
            None,
            True,
            feature=col,
            detail=f"feature {col!r} is missing from the fresh data",
        )
        for col in features
        if col not in fresh.columns
    ]
    for col in features:
        if col not in fresh.columns or not len(fresh):
            continue
        if fresh[col].isna().all():
            problems.append(
                Signal(
                    "data_problem",
                    1.0,
                    None,
                    True,
                    feature=col,
                    detail=f"feature {col!r} is null in every fresh row",
                )
            )
        elif PARTITION in fresh.columns:
            empty = fresh[col].isna().groupby(fresh[PARTITION]).all()
            bad = sorted(str(k) for k in empty[empty].index)
            if bad:
                more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
                problems.append(
                    Signal(
                        "data_problem",
                        float(len(bad)),
                        None,
                        True,
                        feature=col,
                        detail=f"feature {col!r} is null in every row of partition(s) "
                        f"{', '.join(bad[:3])}{more}: the column is missing from new data",
                    )
                )
    for key, rows in partition_rows.items():
        if rows == 0:
            problems.append(
                Signal("data_problem", 1.0, None, True, detail=f"partition {key} has zero rows")
            )
    return problems


def quarantine_problem(quarantined: dict[str, str]) -> list[Signal]:
    """Fresh partitions that ingest quarantined (key -> reason): one blocking data problem.

    A trigger must not fire on what is left while part of the fresh data is unusable: the
    operator fixes or removes the bad delivery first (the reason says how).

    >>> [s.detail for s in quarantine_problem({"2011-08-16": "file b.csv lacks 'hum'"})]
    ["1 fresh partition(s) quarantined (2011-08-16): file b.csv lacks 'hum'"]
    """
    if not quarantined:
        return []
    keys = sorted(quarantined)
    more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
    return [
        Signal(
            "data_problem",
            float(len(keys)),
            None,
            True,
            detail=f"{len(keys)} fresh partition(s) quarantined ({', '.join(keys[:3])}{more}): "
            f"{quarantined[keys[0]]}",
        )
    ]


def compute_signals(
    *,
    config: MonitorSpec,
    numeric: Sequence[str],
    categorical: Sequence[str],
    reference: pd.DataFrame,
    fresh: pd.DataFrame,
    champion_train_end: pd.Timestamp,
    now: pd.Timestamp,
    partition_rows: dict[str, int],
    reference_scores: np.ndarray | None = None,
    fresh_scores: np.ndarray | None = None,
    labelled: tuple[np.ndarray, np.ndarray] | None = None,
    metric: str | None = None,
    backtest_metric: float | None = None,
    greater_is_better: bool = False,
) -> list[Signal]:
    """Every signal of one monitor check (pure: data in, signals out)."""
    age_days = (now - champion_train_end) / pd.Timedelta(days=1)
    max_age = config.max_age_delta / pd.Timedelta(days=1)
    signals = [
        Signal(
            "age",
            float(age_days),
            max_age,
            age_days >= max_age,
            detail=f"{age_days:.1f} days since the champion's training end",
        ),
        Signal(
            "volume",
            float(len(fresh)),
            float(config.min_new_rows),
            len(fresh) >= config.min_new_rows,
            detail=f"{len(fresh)} new rows since the champion's training end",
        ),
    ]
    problems = data_problems(fresh, [*numeric, *categorical], partition_rows)
    signals += problems
    bad = {s.feature for s in problems if s.feature}
    usable = [(c, False) for c in numeric if c not in bad] + [
        (c, True) for c in categorical if c not in bad
    ]
    enough = len(reference) >= config.min_rows and len(fresh) >= config.min_rows
    if usable and enough:
        raw = [two_sample_p(reference[c].to_numpy(), fresh[c].to_numpy(), cat) for c, cat in usable]
        for (col, cat), p_adj in zip(usable, holm(raw), strict=True):
            value = psi(reference[col].to_numpy(), fresh[col].to_numpy(), cat)
            fired = p_adj < config.alpha and value >= config.psi_threshold
            signals.append(
                Signal(
                    "drift",
                    value,
                    config.psi_threshold,
                    fired,
                    feature=col,
                    p_value=p_adj,
                    detail=f"PSI {value:.3f}, {'chi-squared' if cat else 'KS'} "
                    f"p={p_adj:.2g} (Holm-adjusted)",
                )
            )
    elif usable:
        signals.append(
            Signal(
                "drift",
                0.0,
                config.psi_threshold,
                False,
                detail=f"not tested: {len(fresh)} fresh and {len(reference)} reference rows, "
                f"monitor.min_rows = {config.min_rows}",
            )
        )
    if reference_scores is not None and fresh_scores is not None and enough:
        value = psi(reference_scores, fresh_scores, categorical=False)
        p_value = two_sample_p(reference_scores, fresh_scores, categorical=False)
        signals.append(
            Signal(
                "prediction_drift",
                value,
                config.psi_threshold,
                p_value < config.alpha and value >= config.psi_threshold,
                p_value=p_value,
                detail=f"PSI {value:.3f} of the champion's scores, KS p={p_value:.2g}",
            )
        )
    if labelled is not None and metric and backtest_metric is not None:
        y, pred = labelled
        if len(y) >= config.min_rows:
            now_metric = score(metric, y, pred)
            worse = (
                (backtest_metric - now_metric)
                if greater_is_better
                else (now_metric - backtest_metric)
            )
            decay = worse / abs(backtest_metric) if backtest_metric else 0.0
            signals.append(
                Signal(
                    "quality",
                    float(decay),
                    config.quality_decay,
                    decay >= config.quality_decay,
                    detail=f"{metric} {now_metric:.4f} on {len(y)} newly labelled rows vs "
                    f"{backtest_metric:.4f} at its backtest ({decay:+.1%})",
                )
            )
    return signals
