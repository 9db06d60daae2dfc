"""The result table's columns and the headline quality metric: one definition for run, report and baseline."""
from __future__ import annotations

import pandas as pd

# One row per (model, schedule, solver, nfe, seed) cell, long format.
IDENTITY = ["model", "schedule", "prediction", "solver", "nfe", "seed"]
COLUMNS = {
    # identity and configuration
    "run_id": "string", "model": "string", "schedule": "string", "prediction": "string", "solver": "string",
    "kind": "string",  # "ode" or "sde" (stochastic: error columns are NaN)
    "order": "float64",  # declared order (ode: global, sde: weak)
    "nfe": "Int64",  # budget asked; <NA> for adaptive solvers, which take tolerances (see options)
    "nfe_used": "Int64",  # measured by counting model calls
    "steps": "Int64", "seed": "Int64", "timesteps": "string",
    "options": "string",  # JSON of the solver options used
    "samples": "Int64", "device": "string",
    # outcome
    "status": "string",  # ok | failed | skipped
    "message": "string",
    # cost
    "wall_s": "float64", "model_s": "float64", "peak_mem_mb": "float64",
    # error against the high-accuracy reference solution from the same x_T (ODE solvers only)
    "error_rmse": "float64", "error_max": "float64",
    # quality
    "swd": "float64", "mmd": "float64", "nll_gap": "float64", "fid": "float64", "kid": "float64",
}
STATUSES = ("ok", "failed", "skipped")

# Headline quality per model, in order of preference; every one is "lower is better" after `quality`.
HEADLINE = ("fid", "nll_gap", "swd", "mmd")
LABELS = {"fid": "FID", "nll_gap": "|NLL gap| (nats)", "swd": "sliced Wasserstein", "mmd": "MMD",
          "kid": "KID", "error_rmse": "RMSE vs reference", "error_max": "max error vs reference"}


def headline_metric(rows: pd.DataFrame) -> str | None:
    """The headline metric of one model's rows: the first of HEADLINE with any finite value."""
    for name in HEADLINE:
        if name in rows and pd.to_numeric(rows[name], errors="coerce").notna().any():
            return name
    return None


def quality(rows: pd.DataFrame, metric: str) -> pd.Series:
    """Values of `metric`, oriented so that lower is better (the NLL gap is taken in absolute value)."""
    values = pd.to_numeric(rows[metric], errors="coerce")
    return values.abs() if metric == "nll_gap" else values


def empty_table() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in COLUMNS.items()})


def conform(df: pd.DataFrame) -> pd.DataFrame:
    """Columns in schema order with schema dtypes; extra columns are kept after them."""
    out = df.copy()
    for c, t in COLUMNS.items():
        out[c] = out[c].astype(t) if c in out else pd.Series([None] * len(out), index=out.index, dtype=object).astype(t)
    return out[list(COLUMNS) + [c for c in out.columns if c not in COLUMNS]]
