"""The statistics of live tests: confidence intervals, sample size, mSPRT, Thompson sampling.

>>> sample_size(sigma=1.0, delta=0.2, alpha=0.05, power=0.8)
393
>>> round(welch([1.0, 2.0, 3.0] * 50, [2.0, 3.0, 4.0] * 50, alpha=0.05).effect, 6)
1.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Comparison:
    """``effect`` = mean(b) - mean(a) with its (1 - alpha) interval and a two-sided p-value."""

    effect: float
    low: float
    high: float
    p_value: float
    n_a: int
    n_b: int


NORMAL = NormalDist()


def _z(alpha: float) -> float:
    return NORMAL.inv_cdf(1 - alpha / 2)


def _two_sided(z: float) -> float:
    return 2 * (1 - NORMAL.cdf(abs(z)))


def mean_ci(values: Sequence[float], alpha: float) -> tuple[float, float, float]:
    """Mean and its normal-approximation (1 - alpha) interval (nan for no values)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan, math.nan
    half = _z(alpha) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return mean, mean - half, mean + half


def welch(a: Sequence[float], b: Sequence[float], alpha: float) -> Comparison:
    """Unpaired comparison of two arms (Welch's z approximation, fine at live-test sizes)."""
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if xa.size < 2 or xb.size < 2:
        return Comparison(math.nan, math.nan, math.nan, math.nan, int(xa.size), int(xb.size))
    effect = float(xb.mean() - xa.mean())
    se = math.sqrt(xa.var(ddof=1) / xa.size + xb.var(ddof=1) / xb.size)
    if se == 0.0:
        p = 1.0 if effect == 0 else 0.0
        return Comparison(effect, effect, effect, p, int(xa.size), int(xb.size))
    half = _z(alpha) * se
    p = _two_sided(effect / se)
    return Comparison(effect, effect - half, effect + half, p, int(xa.size), int(xb.size))


def paired(a: Sequence[float], b: Sequence[float], alpha: float) -> Comparison:
    """Paired comparison (shadow: both arms scored the same requests): mean of b - a."""
    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    if d.size < 2:
        return Comparison(math.nan, math.nan, math.nan, math.nan, int(d.size), int(d.size))
    effect = float(d.mean())
    se = float(d.std(ddof=1)) / math.sqrt(d.size)
    if se == 0.0:
        p = 1.0 if effect == 0 else 0.0
        return Comparison(effect, effect, effect, p, int(d.size), int(d.size))
    half = _z(alpha) * se
    p = _two_sided(effect / se)
    return Comparison(effect, effect - half, effect + half, p, int(d.size), int(d.size))


def sample_size(sigma: float, delta: float, alpha: float, power: float) -> int:
    """Requests per arm for a two-sided test of a difference ``delta`` (outcome s.d. ``sigma``)."""
    if delta <= 0 or not math.isfinite(delta):
        raise ValueError(f"the minimum detectable effect must be positive, got {delta}")
    z = _z(alpha) + NORMAL.inv_cdf(power)
    return math.ceil(2 * (z * sigma / delta) ** 2)


def msprt_p_value(a: Sequence[float], b: Sequence[float], tau: float) -> float:
    """Always-valid p-value of "mean(b) = mean(a)" (mSPRT, normal mixture N(0, tau^2)).

    Johari, Pekelis & Walsh (2017): the p-value may be read after every request and a test that
    stops as soon as it drops below alpha keeps its type-I error at alpha. The outcomes are taken
    in the order given (time order), pairing the i-th of each arm; the variance is the plug-in
    pooled variance.
    """
    n = min(len(a), len(b))
    if n < 2:
        return 1.0
    xa, xb = np.asarray(a, dtype=float)[:n], np.asarray(b, dtype=float)[:n]
    var = float(np.var(np.concatenate([xa, xb]), ddof=1))
    if var == 0.0:
        return 1.0 if float(xb.mean() - xa.mean()) == 0 else 0.0
    k = np.arange(1, n + 1)
    diff = np.cumsum(xb - xa) / k
    v = 2 * var / k  # variance of the running difference of means
    t2 = tau**2
    log_lambda = 0.5 * np.log(v / (v + t2)) + (t2 * diff**2) / (2 * v * (v + t2))
    p = np.minimum(1.0, np.exp(-np.maximum.accumulate(log_lambda)))
    return float(p[-1])


def _posterior_draws(values: Sequence[float], draws: int, rng: np.random.Generator) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return rng.normal(0.0, 1e6, draws)  # no information: a flat prior
    return rng.normal(float(x.mean()), float(x.std(ddof=1)) / math.sqrt(x.size) + 1e-12, draws)


def prob_better(
    champion: Sequence[float],
    challenger: Sequence[float],
    greater_is_better: bool,
    draws: int = 20_000,
    seed: int = 0,
) -> float:
    """Posterior probability (normal approximation, flat prior) that the challenger is better."""
    rng = np.random.default_rng(seed)
    a = _posterior_draws(champion, draws, rng)
    b = _posterior_draws(challenger, draws, rng)
    better = b > a if greater_is_better else b < a
    return float(better.mean())


def thompson_share(
    champion: Sequence[float],
    challenger: Sequence[float],
    greater_is_better: bool,
    floor: float,
    draws: int = 20_000,
    seed: int = 0,
) -> float:
    """The challenger's traffic share under Thompson sampling: the probability that it is the
    better arm, kept within [floor, 1 - floor] so that neither arm is starved."""
    share = prob_better(champion, challenger, greater_is_better, draws, seed)
    return float(min(max(share, floor), 1 - floor))


def binomial_p_value(wins: int, trials: int) -> float:
    """Two-sided p-value of ``wins`` in ``trials`` under a fair coin (interleaving credit)."""
    if trials == 0:
        return 1.0
    return float(stats.binomtest(wins, trials, 0.5).pvalue)
