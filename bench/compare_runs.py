"""The report's comparison of later runs with the first: per-cell relative changes, regressions, improvements."""
from __future__ import annotations

import math

import pandas as pd

from .formatting import fmt, pct
from .render import Section, Table
from .report_input import Run
from .schema import quality

COMPARE_TOL = 0.05  # relative change beyond which a cell counts as better / worse


def compare_section(rows: pd.DataFrame, metrics: dict, runs: list[Run], tol: float) -> Section:
    base = runs[0].label
    sec = Section("Comparison with the first run", [
        f"Relative change of each cell (model, solver, NFE; mean over seeds) against {base}, for the headline "
        f"metric and the RMSE against the reference. Lower is better for both: a rise of more than {100 * tol:g}% "
        f"is a regression (red), a fall of more than {100 * tol:g}% an improvement (green)."])
    keys = ["group", "solver", "key"]
    ok = rows[rows["status"] == "ok"].assign(key=rows["nfe"].astype("Float64").fillna(-1.0))
    ok["q"] = pd.concat([quality(ok[ok["group"] == g], m) for g, m in metrics.items() if m is not None]
                        + [pd.Series(dtype=float)]).reindex(ok.index)
    means = ok.groupby(["run", *keys])[["q", "error_rmse"]].mean()
    for run in runs[1:]:
        sec.blocks.append(("h3", f"{run.label} vs {base}"))
        if base not in means.index or run.label not in means.index:
            sec.blocks.append(f"{run.label}: no ok cells to compare.")
            continue
        a, b = means.loc[base], means.loc[run.label]
        both = pd.merge(a, b, left_index=True, right_index=True, suffixes=("_a", "_b"))
        both["dq"] = (both["q_b"] - both["q_a"]) / both["q_a"].abs()
        both["de"] = (both["error_rmse_b"] - both["error_rmse_a"]) / both["error_rmse_a"].abs()
        both["worse"] = (both["dq"] > tol) | (both["de"] > tol)
        both["changed"] = both["worse"] | (both["dq"] < -tol) | (both["de"] < -tol)
        verdicts = []
        for solver, s in both.groupby(level="solver", sort=False):
            change = s["dq"].where(s["dq"].notna(), s["de"]).dropna()
            med = float(change.median()) if len(change) else math.nan
            word = ("better" if med < -tol else "worse" if med > tol else "unchanged") if len(change) else "not comparable"
            n_bad = int(s["worse"].sum())
            verdicts.append((solver, word, n_bad, ("p", f"{solver}: {word} (median change of the headline metric {pct(med)} "
                                                  f"over {len(s)} cells; {n_bad} regression{'s' if n_bad != 1 else ''}).",
                                            {"better": "good", "worse": "bad"}.get(word))))
        named = {w: [v[0] for v in verdicts if v[1] == w] for w in ("worse", "better", "unchanged")}
        sec.blocks += [("p", f"Worse: {', '.join(named['worse']) or 'none'}.", "bad" if named["worse"] else None),
                       ("p", f"Better: {', '.join(named['better']) or 'none'}.", "good" if named["better"] else None),
                       f"Unchanged (median change within ±{100 * tol:g}%): {', '.join(named['unchanged']) or 'none'}.",
                       *(v[3] for v in verdicts if v[1] != "unchanged" or v[2])]  # unchanged ones with regressions too
        sec.blocks += _change_grids(both, tol)
        mark = lambda v: (pct(v), "bad" if v > tol else "good" if v < -tol else None)  # noqa: E731
        body = [[group, solver, "adaptive" if key < 0 else str(int(key)), fmt(r["q_a"]), fmt(r["q_b"]), mark(r["dq"]),
                 fmt(r["error_rmse_a"]), fmt(r["error_rmse_b"]), mark(r["de"]),
                 ("regression", "bad") if r["worse"] else ("improved", "good")]
                for (group, solver, key), r in both[both["changed"]].sort_values("worse", ascending=False,
                                                                                 kind="stable").iterrows()]
        if body:
            sec.blocks += [("h3", f"Cells whose headline metric or RMSE changed by more than {100 * tol:g}%"),
                           Table(["model", "solver", "NFE", f"quality {base}", f"quality {run.label}", "Δ quality",
                                 f"RMSE {base}", f"RMSE {run.label}", "Δ RMSE", "verdict"], body, "solver")]
        only = len(set(map(tuple, a.index)) ^ set(map(tuple, b.index)))
        sec.blocks.append(f"{len(both) - len(body)} of {len(both)} common cells changed by at most {100 * tol:g}% "
                          f"and are not listed" + (f"; {only} cell(s) are in only one of the runs." if only else "."))
    return sec


def _change_grids(both: pd.DataFrame, tol: float) -> list:
    """Per model, the solver x NFE grid of the relative change of the headline metric (every common cell)."""
    blocks = []
    for group, g in both.groupby(level="group", sort=False):
        g = g.droplevel("group")
        keys = sorted({k for k in g.index.get_level_values("key")}, key=lambda k: (k < 0, k))
        body = []
        for solver in dict.fromkeys(g.index.get_level_values("solver")):
            row = [solver]
            for k in keys:
                v = g["dq"].get((solver, k), math.nan)
                row.append("—" if pd.isna(v) else (pct(v), "bad" if v > tol else "good" if v < -tol else None))
            body.append(row)
        blocks += [("h3", f"{group}: change of the headline metric per cell (red: regression)"),
                   Table(["solver"] + ["adaptive" if k < 0 else f"NFE {int(k)}" for k in keys], body, "solver")]
    return blocks
