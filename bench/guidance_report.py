"""The report's guidance section: how solvers rank across guidance scales (bench run --guidance).

Every guided (model, scale) is a group of its own in the rest of the report (its quality and error vs NFE figures,
orders, targets). This section puts the scales side by side: error against the guided reference vs the scale at each
budget, the measured order at each scale, the smallest NFE reaching the target at each scale, and the solvers that
fail at large scales (NaN samples, or an error that grows with NFE) with whether a thresholded variant rescues them.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from . import orders
from .formatting import fmt
from .plots import (  # plots selects the Agg backend before pyplot is imported
    plt,
    solver_colour,
)
from .render import Figure, Section, Table
from .schema import LABELS, quality
from .sections import declared_orders, first_hits, hit_nfe, quality_target

THRESHOLDED = ":thresholding="  # a solver variant "NAME:thresholding=dynamic" (bench run --solvers)
MAX_PANELS = 4  # budgets drawn in the error-vs-scale figure


def guided(rows: pd.DataFrame) -> pd.DataFrame:
    """The guided rows, with `base` (the group label without its guidance) and `w` columns."""
    if "guidance" not in rows:
        return rows.iloc[:0]
    w = pd.to_numeric(rows["guidance"], errors="coerce")
    g = rows[w.notna()].assign(w=w[w.notna()])
    suffix = [f" {k} w={v:g}" for k, v in zip(g["guidance_kind"], g["w"])]
    base = [label[: len(label) - len(end)] if label.endswith(end) else label for label, end in zip(g["group"], suffix)]
    return g.assign(base=pd.Series(base, index=g.index, dtype="string"), how=g["guidance_kind"].astype(str))


def guidance_section(rows: pd.DataFrame, metrics: dict, groups: pd.DataFrame, tolerance: float, order_tol: float,
                     out_dir: Path) -> Section | None:
    g = guided(rows)
    if g.empty:
        return None
    sec = Section("Guidance: solvers across guidance scales", [
        "Guided sampling (bench run --guidance): w = 1 is the conditional model, w = 0 the unconditional one; "
        "classifier-free guidance combines eps_u + w (eps_c - eps_u) (in the prediction's own form, which is the same "
        "for every prediction kind), classifier guidance adds w grad log p(c | x_t). Each sample has its own label, "
        "drawn from the seed, the same for every solver. On the exact mixtures the guided PF-ODE has an exact "
        "reference (DOP853, float64), so errors and orders under guidance are measured, not guessed."])
    for (base, how), b in g.groupby(["base", "how"], sort=False):
        stem = "guidance-" + "".join(c if c.isalnum() else "-" for c in f"{base}-{how}").strip("-")
        path = out_dir / f"{stem}.png"
        if _error_vs_scale(b, f"{base} ({how}): error vs guidance scale", path):
            sec.blocks.append(Figure(path, f"{base} ({how}): error vs guidance scale",
                                     "RMSE against the guided reference solution from the same x_T and labels, one "
                                     "panel per NFE budget (geometric mean over seeds). A line rising with w: the "
                                     "solver loses accuracy under strong guidance at that budget."))
        sec.blocks += _order_table(b, base, how, order_tol)
        sec.blocks += _target_table(b, base, how, metrics, groups, tolerance)
        sec.blocks += _failure_table(b, base, how, metrics)
    return sec


def _scales(b: pd.DataFrame) -> list[float]:
    return sorted(b["w"].unique())


def _error_vs_scale(b: pd.DataFrame, title: str, path: Path) -> bool:
    ok = b[(b["status"] == "ok") & b["nfe"].notna()]
    ok = ok[pd.to_numeric(ok["error_rmse"], errors="coerce") > 0]
    if ok.empty or ok["w"].nunique() < 2:
        return False
    budgets, scales = sorted(ok["nfe"].astype(int).unique()), sorted(ok["w"].unique())
    if len(budgets) > MAX_PANELS:
        budgets = [budgets[int(round(i))] for i in np.linspace(0, len(budgets) - 1, MAX_PANELS)]
    fig, axes = plt.subplots(1, len(budgets), figsize=(3.6 * len(budgets) + 1.5, 3.4), squeeze=False, sharey=True)
    for ax, nfe in zip(axes[0], budgets):
        cell = ok[ok["nfe"].astype(int) == nfe]
        for solver, s in cell.groupby("solver", sort=False):
            err = np.exp(np.log(s["error_rmse"].astype(float)).groupby(s["w"]).mean())
            ax.plot(err.index, err.values, "o-", color=solver_colour(solver.split(":")[0]), label=solver, ms=4)
        ax.set_xscale("symlog", base=2, linthresh=1.0)  # w = 0 (unconditional) stays on the axis
        ax.set_xticks(scales, [f"{w:g}" for w in scales])
        ax.set(yscale="log", xlabel="guidance scale w", title=f"NFE {nfe}")
    axes[0][0].set_ylabel(LABELS["error_rmse"])
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _order_table(b: pd.DataFrame, base: str, how: str, tol: float) -> list:
    tab = orders.order_table(b, declared_orders(b), tol, by=("run", "w"))
    if tab.empty:
        return []
    scales = _scales(b)
    body = []
    for solver, t in tab.groupby("solver", sort=False):
        row = [solver, fmt(t["declared"].iloc[0])]
        for w in scales:
            r = t[t["w"] == w]
            if r.empty or not math.isfinite(r["measured"].iloc[0]):
                row.append(("—" if r.empty else r["mark"].iloc[0], None))
                continue
            r = r.iloc[0]
            cls = "good" if r["mark"] == "pass" else "warn"
            ci = f" ({r['lo']:.2f}–{r['hi']:.2f})" if math.isfinite(r["lo"]) else ""
            row.append((f"{r['measured']:.2f}{ci}", cls))
        body.append(row)
    return [("h3", f"{base} ({how}): measured order at each guidance scale (95% interval)"),
            Table(["solver", "declared"] + [f"w={w:g}" for w in scales], body, "solver")]


def _target_table(b: pd.DataFrame, base: str, how: str, metrics: dict, groups: pd.DataFrame, tol: float) -> list:
    scales, body, metric_used = _scales(b), {}, None
    for w in scales:
        cells = b[b["w"] == w]
        group = cells["group"].iloc[0]
        metric = metrics.get(group)
        if metric is None:
            continue
        ref, threshold = quality_target(groups, group, metric, tol)
        if not math.isfinite(ref[0]):
            continue
        metric_used = metric
        for solver, (h, _) in first_hits(cells, metric, threshold).items():
            body.setdefault(solver, {})[w] = ("not reached", "warn") if h is None else hit_nfe(h)
    if not body:
        return []
    rows = [[solver] + [by.get(w, "—") for w in scales] for solver, by in body.items()]
    return [("h3", f"{base} ({how}): smallest NFE reaching the reference's {LABELS.get(metric_used, metric_used)} "
                   f"(+{100 * tol:g}%) at each scale"),
            Table(["solver"] + [f"w={w:g}" for w in scales], rows, "solver")]


def _failure_table(b: pd.DataFrame, base: str, how: str, metrics: dict) -> list:
    """Per (scale, solver): failed or non-finite cells, or a path error that rises from one budget to a larger one
    (intervals apart); with the error of the solver's thresholded variants at that budget where the run has them."""
    found = []
    for (w, solver), s in b.groupby(["w", "solver"], sort=True):
        if THRESHOLDED in solver:
            continue
        why, at = _failure(s)
        if not why:
            continue
        variants = b[(b["w"] == w) & b["solver"].str.startswith(solver + THRESHOLDED)]
        metric = metrics.get(s["group"].iloc[0])
        rescue = []
        for v, vs in variants.groupby("solver"):
            own = _failure(vs)[0]
            text = f"{v.split(THRESHOLDED)[1]}: " + (own or "no failure")
            if at is not None and metric is not None:
                mine, plain = (_at(x, at, metric) for x in (vs, s))
                text += f"; {LABELS.get(metric, metric)} at NFE {at}: {fmt(mine)} (plain: {fmt(plain)})"
            rescue.append(text)
        found.append([f"{w:g}", solver, (why, "bad"), "; ".join(rescue) or "no thresholded variant in this run"])
    if not found:
        return [f"{base} ({how}): no solver failed (no NaN, no error rising with NFE) at any scale of this run."]
    return [("h3", f"{base} ({how}): failures under guidance"),
            Table(["w", "solver", "failure", "thresholded variants (solver:thresholding=...): failure, quality"],
                  found, "solver")]


def _at(cells: pd.DataFrame, nfe: int, metric: str) -> float:
    c = cells[(cells["status"] == "ok") & (cells["nfe"].astype("Float64") == nfe)]
    return float(quality(c, metric).mean()) if len(c) else math.nan


def _failure(s: pd.DataFrame) -> tuple[str, int | None]:
    """(what failed, the budget where it shows) of one solver's cells at one scale; ("", None) when nothing did."""
    bad = s[s["status"] == "failed"]
    if len(bad):
        nfe = bad["nfe"].dropna()
        return (f"{len(bad)} failed cell(s): {str(bad['message'].iloc[0])[:80]}",
                int(nfe.iloc[0]) if len(nfe) else None)
    ok = s[(s["status"] == "ok") & s["nfe"].notna()].sort_values("nfe")
    num = {c: pd.to_numeric(ok[c], errors="coerce").to_numpy() for c in ("error_rmse", "error_rmse_lo", "error_rmse_hi")}
    rises = [(num["error_rmse"][i + 1] / num["error_rmse"][i], i) for i in range(len(ok) - 1)
             if num["error_rmse_lo"][i + 1] > num["error_rmse_hi"][i]]  # intervals apart (NaN compares false)
    if not rises:
        return "", None
    _, i = max(rises)
    a, b = ok.iloc[i], ok.iloc[i + 1]
    return (f"error rises with NFE: {fmt(float(a['error_rmse']))} at NFE {int(a['nfe'])} -> "
            f"{fmt(float(b['error_rmse']))} at NFE {int(b['nfe'])}", int(b["nfe"]))
