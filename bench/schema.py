"""The result tables' columns and the metrics: one declaration for run, report and baseline.

Every metric is declared once in METRICS with its label, its direction and how its 95% interval is
made; every metric column `m` of the results table has the interval columns `m_lo` and `m_hi`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Metric:
    label: str
    family: str  # "error" (against the reference solution: no data needed) or "quality" (against real data)
    interval: str  # "bootstrap" over the cell's samples, "stderr" (normal, 1.96 standard errors), or "wilson" (a
    # proportion's Wilson score interval: right at 0 and 1, where the bootstrap's collapses)
    signed: bool = False  # the value is signed and its size is the quality (the NLL gap)
    unit: str = ""

    better = "lower"  # every metric here: lower is better (signed ones: smaller size)


METRICS = {
    "error_rmse": Metric("RMSE vs reference", "error", "bootstrap", unit="data units"),
    "error_max": Metric("max error vs reference", "error", "bootstrap", unit="data units"),
    "nll_gap": Metric("|NLL gap|", "quality", "stderr", signed=True, unit="nats"),
    "fid": Metric("FID", "quality", "bootstrap"),
    "kid": Metric("KID", "quality", "stderr"),
    "swd": Metric("sliced Wasserstein", "quality", "bootstrap", unit="data units"),
    "mmd": Metric("MMD", "quality", "stderr"),
    # guided sampling of a class-conditional model: the share of samples that the digit classifier does not assign
    # to their intended label (1 - accuracy; lower is better, as every metric here)
    "label_error": Metric("label error (1 - classifier accuracy on the intended labels)", "quality", "wilson"),
    # the distance of the samples' distribution to the reference solution's samples (same x_T), no data needed:
    # Frechet distance in the FID feature space for images with a feature extractor, else sliced Wasserstein
    "fd_ref": Metric("FD to reference samples", "error", "bootstrap"),
    "swd_ref": Metric("SWD to reference samples", "error", "bootstrap", unit="data units"),
}
# Headline quality per model, in order of preference: against data where there are data, else the data-free one.
HEADLINE = ("fid", "nll_gap", "swd", "mmd", "fd_ref", "swd_ref", "label_error")
DATA_FREE = ("fd_ref", "swd_ref")
LABELS = {m: d.label for m, d in METRICS.items()}
# A stochastic row's error columns hold its strong error: against Euler-Maruyama at 4096 steps on the same Brownian
# path per sample (solvers.brownian_paths), from the same x_T.
STRONG_LABELS = {"error_rmse": "strong error (RMSE vs fine Euler-Maruyama, same Brownian path)",
                 "error_max": "strong error (max vs fine Euler-Maruyama, same Brownian path)"}


def error_label(metric: str, kind: str = "ode") -> str:
    """The label of a metric column for rows of this kind: the error columns of "sde" rows are strong errors."""
    return STRONG_LABELS.get(metric, LABELS.get(metric, metric)) if kind == "sde" else LABELS.get(metric, metric)


def bounds(metric: str) -> tuple[str, str]:
    """Names of the interval columns of `metric`."""
    return f"{metric}_lo", f"{metric}_hi"


# One row per (model, schedule, guidance, solver, nfe, seed) cell, long format. Unguided cells have guidance and
# guidance_kind <NA>.
IDENTITY = ["model", "schedule", "prediction", "guidance_kind", "guidance", "solver", "nfe", "seed"]
GROUP_KEYS = ["model", "schedule", "prediction", "guidance_kind", "guidance", "seed"]
COLUMNS = {
    # identity and configuration
    "run_id": "string", "model": "string", "schedule": "string", "prediction": "string", "solver": "string",
    "guidance_kind": "string",  # "cfg" or "classifier" (bench run --guidance); <NA>: unguided
    "guidance": "float64",  # the guidance scale w (w = 1: the conditional model, w = 0 the unconditional one)
    "kind": "string",  # "ode" or "sde" (stochastic: the error columns hold the strong error, STRONG_LABELS)
    "order": "float64",  # declared order (ode: global, sde: weak)
    "nfe": "Int64",  # budget asked; <NA> for adaptive solvers, which take tolerances (see options)
    "nfe_used": "Int64",  # measured by counting model calls
    "network_calls": "Int64",  # calls of the network per sample (guided: 1 per evaluation when batched, else 2)
    "steps": "Int64", "seed": "Int64", "timesteps": "string",
    "options": "string",  # JSON of the solver options used
    "samples": "Int64", "device": "string",
    # outcome
    "status": "string",  # ok | failed | skipped
    "message": "string",
    # cost: medians over `repeats` timed repetitions; spread = (max - min) / median
    "repeats": "Int64", "wall_s": "float64", "wall_spread": "float64", "wall_per_sample_s": "float64",
    "model_s": "float64", "peak_mem_mb": "float64",
    # metrics (error: against the high-accuracy reference solution from the same x_T; path errors of ODE solvers
    # only, the distance to the reference samples for every solver)
    **{c: "float64" for m in METRICS for c in (m, *bounds(m))},
    # the reference solution's own estimated RMSE: a path error within REFERENCE_MARGIN times it is marked
    # "at reference accuracy" in the message and is not used to fit orders
    "reference_rmse": "float64",
}
REFERENCE_MARGIN = 2.0
STATUSES = ("ok", "failed", "skipped")

# Group-level rows (one per model, schedule, prediction, guidance, seed, source, metric): the quality of the
# reference solution ("reference") and of real data against real data ("data", the noise floor).
GROUP_COLUMNS = {"model": "string", "schedule": "string", "prediction": "string", "guidance_kind": "string",
                 "guidance": "float64", "seed": "Int64",
                 "source": "string", "metric": "string", "value": "float64", "lo": "float64", "hi": "float64",
                 "samples": "Int64", "note": "string"}


def headline_metric(rows: pd.DataFrame) -> str | None:
    """The headline metric of one model's rows: the first of HEADLINE with any finite value."""
    for name in HEADLINE:
        if name in rows and pd.to_numeric(rows[name], errors="coerce").notna().any():
            return name
    return None


def quality(rows: pd.DataFrame, metric: str) -> pd.Series:
    """Values of `metric`, oriented so that lower is better (signed metrics by their size)."""
    values = pd.to_numeric(rows[metric], errors="coerce")
    return values.abs() if METRICS[metric].signed else values


def quality_bounds(rows: pd.DataFrame, metric: str) -> tuple[pd.Series, pd.Series]:
    """The 95% interval of `quality(rows, metric)` (NaN where the table has none); a signed metric's interval
    is folded onto sizes (0 where it straddles zero)."""
    lo_c, hi_c = bounds(metric)
    if lo_c not in rows or hi_c not in rows:
        nan = pd.Series(np.nan, index=rows.index)
        return nan, nan
    lo, hi = (pd.to_numeric(rows[c], errors="coerce").astype(float) for c in (lo_c, hi_c))
    if not METRICS[metric].signed:
        return lo, hi
    straddles = (lo <= 0) & (hi >= 0)
    return lo.abs().clip(upper=hi.abs()).where(~straddles, 0.0), pd.concat([lo.abs(), hi.abs()], axis=1).max(axis=1)


def empty_table(columns: dict = COLUMNS) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in columns.items()})


def conform(df: pd.DataFrame, columns: dict = COLUMNS) -> pd.DataFrame:
    """Columns in schema order with schema dtypes; extra columns are kept after them."""
    out = df.copy()
    for c, t in columns.items():
        out[c] = out[c].astype(t) if c in out else pd.Series([None] * len(out), index=out.index, dtype=object).astype(t)
    return out[list(columns) + [c for c in out.columns if c not in columns]]
