"""Measured convergence order: the one rule, used by `bench check`, `solvers.testing`, the report and baselines.

`fit(nfe, error)` fits error ~ C NFE^-p over the asymptotic range, detected from the data:

1. Keep the points with a finite NFE > 0 and a finite error > 0 (and error above `floor`, the
   accuracy of the reference solution, where one is given); average log(error) over repeated NFE
   values (seeds): the log of the geometric mean.
2. Local slopes p_i = -(log e_{i+1} - log e_i) / (log n_{i+1} - log n_i) between neighbouring NFE.
3. The asymptotic range grows from the two largest NFE downwards while the next local slope lies
   within `SLOPE_TOL` of the median local slope of the range so far (the curve is a straight line
   there; pre-asymptotic points bend away from it).
4. The range is long enough when it holds at least `MIN_POINTS` NFE values spanning a factor of at
   least `MIN_SPAN`. Then p is minus the least-squares slope of log(error) on log(NFE) over it, with
   a 95% interval from the regression's standard error (Student t). Otherwise the order is NaN and
   the fit says "range too short to measure (NFE a–b)".

A measured order passes against a declared order p when it lies in `order_band(p)` = [p - 0.3, p + 0.5]
(issue 12), as torchsde's diagnostics and diffrax's `test_ode_order` hold slopes against declarations.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

MIN_POINTS = 3  # NFE values in the fitted range
MIN_SPAN = 4.0  # largest / smallest NFE of the fitted range (two halvings)
SLOPE_TOL = 0.35  # a local slope this far from the range's median slope ends the range
BAND_BELOW, BAND_ABOVE = 0.3, 0.5  # the order band: [declared - 0.3, declared + 0.5]


@dataclass(frozen=True)
class OrderFit:
    order: float  # NaN when the range is too short
    lo: float  # 95% interval of the order
    hi: float
    nfe: tuple  # NFE values of the fitted range (or of every usable point when too short)
    local: tuple  # local slopes between neighbouring usable NFE values, smallest NFE first

    @property
    def ok(self) -> bool:
        return math.isfinite(self.order)

    @property
    def nfe_range(self) -> str:
        return f"{_int(self.nfe[0])}–{_int(self.nfe[-1])}" if len(self.nfe) >= 2 else (
            f"{_int(self.nfe[0])}" if self.nfe else "—")

    @property
    def note(self) -> str:
        """'' when measured, else why not."""
        if self.ok:
            return ""
        if len(self.nfe) < 2:
            return "fewer than two usable NFE values"
        return f"range too short to measure (NFE {self.nfe_range})"


def _int(v: float) -> str:
    return f"{v:.0f}" if float(v).is_integer() else f"{v:g}"


def _float(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _floats(values) -> np.ndarray:
    """Values as float64, NaN where a value is missing or not a number (pandas' NA and None included)."""
    return np.array([_float(v) for v in values], dtype=np.float64)


def usable_points(nfe, error, floor: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(distinct NFE, mean log error) of the usable points, sorted by NFE (steps 1 of the rule)."""
    n, e = _floats(nfe), _floats(error)
    if n.shape != e.shape:
        raise ValueError(f"nfe and error must have the same length, got {n.shape} and {e.shape}")
    with np.errstate(invalid="ignore"):
        keep = np.isfinite(n) & (n > 0) & np.isfinite(e) & (e > max(float(floor), 0.0))
    if not keep.any():
        return np.empty(0), np.empty(0)
    x, inverse = np.unique(n[keep], return_inverse=True)
    y = np.bincount(inverse, weights=np.log(e[keep])) / np.bincount(inverse)
    return x.astype(float), y.astype(float)


def asymptotic_points(nfe, error, floor: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The (NFE, mean log error) points of the asymptotic range (steps 2–3), which may be too short to fit."""
    x, y = usable_points(nfe, error, floor)
    if len(x) < 2:
        return x, y
    local = -np.diff(y) / np.diff(np.log(x))
    start = len(x) - 2  # the range holds x[start:], i.e. the local slopes local[start:]
    while start > 0 and abs(local[start - 1] - np.median(local[start:])) <= SLOPE_TOL:
        start -= 1
    return x[start:], y[start:]


def slope_order(nfe, error) -> float:
    """Minus the least-squares slope of log(error) on log(NFE) over exactly these points: step 4 of the rule without
    the range detection (for resampling a fitted range, e.g. a jackknife over samples); NaN below two usable points."""
    x, y = usable_points(nfe, error)
    return float(-stats.linregress(np.log(x), y).slope) if len(x) >= 2 else math.nan


def fit(nfe, error, floor: float = 0.0) -> OrderFit:
    """The measured order over the detected asymptotic range, with its interval (see the module docstring)."""
    ux, uy = usable_points(nfe, error, floor)
    local = tuple(float(v) for v in -np.diff(uy) / np.diff(np.log(ux))) if len(ux) >= 2 else ()
    x, y = asymptotic_points(nfe, error, floor)
    if len(x) < MIN_POINTS or x[-1] / x[0] < MIN_SPAN:
        return OrderFit(math.nan, math.nan, math.nan, tuple(map(float, ux)), local)
    res = stats.linregress(np.log(x), y)
    half = float(stats.t.ppf(0.975, len(x) - 2) * res.stderr) if len(x) > 2 else math.nan
    order = float(-res.slope)
    return OrderFit(order, order - half, order + half, tuple(map(float, x)), local)


def fit_order(nfe, error, floor: float = 0.0) -> float:
    """Measured order p of error ~ C NFE^-p over the asymptotic range; NaN when that range is too short."""
    return fit(nfe, error, floor).order


def order_band(declared: float) -> tuple[float, float]:
    """The band [p - 0.3, p + 0.5] a measured order must lie in for a declared order p."""
    if isinstance(declared, bool) or not isinstance(declared, (int, float)) or not declared > 0:
        raise ValueError(f"a declared order must be a number > 0, got {declared!r}")
    return float(declared) - BAND_BELOW, float(declared) + BAND_ABOVE


def in_band(measured: float, declared: float) -> bool:
    """Whether a measured order lies in `order_band(declared)` (NaN never does)."""
    lo, hi = order_band(declared)
    return math.isfinite(measured) and lo <= measured <= hi
