"""95% intervals: bootstrap over a cell's samples, normal intervals from standard errors, and
paired differences between two cells that share their samples' x_T.

A statistic is a function of an index array (which samples of the cell to use), so one bootstrap serves
every metric, and a paired difference resamples the same indices in both cells (sample i of every solver
of a group started from the same x_T).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% normal quantile
REPS = 50  # bootstrap resamples: their standard deviation, the standard error, is then known to about 10%


def resamples(n: int, seed: int, reps: int = REPS) -> np.ndarray:
    """(reps, n) indices drawn with replacement from a generator seeded by `seed` (the same for paired cells)."""
    if n < 2:
        raise ValueError(f"a bootstrap needs at least 2 samples, got {n}")
    return np.random.default_rng(seed).integers(0, n, size=(reps, n))


def bootstrap(stat: Callable[[np.ndarray | None], float], n: int, seed: int, reps: int = REPS) -> tuple[float, float,
                                                                                                         float]:
    """(value on every sample, lo, hi): value +- 1.96 bootstrap standard errors of `stat(indices)`.

    The normal bootstrap interval, not the percentile one: resampling with replacement duplicates samples,
    which biases distribution distances (FID, SWD) upwards, so the replicates' quantiles sit above the
    value; their spread still estimates its standard error. stat(None) is the statistic on every sample.
    """
    value = float(stat(None))
    draws = np.array([stat(idx) for idx in resamples(n, seed, reps)], dtype=float)
    draws = draws[np.isfinite(draws)]
    if len(draws) < reps // 2:
        return value, math.nan, math.nan
    return normal(value, float(draws.std(ddof=1)))


def normal(value: float, se: float) -> tuple[float, float, float]:
    """(value, value - 1.96 se, value + 1.96 se)."""
    return float(value), float(value - Z95 * se), float(value + Z95 * se)


def paired(stat_a: Callable, stat_b: Callable, n: int, seed: int, reps: int = REPS) -> tuple[float, float, float]:
    """stat_a - stat_b on every sample, with the percentile bootstrap interval over shared resamples."""
    return bootstrap(lambda idx: stat_a(idx) - stat_b(idx), n, seed, reps)


def overlap(lo_a, hi_a, lo_b, hi_b) -> bool:
    """Whether two intervals overlap (an unknown bound counts as overlapping: no claim without an interval)."""
    if not all(math.isfinite(v) for v in (lo_a, hi_a, lo_b, hi_b)):
        return True
    return lo_a <= hi_b and lo_b <= hi_a


def excludes_zero(lo: float, hi: float) -> bool:
    return math.isfinite(lo) and math.isfinite(hi) and (lo > 0 or hi < 0)
