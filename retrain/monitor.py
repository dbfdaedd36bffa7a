"""Monitoring signals: how old the champion is, how much new data arrived, whether it drifted,
whether the champion's predictions drifted and whether its quality decayed.

Drift of a feature needs BOTH a significant two-sample test (KS for numeric, chi-squared for
categorical; p-values corrected for the number of features with Holm's method) AND a population
stability index above a threshold, and both samples need a minimum size: a big sample makes
every test significant, so significance alone never counts as drift.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
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


@dataclass(frozen=True)
class DriftReference:
    """What the drift tests need of the champion's training window, computed once per champion.

    ``numeric``: per numeric feature, its non-missing values (a seeded sample of at most
    ``monitor.max_sample_rows`` rows), as float64; ``categorical``: per categorical feature,
    the counts of each category (missing values are a category) over every reference row;
    ``scores``: the champion's scores on the sampled rows. A monitor check reuses it, so a
    check never re-reads or re-scores the reference window (see :func:`drift_reference`).
    """

    rows: int
    numeric: Mapping[str, np.ndarray]
    categorical: Mapping[str, pd.Series]
    scores: np.ndarray | None = None


def sample_rows(frame: pd.DataFrame, max_rows: int, seed: int = 0) -> pd.DataFrame:
    """At most ``max_rows`` rows of ``frame``, a seeded sample in the original order."""
    if len(frame) <= max_rows:
        return frame
    keep = np.sort(np.random.default_rng(seed).choice(len(frame), max_rows, replace=False))
    return frame.iloc[keep]


def drift_reference(
    reference: pd.DataFrame,
    numeric: Sequence[str],
    categorical: Sequence[str],
    *,
    max_rows: int,
    score: Callable[[pd.DataFrame], np.ndarray] | None = None,
    seed: int = 0,
) -> DriftReference:
    """Summarise the reference window once: sampled numeric values, category counts, and the
    champion's scores on the sample (``score``: the champion's ``predict`` on its features)."""
    sample = sample_rows(reference, max_rows, seed)
    values = {col: _clean(sample[col].to_numpy()) for col in numeric if col in reference.columns}
    counts = {
        col: _as_categories(reference[col]).value_counts()
        for col in categorical
        if col in reference.columns
    }
    scores = None if score is None or not len(sample) else np.asarray(score(sample), "float64")
    return DriftReference(len(reference), values, counts, scores)


def _clean(values: np.ndarray) -> np.ndarray:
    """The scores a drift test compares, without NaN: a multiclass model's (rows x classes
    probabilities) as its confidence, the probability of the class it predicts."""
    out = np.asarray(values, dtype="float64")
    if out.ndim == 2:
        out = out.max(axis=1)
    return out[~np.isnan(out)]


def _as_categories(values: np.ndarray | pd.Series) -> pd.Series:
    return pd.Series(values).astype("string").fillna("<missing>")


def _count_table(reference: pd.Series, fresh: np.ndarray) -> np.ndarray:
    """2 x n counts of every category on either side, from the reference's counts."""
    new = _as_categories(fresh).value_counts()
    cats = sorted(set(reference.index) | set(new.index))
    return np.vstack(
        [
            reference.reindex(cats, fill_value=0).to_numpy(),
            new.reindex(cats, fill_value=0).to_numpy(),
        ]
    )


def _psi_of_counts(p: np.ndarray, q: np.ndarray) -> float:
    p = np.clip(p / max(p.sum(), 1.0), 1e-4, None)
    q = np.clip(q / max(q.sum(), 1.0), 1e-4, None)
    return float(np.sum((q - p) * np.log(q / p)))


def _numeric_psi(ref_f: np.ndarray, new_f: np.ndarray, bins: int = 10) -> float:
    if not ref_f.size:
        return 0.0
    edges = np.unique(np.quantile(ref_f, np.linspace(0, 1, bins + 1)))
    if edges.size < 2:
        edges = np.array([ref_f.min() - 0.5, ref_f.max() + 0.5])
    edges[0], edges[-1] = -np.inf, np.inf
    p = np.histogram(ref_f, edges)[0].astype("float64")
    q = np.histogram(new_f, edges)[0].astype("float64")
    return _psi_of_counts(p, q)


def _ks_p(ref_f: np.ndarray, new_f: np.ndarray) -> float:
    if not ref_f.size or not new_f.size:
        return 1.0
    # the asymptotic distribution: the exact one costs more than the rest of a check, and the
    # monitor only tests samples of at least monitor.min_rows rows
    return float(stats.ks_2samp(ref_f, new_f, method="asymp").pvalue)


def psi(reference: np.ndarray, fresh: np.ndarray, categorical: bool, bins: int = 10) -> float:
    """Population stability index of ``fresh`` against ``reference``.

    >>> round(psi(np.arange(1000.0), np.arange(1000.0), categorical=False), 6)
    0.0
    >>> psi(np.array(["a"] * 50 + ["b"] * 50), np.array(["a"] * 90 + ["b"] * 10), True) > 0.25
    True
    """
    if categorical:
        p, q = _category_counts(reference, fresh).astype("float64")
        return _psi_of_counts(p, q)
    return _numeric_psi(_clean(reference), _clean(fresh), bins)


def two_sample_p(reference: np.ndarray, fresh: np.ndarray, categorical: bool) -> float:
    """KS test (numeric) or chi-squared test of the category counts (categorical)."""
    if categorical:
        table = _category_counts(reference, fresh)
        if table.shape[1] < 2:
            return 1.0
        return float(stats.chi2_contingency(table)[1])
    return _ks_p(_clean(reference), _clean(fresh))


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
    present = [col for col in features if col in fresh.columns]
    empty_by_partition = (
        fresh[present].isna().groupby(fresh[PARTITION]).all()
        if present and len(fresh) and PARTITION in fresh.columns
        else None
    )
    for col in present:
        if not len(fresh):
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
        elif empty_by_partition is not None:
            empty = empty_by_partition[col]
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
    reference: pd.DataFrame | DriftReference,
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
    data_end: pd.Timestamp | None = None,
    seed: int = 0,
) -> list[Signal]:
    """Every signal of one monitor check (pure: data in, signals out).

    ``reference`` is the champion's training window, or its :class:`DriftReference` summary
    computed once per champion (the cheap way: a check then reads and scores the fresh rows
    only). Both samples are capped at ``monitor.max_sample_rows`` rows (seeded). ``data_end``:
    the champion's last training row; the age signal is its data age (``now`` minus it), and
    counts from ``champion_train_end`` when it is not known.
    """
    since = data_end if data_end is not None else champion_train_end
    age_days = (now - since) / pd.Timedelta(days=1)
    max_age = config.max_age_delta / pd.Timedelta(days=1)
    signals = [
        Signal(
            "age",
            float(age_days),
            max_age,
            age_days >= max_age,
            detail=(
                f"data age {age_days:.1f} days (the champion's last training row: {since})"
                if data_end is not None
                else f"{age_days:.1f} days since the champion's training end"
            ),
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
    if not isinstance(reference, DriftReference):
        reference = drift_reference(
            reference,
            [c for c, cat in usable if not cat],
            [c for c, cat in usable if cat],
            max_rows=config.max_sample_rows,
            seed=seed,
        )
    enough = reference.rows >= config.min_rows and len(fresh) >= config.min_rows
    if reference_scores is None:
        reference_scores = reference.scores
    if usable and enough:
        sample = sample_rows(fresh, config.max_sample_rows, seed + 1)
        tests: list[tuple[float, float]] = []  # (raw p, PSI) per usable feature
        for col, cat in usable:
            if cat:
                table = _count_table(reference.categorical[col], sample[col].to_numpy())
                p_raw = 1.0 if table.shape[1] < 2 else float(stats.chi2_contingency(table)[1])
                tests.append((p_raw, _psi_of_counts(*table.astype("float64"))))
            else:
                ref_f, new_f = reference.numeric[col], _clean(sample[col].to_numpy())
                tests.append((_ks_p(ref_f, new_f), _numeric_psi(ref_f, new_f)))
        adjusted = holm([p for p, _ in tests])
        for (col, cat), p_adj, (_, value) in zip(usable, adjusted, tests, strict=True):
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
                detail=f"not tested: {len(fresh)} fresh and {reference.rows} reference rows, "
                f"monitor.min_rows = {config.min_rows}",
            )
        )
    if reference_scores is not None and fresh_scores is not None and enough:
        ref_s = _clean(reference_scores)
        new_s = _clean(fresh_scores)
        if new_s.size > config.max_sample_rows:
            pick = np.random.default_rng(seed + 2).choice(new_s.size, config.max_sample_rows, False)
            new_s = new_s[np.sort(pick)]
        value = _numeric_psi(ref_s, new_s)
        p_value = _ks_p(ref_s, new_s)
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
