"""The report's comparison of later runs with the first: configuration differences, per-cell relative changes,
regressions and improvements called only where the two runs' 95% intervals are apart."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from .formatting import fmt, pct
from .intervals import overlap
from .render import Section, Table
from .report_input import Run
from .schema import LABELS
from .verdicts import cell_table

COMPARE_TOL = 0.05  # relative change beyond which a cell counts as better / worse
# Estimators whose expectation moves with the sample count: runs with different counts differ without any change
# of the sampler. Errors against the reference solution (same x_T, per sample) do not.
SAMPLE_BIASED = ("fid", "swd", "mmd")
MANIFEST_FIELDS = ("config", "versions", "device")
KEYS = ["group", "solver", "key"]


def manifest_fields(manifest: dict | None) -> dict[str, str]:
    """The manifest's config, versions and device as flat 'config.samples' -> text."""
    out = {}
    for name in MANIFEST_FIELDS:
        value = (manifest or {}).get(name)
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for key, v in items:
            if v is not None:
                out[name if key is None else f"{name}.{key}"] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    return out


def config_differences(a: dict | None, b: dict | None) -> list[tuple[str, str, str]]:
    """(field, value in a, value in b) for each manifest field (config, versions, device) that differs."""
    fa, fb = manifest_fields(a), manifest_fields(b)
    return [(k, fa.get(k, "—"), fb.get(k, "—")) for k in sorted({*fa, *fb}) if fa.get(k) != fb.get(k)]


def cell_means(rows: pd.DataFrame, metrics: dict, runs: list[Run]) -> pd.DataFrame:
    """Per (run, group, solver, NFE key): the headline quality q and the RMSE e, means over seeds with their
    intervals (bench.verdicts.cell_table), and the sample count as text (the `samples` column, else the
    manifest's config.samples)."""
    parts = []
    for group, metric in metrics.items():
        g = rows[rows["group"] == group]
        tables = [cell_table(g, m).set_index(["run", *KEYS])[["q", "q_lo", "q_hi"]]
                  .set_axis([x, f"{x}_lo", f"{x}_hi"], axis=1) for m, x in ((metric, "q"), ("error_rmse", "e")) if m]
        parts.append(pd.concat(tables, axis=1))
    empty = pd.DataFrame(index=pd.MultiIndex.from_tuples([], names=["run", *KEYS]))
    out = pd.concat(parts or [empty]).reindex(columns=["q", "q_lo", "q_hi", "e", "e_lo", "e_hi"])
    ok = rows[rows["status"] == "ok"].assign(key=rows["nfe"].astype("Float64").fillna(-1.0))
    config = {r.label: ((r.manifest or {}).get("config") or {}).get("samples") for r in runs}
    samples = ok["samples"].astype("string").fillna(ok["run"].map(lambda r: "" if config.get(r) is None else str(config[r])))
    n_text = samples.groupby([ok[c] for c in ("run", *KEYS)]).agg(lambda s: "/".join(sorted(set(s))) or "?")
    return out.astype(float).join(n_text.rename("samples"))


def judge(both: pd.DataFrame, metrics: dict, tol: float) -> pd.DataFrame:
    """Per common cell: relative changes dq, de; `apart_*` when the 95% intervals do not overlap (True where either
    run has none: the tolerance alone decides); worse / better; quality not compared where the sample counts
    differ and the headline metric is biased by them."""
    biased = both.index.get_level_values("group").map(lambda g: metrics.get(g) in SAMPLE_BIASED)
    both["n_differ"] = both["samples_a"] != both["samples_b"]
    both["q_comparable"] = ~(both["n_differ"] & np.asarray(biased, dtype=bool))
    for x in ("q", "e"):
        a, b = both[f"{x}_a"], both[f"{x}_b"]
        change = (b - a) / a.abs()
        both[f"d{x}"] = change.where(both["q_comparable"]) if x == "q" else change
        iv = both[[f"{x}_lo_a", f"{x}_hi_a", f"{x}_lo_b", f"{x}_hi_b"]]
        # intervals.overlap counts a missing bound as overlapping; here a run without intervals (an old one) falls
        # back to the tolerance, which the section says
        both[f"apart_{x}"] = [not (np.isfinite(t).all() and overlap(*t)) for t in iv.to_numpy(dtype=float)]
        both[f"worse_{x}"] = (both[f"d{x}"] > tol) & both[f"apart_{x}"]
        both[f"better_{x}"] = (both[f"d{x}"] < -tol) & both[f"apart_{x}"]
    both["worse"] = both["worse_q"] | both["worse_e"]
    both["better"] = ~both["worse"] & (both["better_q"] | both["better_e"])
    both["changed"] = (both["dq"].abs() > tol) | (both["de"].abs() > tol)
    return both


def _mark(d: float, worse: bool, better: bool) -> tuple[str, str | None]:
    return pct(d), "bad" if worse else "good" if better else None


def _interval(v, lo, hi) -> str:
    return fmt(v) if pd.isna(lo) or pd.isna(hi) else f"{fmt(v)} [{fmt(lo)}, {fmt(hi)}]"


def _samples_note(both: pd.DataFrame, metrics: dict) -> list:
    """One line per model whose headline quality is not compared because the sample counts differ."""
    out = []
    for group, g in both[~both["q_comparable"]].groupby(level="group", sort=False):
        pairs = ", ".join(dict.fromkeys(f"{a} vs {b}" for a, b in zip(g["samples_a"], g["samples_b"])))
        out.append(("p", f"{group}: {LABELS.get(metrics[group], metrics[group])} not comparable: samples differ "
                         f"({pairs}); it is biased by the sample count, so its changes are not called regressions. "
                         f"The RMSE against the reference is still compared.", "warn"))
    return out


def _config_note(base: Run, run: Run) -> list:
    if base.manifest is None or run.manifest is None:
        missing = ", ".join(r.label for r in (base, run) if r.manifest is None)
        return [("p", f"Configuration differences unknown: no manifest.json for {missing}.", "warn")]
    diff = config_differences(base.manifest, run.manifest)
    if not diff:
        return ["Same configuration, versions and device."]
    return [("p", "Differences in configuration, versions and device: "
                  + "; ".join(f"{k} ({a} vs {b})" for k, a, b in diff) + ".", "warn")]


def _verdicts(both: pd.DataFrame, tol: float) -> list[tuple]:
    """Per solver: (solver, word, paragraph, whether to show it). The word follows the median change of the headline
    metric (the RMSE where the headline is not compared) and needs one cell whose intervals are apart."""
    out = []
    for solver, s in both.groupby(level="solver", sort=False):
        use_q = s["dq"].notna().any()
        change, what = (s["dq"], "headline metric") if use_q else (s["de"], "RMSE against the reference")
        change = change.dropna()
        med = float(change.median()) if len(change) else math.nan
        n_bad, n_good = int(s["worse"].sum()), int(s["better"].sum())
        word = ("not comparable" if not len(change) else "worse" if med > tol and n_bad
                else "better" if med < -tol and n_good else "unchanged")
        noise = "" if word != "unchanged" or abs(med) <= tol else "; the intervals overlap"
        text = (f"{solver}: {word} (median change of the {what} {pct(med)} over {len(s)} cells; "
                f"{n_bad} regression{'s' if n_bad != 1 else ''}{noise}).")
        out.append((solver, word, ("p", text, {"better": "good", "worse": "bad"}.get(word)),
                    word != "unchanged" or bool(n_bad) or bool(noise)))
    return out


def compare_section(rows: pd.DataFrame, metrics: dict, runs: list[Run], tol: float) -> Section:
    base = runs[0]
    sec = Section("Comparison with the first run", [
        f"Relative change of each cell (model, solver, NFE; mean over seeds) against {base.label}, for the headline "
        f"metric and the RMSE against the reference. Lower is better for both. A cell is a regression (red) only "
        f"when its change exceeds +{100 * tol:g}% and the two runs' 95% intervals of the cell do not overlap; an "
        f"improvement (green) likewise below -{100 * tol:g}%. A cell's interval is the mean of its seeds' "
        f"intervals. Where a run has no interval columns (older runs) the tolerance alone decides. "
        f"FID, sliced Wasserstein and MMD are biased by the sample count: where it differs between the runs they "
        f"are not compared; the RMSE against the reference still is."])
    means = cell_means(rows, metrics, runs)
    for run in runs[1:]:
        sec.blocks += [("h3", f"{run.label} vs {base.label}"), *_config_note(base, run)]
        labels = set(means.index.get_level_values("run"))
        if base.label not in labels or run.label not in labels:
            sec.blocks.append(f"{run.label}: no ok cells to compare.")
            continue
        a, b = means.loc[base.label], means.loc[run.label]
        both = judge(pd.merge(a, b, left_index=True, right_index=True, suffixes=("_a", "_b")), metrics, tol)
        no_iv = [lab for lab, m in ((base.label, a), (run.label, b)) if m[["q_lo", "e_lo"]].isna().all().all()]
        if no_iv:
            sec.blocks.append(("p", f"No 95% intervals in {', '.join(no_iv)}: regressions are judged by the "
                                    f"±{100 * tol:g}% tolerance alone.", "warn"))
        sec.blocks += _samples_note(both, metrics)
        verdicts = _verdicts(both, tol)
        named = {w: [v[0] for v in verdicts if v[1] == w] for w in ("worse", "better", "unchanged", "not comparable")}
        sec.blocks += [("p", f"Worse: {', '.join(named['worse']) or 'none'}.", "bad" if named["worse"] else None),
                       ("p", f"Better: {', '.join(named['better']) or 'none'}.", "good" if named["better"] else None),
                       f"Unchanged (median change within ±{100 * tol:g}% or within the intervals): "
                       f"{', '.join(named['unchanged']) or 'none'}.",
                       *([f"Not comparable (no common metric): {', '.join(named['not comparable'])}."]
                         if named["not comparable"] else []),
                       *(v[2] for v in verdicts if v[3])]
        sec.blocks += _change_grids(both)
        sec.blocks += _changed_table(both, base.label, run.label, tol)
        only = len(set(map(tuple, a.index)) ^ set(map(tuple, b.index)))
        n_listed = int(both["changed"].sum())
        sec.blocks.append(f"{len(both) - n_listed} of {len(both)} common cells changed by at most {100 * tol:g}% "
                          f"and are not listed" + (f"; {only} cell(s) are in only one of the runs." if only else "."))
    return sec


def _changed_table(both: pd.DataFrame, base: str, other: str, tol: float) -> list:
    """The cells whose headline metric or RMSE changed by more than tol, regressions first."""
    def verdict(r) -> tuple[str, str | None]:
        if r["worse"] or r["better"]:
            return ("regression", "bad") if r["worse"] else ("improved", "good")
        return "within the intervals", "warn"

    def dq(r):
        if not r["q_comparable"]:
            return f"not comparable: samples differ ({r['samples_a']} vs {r['samples_b']})"
        return _mark(r["dq"], r["worse_q"], r["better_q"])

    changed = both[both["changed"]].assign(_order=lambda d: np.where(d["worse"], 0, np.where(d["better"], 1, 2)))
    body = [[group, solver, "adaptive" if key < 0 else str(int(key)),
             _interval(r["q_a"], r["q_lo_a"], r["q_hi_a"]), _interval(r["q_b"], r["q_lo_b"], r["q_hi_b"]), dq(r),
             _interval(r["e_a"], r["e_lo_a"], r["e_hi_a"]), _interval(r["e_b"], r["e_lo_b"], r["e_hi_b"]),
             _mark(r["de"], r["worse_e"], r["better_e"]), verdict(r)]
            for (group, solver, key), r in changed.sort_values("_order", kind="stable").iterrows()]
    if not body:
        return []
    return [("h3", f"Cells whose headline metric or RMSE changed by more than {100 * tol:g}%"),
            Table(["model", "solver", "NFE", f"quality {base}", f"quality {other}", "Δ quality",
                   f"RMSE {base}", f"RMSE {other}", "Δ RMSE", "verdict"], body, "solver")]


def _change_grids(both: pd.DataFrame) -> list:
    """Per model, the solver x NFE grid of the relative change of the headline metric (of the RMSE where the
    headline is not compared); red / green only where the intervals are apart."""
    blocks = []
    for group, g in both.groupby(level="group", sort=False):
        g = g.droplevel("group")
        x, what = ("q", "the headline metric") if g["dq"].notna().any() else ("e", "the RMSE (headline not comparable)")
        keys = sorted(set(g.index.get_level_values("key")), key=lambda k: (k < 0, k))
        body = []
        for solver in dict.fromkeys(g.index.get_level_values("solver")):
            row = [solver]
            for k in keys:
                r = g.loc[(solver, k)] if (solver, k) in g.index else None
                ok = r is not None and not pd.isna(r[f"d{x}"])
                row.append(_mark(r[f"d{x}"], r[f"worse_{x}"], r[f"better_{x}"]) if ok else "—")
            body.append(row)
        blocks += [("h3", f"{group}: change of {what} per cell (red: regression)"),
                   Table(["solver"] + ["adaptive" if k < 0 else f"NFE {int(k)}" for k in keys], body, "solver")]
    return blocks
