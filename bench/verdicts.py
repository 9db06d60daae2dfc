"""Verdicts a report states only where the data support them: equivalent solvers, the recommendation per model
and NFE (best solver and those statistically tied with it, paired), the noise floor and the quality target.

Paired comparisons use the per-sample arrays a run keeps beside its tables (bench.arrays): every solver of a
(model, schedule, seed) group started from the same x_T, so the difference of two cells' metrics is
bootstrapped over shared sample indices. Two cells whose own 95% intervals do not overlap differ without
that; only overlapping ones need the paired interval. With several seeds the per-seed differences are
averaged and their standard errors combined.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from . import arrays, intervals
from .schema import METRICS, bounds, quality, quality_bounds

EQUIV = " ≡ "


def equivalent_solvers(rows: pd.DataFrame, rtol: float = 1e-4) -> dict[str, str]:
    """solver -> the label of its class ("ddim ≡ dpm_solver_1") for solvers whose results are identical in the run:
    the same ok cells (run, model, schedule, seed, NFE), every metric and interval equal to `rtol` of its column's scale (float32 samples
    of one algorithm computed in two ways differ in the last bits; distinct solvers differ far more). Solvers alone
    in their class are absent. (Identical samples give identical metrics; the converse at 1e-4 over every metric of
    every cell is what "identical results" means for a reader of the tables.)"""
    ok = rows[rows["status"] == "ok"]
    cols = [c for m in METRICS for c in (m, *bounds(m)) if c in ok]
    if ok.empty or not cols:
        return {}
    key = ["run", "group", "seed", "nfe"]
    prints = {s: g.assign(nfe=g["nfe"].astype("Float64").fillna(-1.0)).set_index(key)[cols].astype(float).sort_index()
              for s, g in ok.groupby("solver", sort=False)}
    classes: list[list[str]] = []
    for solver, fp in prints.items():
        for members in classes:
            other = prints[members[0]]
            if other.index.equals(fp.index) and _close(other.to_numpy(), fp.to_numpy(), rtol):
                members.append(solver)
                break
        else:
            classes.append([solver])
    return {s: EQUIV.join(members) for members in classes if len(members) > 1 for s in members}


def _close(a: np.ndarray, b: np.ndarray, rtol: float) -> bool:
    """Equal to `rtol` of each column's scale (its largest size in either table), NaN where the other is NaN."""
    if np.any(np.isnan(a) != np.isnan(b)):
        return False
    scale = np.nanmax(np.abs(np.concatenate([a, b])), axis=0, initial=0.0)
    return bool(np.all(np.nan_to_num(np.abs(a - b)) <= rtol * scale + 1e-12))


def merge_equivalent(rows: pd.DataFrame, classes: dict[str, str]) -> pd.DataFrame:
    """Rows with each class of equivalent solvers drawn once, under its joined label (the first member's rows)."""
    if not classes:
        return rows
    first = {label.split(EQUIV)[0] for label in classes.values()}
    keep = ~rows["solver"].isin([s for s in classes if s not in first])
    out = rows[keep].copy()
    out["solver"] = out["solver"].map(lambda s: classes.get(s, s))
    return out


def group_values(groups: pd.DataFrame, group_label: str, source: str, metric: str) -> tuple[float, float, float]:
    """(value, lo, hi) of a group-level row (reference quality or noise floor), oriented, averaged over seeds."""
    g = groups[(groups["group"] == group_label) & (groups["source"] == source) & (groups["metric"] == metric)]
    if g.empty:
        return math.nan, math.nan, math.nan
    g = g.rename(columns={"value": metric, "lo": f"{metric}_lo", "hi": f"{metric}_hi"})
    lo, hi = quality_bounds(g, metric)
    return float(quality(g, metric).mean()), float(lo.mean()), float(hi.mean())


def cell_table(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per (run, group, solver, NFE) of the ok rows: mean oriented quality and interval over seeds,
    median wall-clock and per-sample time, the largest timing spread, NFE used."""
    ok = rows[rows["status"] == "ok"]
    lo, hi = quality_bounds(ok, metric)
    ok = ok.assign(q=quality(ok, metric), q_lo=lo, q_hi=hi, key=ok["nfe"].astype("Float64").fillna(-1.0))
    ok = ok[ok["q"].notna()]
    num = lambda c: pd.to_numeric(ok[c], errors="coerce") if c in ok else pd.Series(math.nan, index=ok.index)  # noqa
    ok = ok.assign(wall_s=num("wall_s"), per_sample=num("wall_per_sample_s"), spread=num("wall_spread"),
                   used=num("nfe_used"))
    return ok.groupby(["run", "group", "solver", "key"], sort=False).agg(
        q=("q", "mean"), q_lo=("q_lo", "mean"), q_hi=("q_hi", "mean"), wall_s=("wall_s", "median"),
        per_sample=("per_sample", "median"), spread=("spread", "max"), used=("used", "mean"),
        seeds=("seed", "nunique")).reset_index()


class Pairing:
    """Paired differences between cells of one run, from its arrays (None where they are missing)."""

    def __init__(self, run_dirs: dict[str, object]):
        self.run_dirs = run_dirs
        self._groups: dict = {}

    def _evaluator(self, run, row, seed):
        d = arrays.row_group_dir(self.run_dirs[run], row, seed)
        key = (run, str(d))
        if key not in self._groups:
            loaded = arrays.load_group(d / "group.safetensors")
            self._groups[key] = loaded[0] if loaded else None
        return self._groups[key]

    def difference(self, rows: pd.DataFrame, run: str, a: str, b: str, nfe, metric: str):
        """quality(a) - quality(b) at `nfe` over the seeds both have, with its 95% interval; None without arrays.
        `a` and `b` are solver names or labels of equivalent classes (whose first member's arrays are used)."""
        diffs, ses = [], []
        sel = rows[(rows["run"] == run) & (rows["status"] == "ok")]
        for seed, g in sel.groupby("seed"):
            ra, rb = g[g["solver"] == a], g[g["solver"] == b]
            ra, rb = ra[ra["nfe"].astype("Float64") == nfe], rb[rb["nfe"].astype("Float64") == nfe]
            if ra.empty or rb.empty:
                continue
            r = ra.iloc[0]
            ev = self._evaluator(run, r, int(seed))
            ca, cb = (arrays.load_cell(arrays.cell_path(self.run_dirs[run], r["model"], r["schedule"], r["prediction"],
                                                        int(seed), name.split(EQUIV)[0], nfe, r.get("guidance_kind"),
                                                        r.get("guidance"))) for name in (a, b))
            if ev is None or ca is None or cb is None or metric not in ev.metrics(ca[0]) or ca[0].n != cb[0].n:
                return None
            d, lo, hi = ev.paired(ca[0], cb[0], metric, int(seed))
            diffs.append(d)
            ses.append((hi - lo) / (2 * intervals.Z95))
        if not diffs:
            return None
        se = math.sqrt(sum(s * s for s in ses)) / len(ses)
        return intervals.normal(float(np.mean(diffs)), se)


def recommendation(rows: pd.DataFrame, metric: str, pairing: Pairing, classes: dict[str, str]) -> list[dict]:
    """Per (run, NFE budget): the best solver, those tied with it (paired interval of the difference includes 0)
    and the evidence. `rows` are one group's rows; equivalent solvers count once under their joined label."""
    out = []
    cells = cell_table(rows, metric)
    for (run, key), c in cells[cells["key"] >= 0].groupby(["run", "key"], sort=True):
        c = c.sort_values("q")
        best = c.iloc[0]
        tied, untested = [], []
        for _, other in c.iloc[1:].iterrows():
            if not intervals.overlap(best["q_lo"], best["q_hi"], other["q_lo"], other["q_hi"]):
                continue  # its own interval lies above the best's: worse without a paired test
            diff = pairing.difference(rows, run, other["solver"], best["solver"], key, metric)
            if diff is None:
                untested.append(other["solver"])
            elif not intervals.excludes_zero(diff[1], diff[2]):
                tied.append((other["solver"], diff))
        out.append({"run": run, "nfe": int(key), "best": classes.get(best["solver"], best["solver"]), "q": best["q"],
                    "lo": best["q_lo"], "hi": best["q_hi"], "per_sample": best["per_sample"], "tied": tied,
                    "untested": untested, "n": len(c)})
    return out


def reaches(lo: float, threshold: float) -> bool:
    """A cell reaches a target when its interval overlaps (-inf, threshold]."""
    return math.isfinite(lo) and math.isfinite(threshold) and lo <= threshold


def at_floor(lo: float, hi: float, floor: tuple[float, float, float]) -> bool:
    """Indistinguishable from the noise floor: the cell's interval overlaps the floor's (data vs data)."""
    return math.isfinite(floor[0]) and intervals.overlap(lo, hi, floor[1], floor[2]) and math.isfinite(lo)
