"""`python -m bench report RUN_DIR [RUN_DIR ...]`: plots and tables of one or more runs as HTML and Markdown.

Reads each run's results.parquet (schema: bench/schema.py) and manifest.json. The report holds a summary of
the headline metric, figures (bench/plots.py), measured vs declared orders (bench/orders.py), the smallest
NFE that reaches a quality target, the quality vs wall-clock Pareto front, a comparison of later runs with the
first, failed cells and provenance.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from . import orders, plots
from .render import Section, Table, render_html, render_md
from .schema import COLUMNS, LABELS, conform, headline_metric, quality

FORMATS = ("html", "md")
REQUIRED = ("model", "solver", "kind", "nfe", "nfe_used", "seed", "status")
DEFAULT_TARGET = "1.1x"
COMPARE_TOL = 0.05  # relative change beyond which a cell counts as better / worse
TALL = 16000  # window height of a whole-page screenshot, cropped afterwards (Chromium's limit is ~16k)
CHROMIUMS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class ReportError(ValueError):
    """Bad report input: printed as one line by the CLI, which exits with 2."""


# ---------------------------------------------------------------- input

@dataclass
class Run:
    path: Path
    label: str
    rows: pd.DataFrame
    manifest: dict | None


def load_run(run_dir) -> Run:
    """One run directory's table (checked against the schema) and manifest."""
    path = Path(run_dir)
    table = path / "results.parquet"
    if not table.is_file():
        raise ReportError(f"{table} not found: a run directory holds results.parquet (written by `python -m bench run`)")
    try:
        rows = pd.read_parquet(table)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise ReportError(f"cannot read {table}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    missing = [c for c in REQUIRED if c not in rows]
    if missing:
        raise ReportError(f"{table} lacks required column(s) {', '.join(missing)}; required: {', '.join(REQUIRED)}")
    try:
        rows = conform(rows)
    except (TypeError, ValueError) as e:
        raise ReportError(f"{table} has a column of the wrong type ({e}); expected dtypes: {COLUMNS}") from None
    bad = sorted(set(rows["status"].dropna()) - {"ok", "failed", "skipped"})
    if bad:
        raise ReportError(f"{table}: unknown status value(s) {bad}; valid: ok, failed, skipped")
    manifest = None
    if (path / "manifest.json").is_file():
        try:
            manifest = json.loads((path / "manifest.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ReportError(f"cannot read {path / 'manifest.json'}: {e}") from None
    label = str((manifest or {}).get("run_id") or path.resolve().name)
    return Run(path, label, rows, manifest)


def parse_target(text: str) -> tuple[str, float]:
    """'1.1x' -> ('relative', 1.1): within 1.1 x the run's best; '0.05' -> ('absolute', 0.05): at most 0.05."""
    s = str(text).strip().lower()
    try:
        if s.endswith("x"):
            value = float(s[:-1])
            if value >= 1 and math.isfinite(value):
                return "relative", value
        else:
            value = float(s)
            if value >= 0 and math.isfinite(value):
                return "absolute", value
    except ValueError:
        pass
    raise ReportError(f"bad --target {text!r}: give a factor >= 1 with an x (e.g. 1.1x: within 10% of the best "
                      f"quality in the run) or an absolute value >= 0 of the headline metric (e.g. 0.05)")


def parse_formats(formats) -> tuple[str, ...]:
    items = [f.strip() for f in (formats.split(",") if isinstance(formats, str) else formats)]
    bad = [f for f in items if f not in FORMATS]
    if bad or not items:
        raise ReportError(f"unknown format(s) {', '.join(bad) or '(none)'}; valid: {', '.join(FORMATS)}")
    return tuple(dict.fromkeys(items))


# ---------------------------------------------------------------- formatting

def fmt(v, digits: int = 3) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def pct(v: float) -> str:
    return "—" if not math.isfinite(v) else f"{100 * v:+.1f}%"


def nfe_text(nfe) -> str:
    return "adaptive" if pd.isna(nfe) else str(int(nfe))


# ---------------------------------------------------------------- sections

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


# ---------------------------------------------------------------- entry points

def _group_labels(rows: pd.DataFrame) -> pd.Series:
    """The model name, with (schedule, prediction) added for models run with several of them."""
    sp = rows["schedule"].fillna("?") + ", " + rows["prediction"].fillna("?")
    several = sp.groupby(rows["model"]).transform("nunique") > 1
    return rows["model"].where(~several, rows["model"] + " (" + sp + ")")


def make_report(run_dirs, out_dir=None, formats=FORMATS, target=None, order_tol: float = orders.ORDER_TOL,
                compare_tol: float = COMPARE_TOL) -> Path:
    """Write the report of `run_dirs` (the first is the baseline of comparisons) into out_dir; returns the HTML
    path, or the Markdown path without html. out_dir defaults to <first run dir>/report."""
    formats = parse_formats(formats)
    goal = parse_target(DEFAULT_TARGET if target is None else target)
    run_dirs = [run_dirs] if isinstance(run_dirs, (str, Path)) else list(run_dirs)
    if not run_dirs:
        raise ReportError("give at least one run directory")
    runs = [load_run(d) for d in run_dirs]
    seen: dict[str, int] = {}
    for run in runs:  # labels tell runs apart in tables and legends
        seen[run.label] = seen.get(run.label, 0) + 1
        if seen[run.label] > 1:
            run.label = f"{run.label}#{seen[run.label]}"
    rows = pd.concat([r.rows.assign(run=r.label) for r in runs], ignore_index=True)
    rows["group"] = _group_labels(rows) if len(rows) else pd.Series(dtype="string")
    groups = list(dict.fromkeys(rows["group"]))
    metrics = {g: headline_metric(rows[rows["group"] == g]) for g in groups}
    out = Path(out_dir) if out_dir is not None else runs[0].path / "report"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"cannot create the output directory {out}: {e}") from None

    figures = plots.make_figures(rows, metrics, out)
    sections = [summary_section(rows, metrics), Section("Figures", list(figures) or ["No figures: no ok cell has a quality metric, a reference error or a wall-clock."]),
                order_section(rows, order_tol),
                target_section(rows, metrics, goal), pareto_section(rows, metrics)]
    if len(runs) > 1:
        sections.append(compare_section(rows, metrics, runs, compare_tol))
    sections += [failures_section(rows), provenance_section(runs)]
    title = "samplerbench report: " + ", ".join(r.label for r in runs)
    meta = (f"{len(rows)} cells, {len(groups)} model(s), {rows['solver'].nunique()} solver(s); made "
            f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `python -m bench report`.")
    written = {}
    if "html" in formats:
        written["html"] = out / "report.html"
        written["html"].write_text(render_html(title, meta, sections), encoding="utf-8")
    if "md" in formats:
        written["md"] = out / "report.md"
        written["md"].write_text(render_md(title, meta, sections), encoding="utf-8")
    return written.get("html", written.get("md"))


def find_chromium() -> str:
    exe = next((shutil.which(c) for c in CHROMIUMS if shutil.which(c)), None)
    if exe is None:
        raise ReportError(f"--screenshot needs Chromium on PATH (looked for {', '.join(CHROMIUMS)}); "
                          f"on Debian: apt-get install chromium")
    return exe


def parse_size(size: str) -> list[int]:
    """'1400' -> [1400] (whole page), '1400,3000' -> [1400, 3000] (fixed window)."""
    parts = str(size).split(",")
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ReportError(f"bad --screenshot-size {size!r}: give W (whole page) or W,H in pixels, e.g. 1400 or 1400,3000")
    return [int(p) for p in parts]


def screenshot(html_path: Path, png_path: Path, size: str = "1400") -> Path:
    """Render the HTML report to a PNG with headless Chromium (a check for a person; not needed by tests or CI).

    `size` is "W,H" for a fixed window, or "W" for the whole page: rendered in a window TALL pixels high
    and cropped below the last non-white row.
    """
    parts = parse_size(size)
    whole = len(parts) == 1
    exe = find_chromium()
    with tempfile.TemporaryDirectory() as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
               "--hide-scrollbars", f"--screenshot={Path(png_path).resolve()}",
               f"--window-size={parts[0]},{TALL if whole else parts[1]}", Path(html_path).resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    if not Path(png_path).is_file():
        raise ReportError(f"chromium made no screenshot (exit {proc.returncode}): {proc.stderr[-500:]}")
    if whole:
        from PIL import Image

        with Image.open(png_path) as im:
            im.load()
        ink = im.convert("L").point(lambda v: 255 if v < 250 else 0).getbbox()
        im.crop((0, 0, im.width, min(im.height, (ink[3] if ink else 0) + 30))).save(png_path)
    return Path(png_path)


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="run directories (results.parquet + manifest.json); later runs are compared with the first")
    parser.add_argument("--out", default=None, help="output directory (default: <first RUN_DIR>/report)")
    parser.add_argument("--format", default="html,md", help=f"comma-separated, from {', '.join(FORMATS)} (default html,md)")
    parser.add_argument("--target", default=DEFAULT_TARGET,
                        help="quality target: FACTORx = within FACTOR x the run's best quality per model "
                             "(default 1.1x, i.e. within 10%%), or a plain number = absolute headline value")
    parser.add_argument("--order-tol", type=float, default=orders.ORDER_TOL,
                        help=f"|measured - declared| order above which a solver is marked warn (default {orders.ORDER_TOL})")
    parser.add_argument("--compare-tol", type=float, default=COMPARE_TOL,
                        help=f"relative rise counted as a regression when comparing runs (default {COMPARE_TOL})")
    parser.add_argument("--screenshot", default=None, metavar="PNG",
                        help="also render the HTML with headless Chromium into this PNG (needs chromium)")
    parser.add_argument("--screenshot-size", default="1400", metavar="W[,H]",
                        help=f"window width of the screenshot, whole page (up to {TALL} px high); W,H: a fixed window")


def main_report(args) -> int:
    try:
        if args.order_tol <= 0 or args.compare_tol <= 0:
            raise ReportError("--order-tol and --compare-tol must be positive")
        formats = parse_formats(args.format)
        if args.screenshot and "html" not in formats:
            raise ReportError("--screenshot renders the HTML report: include html in --format")
        if args.screenshot:
            parse_size(args.screenshot_size)
            find_chromium()
        path = make_report(args.runs, args.out, formats, args.target, args.order_tol, args.compare_tol)
        print(f"report: {path}")
        if args.screenshot:
            print(f"screenshot: {screenshot(path, Path(args.screenshot), args.screenshot_size)}")
    except ReportError as e:
        print(f"python -m bench report: error: {e}", file=sys.stderr)
        return 2
    return 0
