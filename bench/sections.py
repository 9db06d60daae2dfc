"""The report's sections, each a pure function of the combined result rows: summary, orders, target, Pareto
front, failed cells, provenance."""
from __future__ import annotations

import json
import math

import pandas as pd

from . import orders, plots
from .formatting import fmt, nfe_text
from .render import Section, Table
from .report_input import Run
from .schema import LABELS, quality


def summary_section(rows: pd.DataFrame, metrics: dict) -> Section:
    """The full solver x NFE table of the headline metric per model; cells that did not finish ok say so."""
    sec = Section("Summary", ["Headline metric per model (mean over the ok seeds, lower is better); adaptive solvers "
                              "are shown at the NFE they used. A cell with no ok seed shows its status (red: failed); "
                              "yellow: some seeds of the cell did not finish ok (see Failed and skipped cells)."])
    multi = rows["run"].nunique() > 1
    for group, metric in metrics.items():
        g = rows[rows["group"] == group]
        if metric is None and (g["status"] == "ok").any():
            sec.blocks.append(("h3", f"{group}: no quality metric in the table"))
            continue
        q = quality(g, metric) if metric is not None else pd.Series(math.nan, index=g.index)
        g = g.assign(q=q.where(g["status"] == "ok"), col=g["nfe"].map(nfe_text),
                     bad=(g["status"] != "ok").astype(int))
        keys = ["run", "solver", "col"]
        agg = g.groupby(keys, sort=False).agg(q=("q", "mean"), bad=("bad", "sum"), n=("bad", "size"),
                                              failed=("status", lambda s: (s == "failed").any()))
        cols = sorted({c for c in agg.index.get_level_values("col") if c != "adaptive"}, key=int)
        cols += ["adaptive"] if "adaptive" in set(agg.index.get_level_values("col")) else []
        used = g[g["nfe"].isna() & (g["status"] == "ok")].groupby(["run", "solver"])["nfe_used"].mean()
        body = []
        for run, solver in dict.fromkeys(zip(agg.index.get_level_values("run"), agg.index.get_level_values("solver"))):
            cells = []
            for c in cols:
                if (run, solver, c) not in agg.index:
                    cells.append("—")
                    continue
                r = agg.loc[(run, solver, c)]
                if r["bad"] == r["n"]:
                    cells.append(("failed", "bad") if r["failed"] else ("skipped", "warn"))
                    continue
                text = fmt(r["q"]) + (f" @{used[(run, solver)]:.0f}" if c == "adaptive" and (run, solver) in used else "")
                cells.append((f"{text} ({int(r['bad'])} of {int(r['n'])} seeds not ok)", "warn") if r["bad"] else text)
            body.append(([run] if multi else []) + [solver] + cells)
        title = f"{group}: {LABELS.get(metric, metric)}" if metric is not None else f"{group}: no ok cell"
        sec.blocks += [("h3", title),
                       Table((["run"] if multi else []) + ["solver"]
                             + [f"NFE {c}" if c != "adaptive" else "adaptive (@ NFE used)" for c in cols], body, "solver")]
    return sec


def _declared_orders(rows: pd.DataFrame) -> dict[str, float]:
    """Declared orders from the solver registry, for tables that did not record an `order` (imports torch)."""
    if pd.to_numeric(rows["order"], errors="coerce").notna().groupby(rows["solver"]).any().all():
        return {}
    from solvers import get_solver, list_solvers
    return {n: float(get_solver(n).order) for n in list_solvers()}


def order_section(rows: pd.DataFrame, tol: float) -> Section:
    runs = list(dict.fromkeys(rows["run"]))
    tab = orders.order_table(rows, _declared_orders(rows), tol, by=("run", "group"))
    sec = Section("Convergence order", [
        f"Measured order p: minus the least-squares slope of log(RMSE vs reference) on log(NFE) over the asymptotic "
        f"part of the curve (every NFE >= max NFE / {orders.SPAN:g}, at least the {orders.MIN_POINTS} largest; "
        f"geometric mean over seeds). Fixed-budget ODE solvers only. A mark is 'pass' when |measured − declared| "
        f"<= {tol:g}. Stochastic samplers have no path error and are not listed."])
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
            mark = (r["mark"], "good" if r["mark"] == "pass" else "warn" if r["mark"].startswith("warn") else None)
            row += ["—" if math.isnan(r["measured"]) else f"{r['measured']:.2f}", r["nfe_range"], mark]
        body.append(row)
    tag = (lambda run: f" {run}") if len(runs) > 1 else (lambda run: "")
    cols = ["model", "solver", "declared"] + [c + tag(run) for run in runs for c in ("measured", "NFE fitted", "mark")]
    sec.blocks.append(Table(cols, body, "solver"))
    return sec


def target_section(rows: pd.DataFrame, metrics: dict, target: tuple[str, float]) -> Section:
    kind, value = target
    runs = list(dict.fromkeys(rows["run"]))
    rule = (f"within {value:g}x of the best mean quality any solver reaches for that model in the run"
            if kind == "relative" else f"at most {value:g}")
    sec = Section("NFE to reach a quality target", [
        f"Smallest NFE whose mean headline metric over seeds is {rule} (set with --target); the quality and the "
        f"wall-clock are that cell's (the best quality reached when the target is not)."])
    for group, metric in metrics.items():
        g = rows[(rows["group"] == group) & (rows["status"] == "ok")]
        if metric is None or g.empty:
            continue
        g = g.assign(q=quality(g, metric), key=g["nfe"].astype("Float64").fillna(-1.0))
        cell = g.groupby(["run", "solver", "key"]).agg(q=("q", "mean"), wall=("wall_s", "mean"), used=("nfe_used", "mean"))
        if cell["q"].notna().sum() == 0:
            continue
        best = cell.groupby(level="run")["q"].min()
        threshold = {run: float(best.get(run, math.nan)) * value if kind == "relative" else value for run in runs}
        body = []
        for solver in plots._ordered_solvers(g):
            row = [solver]
            for run in runs:
                if (run, solver) not in cell.index.droplevel("key"):
                    row += ["—", "—", "—"]
                    continue
                c = cell.loc[(run, solver)].sort_values("used")
                hit = c[c["q"] <= threshold[run]]
                if hit.empty:
                    row += [("not reached", "warn"), fmt(c["q"].min()), "—"]
                else:
                    h, key = hit.iloc[0], hit.index[0]
                    row += [f"{h['used']:.0f} (adaptive)" if key < 0 else str(int(key)), fmt(h["q"]), fmt(h["wall"])]
            body.append(row)
        tag = (lambda run: f" {run}") if len(runs) > 1 else (lambda run: "")
        limits = ", ".join(f"{threshold[r]:.3g}" + (f" ({r})" if len(runs) > 1 else "") for r in runs)
        sec.blocks += [("h3", f"{group}: {LABELS.get(metric, metric)} <= {limits}"),
                       Table(["solver"] + [c + tag(run) for run in runs for c in ("smallest NFE", "quality", "wall-clock (s)")],
                             body, "solver")]
    if len(sec.blocks) == 1:
        sec.blocks.append("No ok cell with a quality metric.")
    return sec


def pareto_section(rows: pd.DataFrame, metrics: dict) -> Section:
    """The cells on the quality vs wall-clock Pareto front of each model (and run): the plot's outlined points."""
    sec = Section("Pareto front: quality vs wall-clock", [
        "Cells (solver, NFE; mean over seeds) that no other cell of the same model and run beats on both the "
        "sampling wall-clock and the headline metric, fastest first. Each is the best quality reachable within "
        "its wall-clock."])
    multi = rows["run"].nunique() > 1
    for group, metric in metrics.items():
        if metric is None:
            continue
        cells = plots.time_cells(rows[rows["group"] == group], metric)
        if cells.empty:
            continue
        body = [([run] if multi else []) + [r["solver"], nfe_text(r["nfe"]) if pd.notna(r["nfe"])
                                            else f"adaptive @{r['nfe_used']:.0f}", fmt(r["wall_s"]), fmt(r["q"])]
                for run, g in cells.groupby("run", sort=False) for _, r in plots.pareto_front(g).iterrows()]
        sec.blocks += [("h3", f"{group}: {LABELS.get(metric, metric)}"),
                       Table((["run"] if multi else []) + ["solver", "NFE", "wall-clock (s)", LABELS.get(metric, metric)],
                             body, "solver")]
    if len(sec.blocks) == 1:
        sec.blocks.append("No ok cell with a quality metric and a wall-clock.")
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
