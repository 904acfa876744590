"""Statistics of evaluation returns: the mean with its t-based 95% confidence interval, and Welch's
interval for the difference of two methods' means. One owner, so every printed or saved score (evaluate.py,
the PPO baseline's own evaluation) is summarised the same way."""

from __future__ import annotations

import math

import numpy as np


def t_quantile_975(dof: float) -> float:
    """Two-sided 95% quantile of Student's t with `dof` degrees of freedom (inf for none)."""
    from scipy import stats

    return float(stats.t.ppf(0.975, dof)) if dof > 0 else math.inf


def mean_with_ci95(returns: np.ndarray) -> tuple[float, float, float, float]:
    """(mean, sample std (ddof=1), CI low, CI high) of `returns` (n,): the t-based 95% confidence interval
    of the mean. One return has std 0 and an infinite interval."""
    n = len(returns)
    mean = float(np.mean(returns))
    std = float(np.std(returns, ddof=1)) if n > 1 else 0.0
    half_width = t_quantile_975(n - 1) * std / math.sqrt(n) if n > 1 else math.inf
    return mean, std, mean - half_width, mean + half_width


def difference_of_means(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """mean(a) - mean(b) with Welch's 95% confidence interval (unequal variances)."""
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    difference = float(np.mean(a) - np.mean(b))
    se = math.sqrt(va + vb)
    if se == 0:
        return difference, difference, difference
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half_width = t_quantile_975(dof) * se
    return difference, difference - half_width, difference + half_width
