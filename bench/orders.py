"""Measured vs declared convergence order in reports: marks and tables over the one order-fit rule.

The rule itself (`fit`, `OrderFit`, the asymptotic range, `order_band`) lives in `solvers.convergence`,
shared with `bench check` and `solvers.testing`; it is re-exported here for bench's callers.
"""
from __future__ import annotations

import math

import pandas as pd

from solvers.convergence import (  # noqa: F401  (re-exported: bench's callers use bench.orders.fit etc.)
    MIN_POINTS,
    MIN_SPAN,
    SLOPE_TOL,
    OrderFit,
    asymptotic_points,
    fit,
    fit_order,
    in_band,
    order_band,
    usable_points,
)

from .schema import REFERENCE_MARGIN

ORDER_TOL = 0.3  # |measured - declared| above this is a warning in the report
MEASURE_COMMAND = "python -m bench run --models gmm2d,gmm-digits --nfe 20,40,80,160,320"


def order_mark(result: OrderFit, declared: float, tol: float = ORDER_TOL) -> str:
    """'pass' when |measured - declared| <= tol, 'warn (low)' / 'warn (high)' otherwise; the reason when not measured."""
    if not result.ok:
        return result.note
    if not math.isfinite(declared):
        return "no declared order"
    if abs(result.order - declared) <= tol:
        return "pass"
    return "warn (low)" if result.order < declared else "warn (high)"


def _recorded_floor(g: pd.DataFrame) -> float:
    if "reference_rmse" not in g:
        return 0.0
    rmse = pd.to_numeric(g["reference_rmse"], errors="coerce").max()
    return float(REFERENCE_MARGIN * rmse) if pd.notna(rmse) else 0.0


def order_table(rows: pd.DataFrame, declared: dict[str, float] | None = None, tol: float = ORDER_TOL,
                by: tuple[str, ...] = ("model",), floors: dict | None = None) -> pd.DataFrame:
    """Measured vs declared order per (by..., solver) of the ok, fixed-budget deterministic rows.

    The declared order is the one the table recorded (`order` column), else `declared[solver]`.
    `floors` maps a `by` key to the reference solution's own accuracy: errors below it are not fitted; without
    it, the floor is REFERENCE_MARGIN times the reference's estimated RMSE the rows recorded (`reference_rmse`).
    """
    ok = rows[(rows["status"] == "ok") & (rows["kind"] == "ode") & rows["nfe"].notna()]
    out = []
    for key, g in ok.groupby([*by, "solver"], sort=False, dropna=False):
        floor = (floors or {}).get(key[:-1] if len(by) > 1 else key[0], _recorded_floor(g))
        result = fit(g["nfe"], g["error_rmse"], floor)
        recorded = pd.to_numeric(g["order"], errors="coerce").dropna() if "order" in g else pd.Series(dtype=float)
        dec = float(recorded.iloc[0]) if len(recorded) else float((declared or {}).get(key[-1], math.nan))
        out.append({**dict(zip([*by, "solver"], key)), "declared": dec, "measured": result.order, "lo": result.lo,
                    "hi": result.hi, "nfe_range": result.nfe_range, "points": len(result.nfe) if result.ok else 0,
                    "mark": order_mark(result, dec, tol)})
    cols = [*by, "solver", "declared", "measured", "lo", "hi", "nfe_range", "points", "mark"]
    return pd.DataFrame(out, columns=cols)
