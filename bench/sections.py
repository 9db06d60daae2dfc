"""The report's sections, each a pure function of the combined result rows (and group rows): recommendation,
summary, orders, target, Pareto front, timings, implementations compared, failed cells, provenance."""
from __future__ import annotations

import json
import math

import pandas as pd

from . import orders, plots, verdicts
from .counterparts import COUNTERPARTS
from .formatting import fmt, nfe_text
from .render import Section, Table
from .report_input import Run
from .schema import DATA_FREE, LABELS

SPREAD_WARN = 0.10  # timing spread (max - min) / median above which a cell's wall-clock is flagged


def pm(q: float, lo: float, hi: float) -> str:
    """'value ± half-width' (the interval's larger half when it is not symmetric)."""
    if not math.isfinite(q):
        return "—"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return fmt(q)
    return f"{fmt(q)} ± {fmt(max(hi - q, q - lo), 2)}"


def recommendation_section(rows: pd.DataFrame, metrics: dict, pairing, classes: dict) -> Section:
    sec = Section("Recommendation: which sampler at which NFE", [
        "Per model and NFE budget: the solver with the best mean headline metric, the solvers statistically tied "
        "with it (the 95% interval of the paired difference, over samples that share their x_T, includes zero), "
        "its quality with its 95% interval, and its sampling time per sample (median of the timed repeats). A "
        "solver is named better only where that interval excludes zero."])
    for group, metric in metrics.items():
        if metric is None:
            continue
        recs = verdicts.recommendation(rows[rows["group"] == group], metric, pairing, classes)
        if not recs:
            continue
        multi = len({r["run"] for r in recs}) > 1
        untested = any(r["untested"] for r in recs)  # runs without per-sample arrays cannot be paired
        body = [([r["run"]] if multi else []) + [
            str(r["nfe"]), (r["best"], None), pm(r["q"], r["lo"], r["hi"]),
            ", ".join(f"{s} (Δ {pm(*d)})" for s, d in r["tied"]) or ("none" if r["n"] > 1 else "only solver"),
            fmt(r["per_sample"] * 1e3) if math.isfinite(r["per_sample"]) else "—"]
            + ([", ".join(r["untested"]) or "—"] if untested else []) for r in recs]
        sec.blocks += [("h3", f"{group}: {LABELS.get(metric, metric)}, lower is better"),
                       Table((["run"] if multi else []) + ["NFE", "best solver", "quality ± 95%", "tied with it (Δ ± 95%)",
                                                          "ms per sample"]
                             + (["overlapping, not paired (no arrays)"] if untested else []), body, "best solver")]
    if len(sec.blocks) == 1:
        sec.blocks.append("No ok cell with a quality metric at a fixed NFE budget.")
    return sec


def equivalence_section(classes: dict) -> Section | None:
    labels = sorted(set(classes.values()))
    if not labels:
        return None
    return Section("Equivalent solvers", [
        "These solvers gave identical results (every metric and interval equal to 1e-4, relative) in every cell of the run; they are one "
        "line in the figures and one row in the tables: " + "; ".join(labels) + "."])


def summary_section(rows: pd.DataFrame, metrics: dict, groups: pd.DataFrame) -> Section:
    """The full solver x NFE table of the headline metric per model, value ± 95% half-width; cells whose interval
    overlaps the noise floor's are marked; cells that did not finish ok say so."""
    sec = Section("Summary", ["Headline metric per model (mean over the ok seeds, ± the 95% interval's half-width; "
                              "lower is better); adaptive solvers are shown at the NFE they used. ◦: indistinguishable "
                              "from the noise floor (real data against real data at the same sample size). Red: failed; "
                              "yellow: skipped, or some seeds did not finish ok."])
    multi = rows["run"].nunique() > 1
    for group, metric in metrics.items():
        g = rows[rows["group"] == group]
        if metric is None:
            if (g["status"] == "ok").any():
                sec.blocks.append(("h3", f"{group}: no quality metric in the table"))
            continue
        floor = verdicts.group_values(groups, group, "data", metric)
        cells = verdicts.cell_table(g, metric).set_index(["run", "solver", "key"])
        status = g.assign(key=g["nfe"].astype("Float64").fillna(-1.0)).groupby(["run", "solver", "key"], sort=False)[
            "status"].agg(lambda s: "ok" if (s == "ok").all() else "failed" if (s == "failed").any() else "skipped")
        keys = sorted({k for k in status.index.get_level_values("key")}, key=lambda k: (k < 0, k))
        body = []
        for run, solver in dict.fromkeys(zip(status.index.get_level_values("run"), status.index.get_level_values("solver"))):
            row = [run] if multi else []
            row.append(solver)
            for k in keys:
                st = status.get((run, solver, k))
                if st is None:
                    row.append("—")
                elif (run, solver, k) not in cells.index:
                    row.append((st, "bad" if st == "failed" else "warn"))
                else:
                    c = cells.loc[(run, solver, k)]
                    text = pm(c["q"], c["q_lo"], c["q_hi"]) + (f" @{c['used']:.0f}" if k < 0 else "")
                    text += " ◦" if verdicts.at_floor(c["q_lo"], c["q_hi"], floor) else ""
                    row.append((text, "warn") if st != "ok" else text)
            body.append(row)
        title = f"{group}: {LABELS.get(metric, metric)}"
        if math.isfinite(floor[0]):
            title += f" (noise floor {pm(*floor)})"
        sec.blocks += [("h3", title), Table((["run"] if multi else []) + ["solver"] + [
            f"NFE {int(k)}" if k >= 0 else "adaptive (@ NFE used)" for k in keys], body, "solver")]
    return sec


def declared_orders(rows: pd.DataFrame) -> dict[str, float]:
    """Declared orders from the solver registry, for tables that did not record an `order` (imports torch)."""
    if pd.to_numeric(rows["order"], errors="coerce").notna().groupby(rows["solver"]).any().all():
        return {}
    from solvers import get_solver, list_solvers
    return {n: float(get_solver(n).order) for n in list_solvers()}


def order_section(rows: pd.DataFrame, tol: float) -> Section:
    runs = list(dict.fromkeys(rows["run"]))
    tab = orders.order_table(rows, declared_orders(rows), tol, by=("run", "group"))
    sec = Section("Convergence order", [
        "Measured order p: minus the least-squares slope of log(RMSE vs reference) on log(NFE) over the asymptotic "
        f"range detected from the data (bench/orders.py: neighbouring local slopes within {orders.SLOPE_TOL:g} of "
        f"each other, at least {orders.MIN_POINTS} NFE values spanning {orders.MIN_SPAN:g}x or more), with its 95% "
        f"interval. 'pass' when |measured − declared| <= {tol:g}. Where a run's budgets cannot show the order the row "
        "says so; that is not a solver fault. To measure orders: "
        f"`{orders.MEASURE_COMMAND}`. Stochastic samplers are not listed: their error is a strong error (against "
        "Euler-Maruyama at 4096 steps on the same Brownian path per sample), drawn in the strong error figure."])
    if tab.empty:
        sec.blocks.append("No ODE solver has finite errors at two or more NFE budgets.")
        return sec
    body = []
    for (group, solver), g in tab.groupby(["group", "solver"], sort=False):
        row = [group, solver, fmt(g["declared"].iloc[0])]
        for run in runs:
            r = g[g["run"] == run]
            if r.empty:
                row += ["—", "—", "—"]
                continue
            r = r.iloc[0]
            cls = "good" if r["mark"] == "pass" else "warn" if r["mark"].startswith("warn") else None
            measured = "—" if math.isnan(r["measured"]) else (
                f"{r['measured']:.2f}" + (f" ({r['lo']:.2f}–{r['hi']:.2f})" if math.isfinite(r["lo"]) else ""))
            row += [measured, r["nfe_range"], (r["mark"], cls)]
        body.append(row)
    tag = (lambda run: f" {run}") if len(runs) > 1 else (lambda run: "")
    cols = ["model", "solver", "declared"] + [c + tag(run) for run in runs for c in ("measured (95%)", "NFE", "mark")]
    sec.blocks.append(Table(cols, body, "solver"))
    return sec


def target_section(rows: pd.DataFrame, metrics: dict, groups: pd.DataFrame, tolerance: float) -> Section:
    """Smallest NFE whose cell reaches the quality of the converged reference solution (within a tolerance)."""
    sec = Section("NFE to reach the reference quality", [
        "The target is the headline quality of the high-accuracy reference solution of the PF-ODE from the same "
        f"x_T (the converged answer every ODE solver tends to), plus {100 * tolerance:g}% (--tolerance): its 95% "
        "interval's upper end x (1 + tolerance). A cell reaches the target when its own 95% interval reaches below "
        "that. Stochastic samplers converge to the data distribution rather than to this solution, and can reach "
        "it too. Without a reference quality (old runs, or no ODE solver in the run) the section says so."])
    for group, metric in metrics.items():
        if metric is None:
            continue
        if metric in DATA_FREE:
            sec.blocks.append(f"{group}: no real data; its headline, the {LABELS[metric]}, measures the distance to "
                              "the reference itself (give --data for a quality target).")
            continue
        ref, threshold = quality_target(groups, group, metric, tolerance)
        if not math.isfinite(ref[0]):
            sec.blocks.append(f"{group}: no reference quality recorded; no target.")
            continue
        body = []
        for solver, (h, best) in first_hits(rows[rows["group"] == group], metric, threshold).items():
            if h is None:
                body.append([solver, ("not reached", "warn"), pm(best["q"], best["q_lo"], best["q_hi"]), "—"])
            else:
                body.append([solver, hit_nfe(h), pm(h["q"], h["q_lo"], h["q_hi"]), fmt(h["per_sample"] * 1e3)])
        sec.blocks += [("h3", f"{group}: reference {pm(*ref)}; target {LABELS.get(metric, metric)} <= {threshold:.3g}"),
                       Table(["solver", "smallest NFE", "quality ± 95%", "ms per sample"], body, "solver")]
    return sec


def quality_target(groups: pd.DataFrame, group: str, metric: str, tolerance: float) -> tuple[tuple, float]:
    """(the reference solution's quality (value, lo, hi), the target): its interval's upper end x (1 + tolerance)."""
    ref = verdicts.group_values(groups, group, "reference", metric)
    return ref, ref[2] * (1 + tolerance) if ref[2] >= 0 else ref[2] * (1 - tolerance)


def first_hits(rows: pd.DataFrame, metric: str, threshold: float) -> dict:
    """solver -> (its cheapest cell reaching `threshold`, or None; its best cell), over one group's rows."""
    out = {}
    for solver, c in verdicts.cell_table(rows, metric).groupby("solver", sort=False):
        c = c.sort_values("used")
        hit = c[[verdicts.reaches(lo, threshold) for lo in c["q_lo"]]]
        out[solver] = (None if hit.empty else hit.iloc[0], c.loc[c["q"].idxmin()])
    return out


def hit_nfe(h) -> str:
    return f"{h['used']:.0f} (adaptive)" if h["key"] < 0 else str(int(h["key"]))


def pareto_section(rows: pd.DataFrame, metrics: dict) -> Section:
    """The cells on the quality vs wall-clock Pareto front (medians of the timed repeats) of each model and run."""
    sec = Section("Pareto front: quality vs wall-clock", [
        "Cells (solver, NFE; mean quality over seeds, median wall-clock of the timed repeats) that no other cell of "
        "the same model and run beats on both, fastest first. A front cell whose timing spread is wider than the "
        "gap to its neighbour is not reliably faster than it: the spread column says how far to trust the order."])
    multi = rows["run"].nunique() > 1
    for group, metric in metrics.items():
        if metric is None:
            continue
        cells = plots.time_cells(rows[rows["group"] == group], metric)
        if cells.empty:
            continue
        body = [([run] if multi else []) + [r["solver"], nfe_text(r["nfe"]) if pd.notna(r["nfe"])
                                            else f"adaptive @{r['nfe_used']:.0f}", fmt(r["wall_s"]),
                                            _spread(r["spread"]), fmt(r["q"])]
                for run, g in cells.groupby("run", sort=False) for _, r in plots.pareto_front(g).iterrows()]
        sec.blocks += [("h3", f"{group}: {LABELS.get(metric, metric)}"),
                       Table((["run"] if multi else []) + ["solver", "NFE", "wall-clock (s, median)", "spread",
                                                           LABELS.get(metric, metric)], body, "solver")]
    if len(sec.blocks) == 1:
        sec.blocks.append("No ok cell with a quality metric and a wall-clock.")
    return sec


def _spread(v) -> str | tuple:
    if v is None or not math.isfinite(v):
        return "—"
    text = f"{100 * v:.0f}%"
    return (text, "warn") if v > SPREAD_WARN else text


def timing_section(rows: pd.DataFrame, runs: list[Run]) -> Section:
    """How far the wall-clocks can be trusted: repeats, spread, the machine's load."""
    ok = rows[rows["status"] == "ok"]
    spread = pd.to_numeric(ok.get("wall_spread", pd.Series(dtype=float)), errors="coerce")
    wide = ok[spread > SPREAD_WARN]
    sec = Section("Timings", [
        "wall_s is the median of --repeats timed repetitions of each cell (the same samples each time); the spread is "
        "(max − min) / median. A loaded machine widens it; compare timings only within one run."])
    for run in runs:
        m = run.manifest or {}
        dev, cfg, load = (m.get(k) if isinstance(m.get(k), dict) else {} for k in ("device", "config", "load_average"))
        sec.blocks.append(f"{run.label}: repeats {cfg.get('repeats', '—')}; CPU {dev.get('cpu_model', dev.get('cpu', '—'))}, "
                          f"{dev.get('torch_threads', '—')} torch thread(s); load average at start {load.get('start', '—')}, "
                          f"at end {load.get('end', '—')}.")
    if len(wide):
        sec.blocks.append(("p", f"{len(wide)} of {len(ok)} ok cells have a timing spread above {100 * SPREAD_WARN:g}%: "
                                "their wall-clocks (and Pareto positions) are uncertain by that much.", "warn"))
        body = [[r["group"], r["solver"], nfe_text(r["nfe"]), fmt(r["wall_s"]), _spread(float(r["wall_spread"]))]
                for _, r in wide.sort_values("wall_spread", ascending=False).head(30).iterrows()]
        sec.blocks.append(Table(["model", "solver", "NFE", "wall-clock (s)", "spread"], body, "solver"))
    elif len(ok):
        sec.blocks.append(("p", f"Every ok cell's timing spread is within {100 * SPREAD_WARN:g}%.", "good"))
    return sec


def failures_section(rows: pd.DataFrame) -> Section:
    bad = rows[rows["status"] != "ok"]
    sec = Section("Failed and skipped cells", [f"{len(bad)} of {len(rows)} cells did not finish ok."])
    if len(bad):
        multi = rows["run"].nunique() > 1
        body = [([r["run"]] if multi else []) + [r["group"], r["solver"], nfe_text(r["nfe"]), fmt(r["seed"]),
                                                 (r["status"], "bad" if r["status"] == "failed" else "warn"),
                                                 fmt(r["message"])[:300]] for _, r in bad.iterrows()]
        sec.blocks.append(Table((["run"] if multi else []) + ["model", "solver", "NFE", "seed", "status", "message"],
                                body, "solver"))
    return sec


def _value(v) -> str:
    """A manifest value as text: flat dicts as 'key value, ...', nested ones as JSON."""
    if isinstance(v, dict) and not any(isinstance(x, (dict, list)) for x in v.values()):
        return ", ".join(f"{k} {x}" for k, x in v.items()) or "—"
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return fmt(v)


def provenance_section(runs: list[Run]) -> Section:
    fields = {"directory": lambda r, m: str(r.path), "run id": lambda r, m: _value(m.get("run_id")),
              "created": lambda r, m: _value(m.get("created", m.get("started"))),
              "finished": lambda r, m: _value(m.get("finished")), "command": lambda r, m: _value(m.get("command")),
              "git commit": lambda r, m: _value(m.get("git_commit")), "device": lambda r, m: _value(m.get("device")),
              "cells": lambda r, m: ", ".join(f"{(r.rows['status'] == s).sum()} {s}" for s in ("ok", "failed", "skipped")),
              "versions": lambda r, m: _value(m.get("versions")), "config": lambda r, m: _value(m.get("config"))}
    shown = {"run_id", "created", "started", "finished", "command", "git_commit", "device", "versions", "config"}
    extra = dict.fromkeys(k for r in runs for k in (r.manifest or {}) if k not in shown)
    fields.update({k: (lambda key: lambda r, m: _value(m.get(key)))(k) for k in extra})
    body = [[name] + [f(r, r.manifest or {}) for r in runs] for name, f in fields.items()]
    sec = Section("Provenance", [Table(["field"] + [r.label for r in runs], body)])
    sec.blocks += [("p", f"{r.label}: no manifest.json in {r.path}.", "warn") for r in runs if r.manifest is None]
    return sec


def _delta(d) -> str | tuple:
    """A paired difference theirs − ours as text, marked where its 95% interval excludes zero."""
    if d is None or not math.isfinite(d[0]):
        return "—"
    text = pm(*d)
    if d[2] < 0:
        return (f"{text} theirs better", "good")
    if d[1] > 0:
        return (f"{text} ours better", "bad")
    return f"{text} tied"


def implementations_section(rows: pd.DataFrame, metrics: dict, pairing) -> Section | None:
    """Other libraries' implementations against ours of the same algorithm (bench.counterparts), at equal NFE on
    the same x_T: error and headline quality with intervals, their paired differences, time per sample. None when
    the run has no contender rows; needs no plugin, only the rows' solver names."""
    present = set(rows["solver"])
    pairs = [(theirs, ours) for theirs, ours in COUNTERPARTS.items() if theirs in present]
    if not pairs:
        return None
    sec = Section("Implementations compared", [(
        "Another library's implementation (a solver named lib.algorithm, e.g. from `--plugins diffusers`) against "
        "ours of the same algorithm, at equal NFE, from the same x_T. Their timesteps are their own (diffusers: "
        "uniform in t on a 1000-step chain), so a difference mixes implementation and grid. Δ is theirs − ours "
        "(lower is better), paired over shared samples with its 95% interval; 'theirs/ours better' only where that "
        "interval excludes zero. Times are medians of the timed repeats, per sample.")])
    absent = [f"{theirs} (ours: {ours})" for theirs, ours in pairs if ours not in present]
    pairs = [(theirs, ours) for theirs, ours in pairs if ours in present]
    multi = rows["run"].nunique() > 1
    for group, metric in metrics.items():
        g = rows[rows["group"] == group]
        tables = {m: verdicts.cell_table(g, m).set_index(["run", "solver", "key"]) for m in ("error_rmse", metric)
                  if m is not None}
        body = []
        for theirs, ours in pairs:
            for run in dict.fromkeys(g["run"]):
                keys = {k for t in tables.values() for r, s, k in t.index
                        if r == run and s == ours and k >= 0 and (r, theirs, k) in t.index}
                for key in sorted(keys):
                    row = ([run] if multi else []) + [ours, theirs, str(int(key))]
                    for m, t in tables.items():
                        cell = {s: t.loc[(run, s, key)] if (run, s, key) in t.index else None for s in (ours, theirs)}
                        row += [pm(c["q"], c["q_lo"], c["q_hi"]) if c is not None else "—" for c in cell.values()]
                        both = all(c is not None for c in cell.values())
                        row.append(_delta(pairing.difference(g, run, theirs, ours, key, m)) if both else "—")
                    times = [_per_sample(g, run, s, key) for s in (ours, theirs)]
                    ratio = times[1] / times[0] if times[0] > 0 and math.isfinite(times[0] * times[1]) else math.nan
                    row += [fmt(times[0] * 1e3), fmt(times[1] * 1e3) + (f" (×{ratio:.2g})" if math.isfinite(ratio)
                                                                       else "")]
                    body.append(row)
        if not body:
            continue
        cols = ["run"] if multi else []
        cols += ["ours", "theirs", "NFE"]
        for m in tables:
            label = LABELS.get(m, m)
            cols += [f"{label}: ours", "theirs", "Δ theirs − ours"]
        cols += ["ms per sample: ours", "theirs"]
        sec.blocks += [("h3", group), Table(cols, body, "theirs")]
    if absent:
        sec.blocks.append(("p", "Not compared, ours not in the run: " + "; ".join(absent) + ".", "warn"))
    if len(sec.blocks) == 1:
        sec.blocks.append("No NFE budget at which both implementations of an algorithm have an ok cell.")
    return sec


def _per_sample(rows: pd.DataFrame, run: str, solver: str, key: float) -> float:
    """Median wall-clock per sample of a solver's ok cells at one NFE of one run (NaN without one)."""
    sel = rows[(rows["run"] == run) & (rows["solver"] == solver) & (rows["status"] == "ok")]
    sel = sel[sel["nfe"].astype("Float64") == key]
    v = pd.to_numeric(sel.get("wall_per_sample_s", pd.Series(dtype=float)), errors="coerce").dropna()
    return float(v.median()) if len(v) else math.nan
