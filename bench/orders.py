"""Measured convergence order: the slope of log(error) against log(NFE) over the asymptotic part of the curve.

The rule (`fit_order`), used by the report's order table and by the accuracy regression tests:

1. Keep the points with a finite NFE > 0 and a finite error > 0; average log(error) over repeated
   NFE values (seeds), which is the log of the geometric mean.
2. The asymptotic part is every distinct NFE >= max NFE / `span` (default 8, three halvings),
   widened to the `min_points` (default 3) largest NFE values when that range holds fewer.
3. The order is minus the least-squares slope of log(error) on log(NFE) over those points
   (error ~ C NFE^-p gives p). Fewer than 2 distinct NFE values give NaN.

As torchsde's diagnostics and diffrax's `test_ode_order` do, the fitted slope is then held against the
solver's declared order.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

SPAN = 8.0  # asymptotic part: NFE >= max NFE / SPAN
MIN_POINTS = 3  # ... but at least this many of the largest NFE values
ORDER_TOL = 0.3  # |measured - declared| above this is a warning


def _floats(values) -> np.ndarray:
    return pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").astype("float64").to_numpy()


def asymptotic_points(nfe, error, span: float = SPAN, min_points: int = MIN_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """The (NFE, mean log error) points `fit_order` fits, sorted by NFE; see the module docstring."""
    n, e = _floats(nfe), _floats(error)
    if n.shape != e.shape:
        raise ValueError(f"nfe and error must have the same length, got {n.shape} and {e.shape}")
    keep = np.isfinite(n) & (n > 0) & np.isfinite(e) & (e > 0)
    if not keep.any():
        return np.empty(0), np.empty(0)
    groups = pd.Series(np.log(e[keep])).groupby(n[keep]).mean().sort_index()
    x, y = groups.index.to_numpy(dtype=float), groups.to_numpy(dtype=float)
    start = min(int(np.searchsorted(x, x[-1] / span)), max(len(x) - min_points, 0))
    return x[start:], y[start:]


def fit_order(nfe, error, span: float = SPAN, min_points: int = MIN_POINTS) -> float:
    """Measured order p of error ~ C NFE^-p over the asymptotic part of the curve (NaN with < 2 NFE values)."""
    x, y = asymptotic_points(nfe, error, span, min_points)
    if len(x) < 2:
        return math.nan
    slope = np.polyfit(np.log(x), y, 1)[0]
    return float(-slope)


def order_mark(measured: float, declared: float, tol: float = ORDER_TOL) -> str:
    """'pass' when |measured - declared| <= tol, else 'warn (low)' / 'warn (high)'; 'n/a' when either is unknown."""
    if not (math.isfinite(measured) and math.isfinite(declared)):
        return "n/a"
    if abs(measured - declared) <= tol:
        return "pass"
    return "warn (low)" if measured < declared else "warn (high)"


def order_table(rows: pd.DataFrame, declared: dict[str, float] | None = None, tol: float = ORDER_TOL,
                by: tuple[str, ...] = ("model",)) -> pd.DataFrame:
    """Measured vs declared order per (by..., solver) of the ok, fixed-budget ODE rows with a finite error_rmse.

    The declared order is the one the table recorded (`order` column), else `declared[solver]`.
    """
    ok = rows[(rows["status"] == "ok") & (rows["kind"] == "ode") & rows["nfe"].notna()]
    out = []
    for key, g in ok.groupby([*by, "solver"], sort=False, dropna=False):
        x, _ = asymptotic_points(g["nfe"], g["error_rmse"])
        measured = fit_order(g["nfe"], g["error_rmse"])
        recorded = pd.to_numeric(g["order"], errors="coerce").dropna() if "order" in g else pd.Series(dtype=float)
        dec = float(recorded.iloc[0]) if len(recorded) else float((declared or {}).get(key[-1], math.nan))
        out.append({**dict(zip([*by, "solver"], key)), "declared": dec, "measured": measured,
                    "nfe_range": f"{int(x[0])}–{int(x[-1])}" if len(x) >= 2 else "—",
                    "points": len(x), "mark": order_mark(measured, dec, tol)})
    cols = [*by, "solver", "declared", "measured", "nfe_range", "points", "mark"]
    return pd.DataFrame(out, columns=cols)
