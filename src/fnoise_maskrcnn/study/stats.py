"""Statistics over seeds: mean ± std, differences with Student's t intervals and p-values, Holm."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "Stat",
    "Difference",
    "describe",
    "t975",
    "t_two_sided_p",
    "holm",
    "difference",
    "common_seed_difference",
    "seed_differences",
]


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (``ddof=1``; ``None`` for one value) of ``values`` over seeds."""

    mean: float
    std: float | None
    n: int
    values: tuple[float, ...]
    seeds: tuple[Any, ...]


@dataclass(frozen=True)
class Difference:
    """``arm - reference`` for one metric, with its uncertainty from seed to seed.

    Attributes:
        mean: difference of the means.
        std: spread of the difference: for paired seeds the sample std of the per-seed differences,
            otherwise ``sqrt(s1^2 + s2^2)`` scaled so that ``std / sqrt(n)`` is the standard error.
        stderr: standard error of ``mean`` (``None`` when a side has a single seed).
        ci95: 95% confidence interval from Student's t (``None`` when ``stderr`` is ``None``, or 0 with a
            nonzero mean: then every seed gave the same difference, and ``p`` is the exact sign test's).
        paired: whether the same seeds were compared pairwise (same initial weights and data order).
        n: number of pairs (paired) or ``min(n1, n2)``.
        verdict: ``"within seed noise"``, ``"beyond seed noise"`` or ``"seed noise unknown (one seed)"``.
        df: degrees of freedom of the t statistic (``None`` with a single seed).
        p: two-sided p-value of "no difference" from Student's t (``None`` with a single seed; the sign
            test's ``2 * 0.5^n`` when every seed gave the same nonzero difference).
    """

    mean: float
    std: float | None
    stderr: float | None
    ci95: tuple[float, float] | None
    paired: bool
    n: int
    verdict: str
    df: float | None = None
    p: float | None = None


def describe(values: Sequence[float], seeds: Sequence[Any] = ()) -> Stat | None:
    """Mean and sample std of ``values`` (``None`` when empty)."""
    if not values:
        return None
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if array.size > 1 else None
    return Stat(float(array.mean()), std, int(array.size), tuple(float(v) for v in array), tuple(seeds))


# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (beyond: the normal's 1.96).
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t975(df: float) -> float:
    """Two-sided 95% quantile of Student's t with ``df`` degrees of freedom (table value; 1.96 beyond 30)."""
    if df < 1:
        return _T975[0]
    if df > len(_T975):
        return 1.96
    return _T975[int(math.floor(df)) - 1]  # rounding df down is conservative


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz's method)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 300):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= d * c
        if abs(d * c - 1.0) < 1e-14:
            break
    return result


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function ``I_x(a, b)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """Two-sided p-value ``P(|T| >= |t|)`` of Student's t with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return _betainc(df / 2.0, 0.5, df / (df + t * t))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of ``p_values`` (family-wise error rate), in the input order."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def seed_differences(
    values: Sequence[float],
    seeds: Sequence[Any],
    reference_values: Sequence[float],
    reference_seeds: Sequence[Any],
) -> list[float]:
    """``values - reference_values`` seed by seed, over the seeds both sides have (matched by their text,
    so ``0`` and ``"0"`` are one seed), in the order of ``seeds``."""
    by_seed = {str(s): v for s, v in zip(reference_seeds, reference_values)}
    return [v - by_seed[str(s)] for v, s in zip(values, seeds) if str(s) in by_seed]


def difference(arm: Stat, reference: Stat) -> Difference:
    """``arm - reference`` with a 95% confidence interval over seeds.

    When both sides have the same seeds (the study's design: same seed, same initial weights and data
    order), the per-seed differences are used (paired); otherwise Welch's unpaired interval.
    """
    seeds, reference_seeds = sorted(map(str, arm.seeds)), sorted(map(str, reference.seeds))
    paired = bool(seeds) and seeds == reference_seeds and len(set(seeds)) == len(seeds) == arm.n
    if paired:
        diffs = np.array(seed_differences(arm.values, arm.seeds, reference.values, reference.seeds))
        mean, n = float(diffs.mean()), int(diffs.size)
        if n < 2:
            return Difference(mean, None, None, None, True, n, "seed noise unknown (one seed)")
        std = float(diffs.std(ddof=1))
        stderr = std / math.sqrt(n)
        df = float(n - 1)
    else:
        mean, n = arm.mean - reference.mean, min(arm.n, reference.n)
        if arm.std is None or reference.std is None:
            return Difference(mean, None, None, None, False, n, "seed noise unknown (one seed)")
        va, vr = arm.std**2 / arm.n, reference.std**2 / reference.n
        stderr = math.sqrt(va + vr)
        std = stderr * math.sqrt(n)
        denominator = (va**2 / (arm.n - 1) if va else 0.0) + (vr**2 / (reference.n - 1) if vr else 0.0)
        df = (va + vr) ** 2 / denominator if denominator > 0 else float(arm.n + reference.n - 2)
    if stderr == 0.0 and mean != 0.0:
        # Every seed gave the same nonzero difference (a discrete metric such as an epoch, few seeds):
        # Student's t is undefined (0/0), so no interval; the exact sign test gives p = 2 * 0.5^n.
        p = min(1.0, 2.0 * 0.5**n)
        verdict = "beyond seed noise" if p < 0.05 else "within seed noise"
        return Difference(mean, std, stderr, None, paired, n, verdict, df, p)
    half = t975(df) * stderr
    ci = (mean - half, mean + half)
    verdict = "within seed noise" if ci[0] <= 0.0 <= ci[1] else "beyond seed noise"
    p = t_two_sided_p(mean / stderr, df) if stderr > 0 else 1.0
    return Difference(mean, std, stderr, ci, paired, n, verdict, df, p)


def _only_seeds(stat: Stat, seeds: set[str]) -> Stat:
    kept = [(v, s) for v, s in zip(stat.values, stat.seeds) if str(s) in seeds]
    result = describe([v for v, _ in kept], [s for _, s in kept])
    assert result is not None  # seeds are a non-empty subset of stat's
    return result


def common_seed_difference(arm: Stat, reference: Stat) -> Difference:
    """``arm - reference`` paired over the seeds both sides have (a seed complete on one side only is left
    out); unpaired (Welch) when they share no seed. See :func:`difference`."""
    common = {str(s) for s in arm.seeds} & {str(s) for s in reference.seeds}
    if not common:
        return difference(arm, reference)
    return difference(_only_seeds(arm, common), _only_seeds(reference, common))
