"""Measured convergence order: the one rule, used by the report, `bench baseline`, the tests and the README.

`fit_order(nfe, error)` fits error ~ C NFE^-p over the asymptotic range, detected from the data:

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

As torchsde's diagnostics and diffrax's `test_ode_order` do, the fitted slope is then held against the
solver's declared order (`order_mark`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

MIN_POINTS = 3  # NFE values in the fitted range
MIN_SPAN = 4.0  # largest / smallest NFE of the fitted range (two halvings)
SLOPE_TOL = 0.35  # a local slope this far from the range's median slope ends the range
ORDER_TOL = 0.3  # |measured - declared| above this is a warning
MEASURE_COMMAND = "python -m bench run --models gmm2d,gmm-digits --nfe 20,40,80,160,320"


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


def _floats(values) -> np.ndarray:
    return pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").astype("float64").to_numpy()


def usable_points(nfe, error, floor: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(distinct NFE, mean log error) of the usable points, sorted by NFE (steps 1 of the rule)."""
    n, e = _floats(nfe), _floats(error)
    if n.shape != e.shape:
        raise ValueError(f"nfe and error must have the same length, got {n.shape} and {e.shape}")
    keep = np.isfinite(n) & (n > 0) & np.isfinite(e) & (e > max(float(floor), 0.0))
    if not keep.any():
        return np.empty(0), np.empty(0)
    groups = pd.Series(np.log(e[keep])).groupby(n[keep]).mean().sort_index()
    return groups.index.to_numpy(dtype=float), groups.to_numpy(dtype=float)


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


def fit(nfe, error, floor: float = 0.0) -> OrderFit:
    """The measured order over the detected asymptotic range, with its interval (see the module docstring)."""
    ux, uy = usable_points(nfe, error, floor)
    local = tuple(float(v) for v in -np.diff(uy) / np.diff(np.log(ux))) if len(ux) >= 2 else ()
    x, y = asymptotic_points(nfe, error, floor)
    if len(x) < MIN_POINTS or x[-1] / x[0] < MIN_SPAN:
        return OrderFit(math.nan, math.nan, math.nan, tuple(map(float, ux)), local)
    lx = np.log(x)
    res = stats.linregress(lx, y)
    half = float(stats.t.ppf(0.975, len(x) - 2) * res.stderr) if len(x) > 2 else math.nan
    order = float(-res.slope)
    return OrderFit(order, order - half, order + half, tuple(map(float, x)), local)


def fit_order(nfe, error, floor: float = 0.0) -> float:
    """Measured order p of error ~ C NFE^-p over the asymptotic range; NaN when that range is too short."""
    return fit(nfe, error, floor).order


def order_mark(result: OrderFit, declared: float, tol: float = ORDER_TOL) -> str:
    """'pass' when |measured - declared| <= tol, 'warn (low)' / 'warn (high)' otherwise; the reason when not measured."""
    if not result.ok:
        return result.note
    if not math.isfinite(declared):
        return "no declared order"
    if abs(result.order - declared) <= tol:
        return "pass"
    return "warn (low)" if result.order < declared else "warn (high)"


def order_table(rows: pd.DataFrame, declared: dict[str, float] | None = None, tol: float = ORDER_TOL,
                by: tuple[str, ...] = ("model",), floors: dict | None = None) -> pd.DataFrame:
    """Measured vs declared order per (by..., solver) of the ok, fixed-budget deterministic rows.

    The declared order is the one the table recorded (`order` column), else `declared[solver]`.
    `floors` maps a `by` key to the reference solution's own accuracy: errors below it are not fitted.
    """
    ok = rows[(rows["status"] == "ok") & (rows["kind"] == "ode") & rows["nfe"].notna()]
    out = []
    for key, g in ok.groupby([*by, "solver"], sort=False, dropna=False):
        floor = (floors or {}).get(key[:-1] if len(by) > 1 else key[0], 0.0)
        result = fit(g["nfe"], g["error_rmse"], floor)
        recorded = pd.to_numeric(g["order"], errors="coerce").dropna() if "order" in g else pd.Series(dtype=float)
        dec = float(recorded.iloc[0]) if len(recorded) else float((declared or {}).get(key[-1], math.nan))
        out.append({**dict(zip([*by, "solver"], key)), "declared": dec, "measured": result.order, "lo": result.lo,
                    "hi": result.hi, "nfe_range": result.nfe_range, "points": len(result.nfe) if result.ok else 0,
                    "mark": order_mark(result, dec, tol)})
    cols = [*by, "solver", "declared", "measured", "lo", "hi", "nfe_range", "points", "mark"]
    return pd.DataFrame(out, columns=cols)
