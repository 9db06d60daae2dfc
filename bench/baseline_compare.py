"""Comparison of a measured baseline table with the stored one: the rules, and what `bench baseline` prints.

Rules (`judge`): an error above baseline * 1.01 + 1e-12 regresses; a bias whose size rises by more than 3
standard errors regresses; a bias that moves by more than 1e-3 of a standard error without falling by 3 has
"changed" and fails: a stochastic row samples the baseline's own x_T on its own Brownian paths (seeded per
sample), so its output and its biases are a function of the sampler alone (rounding moves them by ~1e-6 se; an
output scaled by 1 + 1e-4, by 0.02 se or more); an order below its band (`solvers.convergence.order_band`:
[p - 0.3, p + 0.5] for declared order p) regresses; an adaptive solver's nfe_used rising by more than 1%
regresses; improvements are reported and pass; a row in the baseline but not measured (missing), or measured but
not in the baseline (new), fails.
"""
from __future__ import annotations

import math

import pandas as pd

from solvers import get_solver
from solvers.convergence import order_band as band_of

from .baseline_store import BIAS_METRICS, KEY

REL_TOL, ABS_TOL = 0.01, 1e-12  # deterministic errors
SIGMAS = 3.0  # stochastic biases, in standard errors
SAME_PATHS_SE = 1e-3  # a bias moving by more than this many standard errors: the sampler's output changed
STATUSES = ("same", "moved", "improved", "regressed", "changed", "missing", "new")
FAILING = ("regressed", "changed", "missing", "new")


def order_band(name: str) -> tuple[float, float]:
    """The band the measured order (bench.orders.fit) of solver `name` must lie in: its declared order's band."""
    return band_of(get_solver(name).order)


def judge(metric: str, solver: str, base: float, now: float, se: float, rel_tol=REL_TOL, abs_tol=ABS_TOL,
          sigmas=SIGMAS) -> tuple[str, str]:
    """(status, note) of one value against its baseline; status is same, moved, improved or regressed."""
    if (math.isnan(base) and math.isnan(now)) or base == now:
        return "same", ""
    if math.isnan(now):
        return "regressed", "now NaN (solver failed, or order not measurable)"
    if math.isnan(base):
        return "improved", "baseline was NaN"
    if metric == "order":
        lo, hi = order_band(solver)
        if now < lo:
            return "regressed", f"order below its band [{lo:g}, {hi:g}]"
        return "moved", ("above its band" if now > hi else "")
    if metric in BIAS_METRICS:
        se = se if math.isfinite(se) and se > 0 else 0.0
        if abs(now) > abs(base) + sigmas * se:
            return "regressed", f"|bias| rose by {(abs(now) - abs(base)) / se if se else math.inf:.1f} se"
        if abs(now) < abs(base) - sigmas * se:
            return "improved", f"|bias| fell by {(abs(base) - abs(now)) / se:.1f} se"
        if abs(now - base) > SAME_PATHS_SE * se:
            return "changed", (f"moved {(now - base) / se:+.2g} se on the same x_T and Brownian paths: the sampler's "
                               f"output changed (within {sigmas:g} se: neither better nor worse)")
        return "moved", f"within {SAME_PATHS_SE:g} se (rounding)"
    if now > base * (1 + rel_tol) + abs_tol:
        return "regressed", f"error x{now / base:.4g}" if base > 0 else "error rose from 0"
    if now * (1 + rel_tol) + abs_tol < base:
        return "improved", f"error x{now / base:.4g}"
    return "moved", f"within {rel_tol:.0%}"


def _judge_row(b: pd.Series, c: pd.Series, rel_tol, abs_tol, sigmas) -> tuple[str, str]:
    """`judge` of the value, then the evaluations used: more than rel_tol above the baseline regresses."""
    status, note = judge(c["metric"], c["solver"], float(b["value"]), float(c["value"]), float(b["stderr"]),
                         rel_tol, abs_tol, sigmas)
    used_b, used_c = b["nfe_used"], c["nfe_used"]
    if pd.notna(used_b) and pd.notna(used_c) and used_c != used_b:
        worse = used_c > used_b * (1 + rel_tol)
        status = "regressed" if worse else ("improved" if status in ("same", "moved") else status)
        note = f"{note}; nfe_used {used_b} -> {used_c}".lstrip("; ")
    return status, note


def _key(df: pd.DataFrame) -> list[str]:
    return ["|".join("" if pd.isna(v) else str(v) for v in r) for r in df[KEY].itertuples(index=False)]


def _in_scope(baseline: pd.DataFrame, current: pd.DataFrame) -> pd.DataFrame:
    """The baseline rows of the (model, schedule) pairs that `current` measured, order rows counted apart."""
    def scope(df):
        return [(m, s, metric == "order") for m, s, metric in df[["model", "schedule", "metric"]].to_numpy()]

    measured = set(scope(current))
    return baseline[[k in measured for k in scope(baseline)]]


def compare(baseline: pd.DataFrame, current: pd.DataFrame, rel_tol=REL_TOL, abs_tol=ABS_TOL,
            sigmas=SIGMAS) -> pd.DataFrame:
    """One row per key of either table: base and current value, status and note (see the module docstring).

    A partial measurement compares only what it measured (see `_in_scope`).
    """
    baseline = _in_scope(baseline, current)
    b = baseline.assign(key=_key(baseline)).set_index("key")
    c = current.assign(key=_key(current)).set_index("key")
    out = []
    for key in list(b.index) + [k for k in c.index if k not in b.index]:
        rec = {k: (c if key in c.index else b).loc[key, k] for k in KEY}
        if key not in c.index:
            rec.update(base=b.loc[key, "value"], now=math.nan, status="missing", note="in the baseline, not measured")
        elif key not in b.index:
            rec.update(base=math.nan, now=c.loc[key, "value"], status="new",
                       note="not in the baseline: run `python -m bench baseline --update`")
        else:
            status, note = _judge_row(b.loc[key], c.loc[key], rel_tol, abs_tol, sigmas)
            rec.update(base=float(b.loc[key, "value"]), now=float(c.loc[key, "value"]), status=status, note=note)
        out.append(rec)
    return pd.DataFrame(out, columns=[*KEY, "base", "now", "status", "note"])


def failures(comparison: pd.DataFrame) -> pd.DataFrame:
    """The rows that fail: regressed, changed, missing or new."""
    return comparison[comparison["status"].isin(FAILING)]


def summary(comparison: pd.DataFrame) -> str:
    """One line: the count of every status, then 'no regression' or how many rows failed."""
    counts = comparison["status"].value_counts()
    bad = int(sum(counts.get(s, 0) for s in FAILING))
    verdict = f"{bad} FAILED ({', '.join(FAILING[:-1])} or {FAILING[-1]})" if bad else "no regression"
    return ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES) + f"; {verdict}"


def format_comparison(comparison: pd.DataFrame, limit: int = 60) -> str:
    """The failing rows (by status, in the order of FAILING), if any, and the one-line `summary`."""
    bad = failures(comparison).copy()
    if bad.empty:
        return summary(comparison)
    bad["rank"] = bad["status"].map(FAILING.index)
    bad = bad.sort_values(["rank", "model", "schedule", "metric", "solver"], kind="stable").drop(columns="rank")
    shown = bad.head(limit).copy()
    for c in ("base", "now"):
        shown[c] = shown[c].map(lambda v: f"{v:.6g}")
    text = shown.drop(columns=["timesteps"]).to_string(index=False)
    if len(bad) > limit:
        text += f"\n... and {len(bad) - limit} more failing rows"
    return f"{text}\n{summary(comparison)}"
