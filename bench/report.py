"""`python -m bench report RUN_DIR [RUN_DIR ...]`: plots and tables of one or more runs as HTML and Markdown.

Reads each run's results.parquet, groups.parquet, arrays/ and manifest.json. The report opens with the
recommendation (best solver per model and NFE, with the solvers tied with it), then the summary with intervals
and noise-floor marks, figures (bench/plots.py), measured vs declared orders (bench/orders.py), other libraries'
implementations against ours of the same algorithm (bench/counterparts.py), the smallest NFE
that reaches the reference solution's quality, the Pareto front, timings, a comparison of later runs with the
first, failed cells and provenance. Verdicts live in bench/verdicts.py, sections in bench/sections.py.
"""
from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from . import arrays, orders, plots, verdicts
from .cli import positive_number
from .compare_runs import COMPARE_TOL, compare_section
from .group_rows import read_group_rows
from .guidance_report import guidance_section
from .render import Section, render_html, render_md
from .report_input import FORMATS, ReportError, load_run, parse_formats
from .screenshot import TALL, find_chromium, parse_size, screenshot
from .schema import headline_metric
from .sections import (equivalence_section, failures_section, implementations_section, order_section, pareto_section,
                       provenance_section, recommendation_section, summary_section, target_section, timing_section)

DEFAULT_TOLERANCE = 0.1


def _group_labels(rows: pd.DataFrame) -> pd.Series:
    """The model name, with (schedule, prediction) added for models run with several of them, and the guidance
    ("cfg w=4") of guided rows."""
    sp = rows["schedule"].fillna("?") + ", " + rows["prediction"].fillna("?")
    several = sp.groupby(rows["model"]).transform("nunique") > 1
    label = rows["model"].where(~several, rows["model"] + " (" + sp + ")")
    return label + guidance_labels(rows)


def guidance_labels(rows: pd.DataFrame) -> pd.Series:
    """" cfg w=4" for guided rows, "" for the others."""
    if "guidance" not in rows or not len(rows):
        return pd.Series("", index=rows.index, dtype="string")
    w = pd.to_numeric(rows["guidance"], errors="coerce")
    text = ["" if pd.isna(v) else f" {k if isinstance(k, str) else '?'} w={v:g}" for k, v in zip(rows["guidance_kind"], w)]
    return pd.Series(text, index=rows.index, dtype="string")


def make_report(run_dirs, out_dir=None, formats=FORMATS, tolerance: float = DEFAULT_TOLERANCE,
                order_tol: float = orders.ORDER_TOL, compare_tol: float = COMPARE_TOL) -> Path:
    """Write the report of `run_dirs` (the first is the baseline of comparisons) into out_dir; returns the HTML
    path, or the Markdown path without html. out_dir defaults to <first run dir>/report."""
    formats = parse_formats(formats)
    runs = _load_runs(run_dirs)
    rows = pd.concat([r.rows.assign(run=r.label) for r in runs], ignore_index=True)
    rows["group"] = _group_labels(rows) if len(rows) else pd.Series(dtype="string")
    groups = _group_rows(runs, rows)
    classes = verdicts.equivalent_solvers(rows)
    shown = verdicts.merge_equivalent(rows, classes)  # equivalent solvers: one line, one row
    labels = list(dict.fromkeys(rows["group"]))
    metrics = {g: headline_metric(rows[rows["group"] == g]) for g in labels}
    out = Path(out_dir) if out_dir is not None else runs[0].path / "report"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"cannot create the output directory {out}: {e}") from None
    lines = {g: (verdicts.group_values(groups, g, "data", m), verdicts.group_values(groups, g, "reference", m))
             for g, m in metrics.items() if m is not None}
    samples = {g: drawn for g in labels
               if (drawn := arrays.drawn_samples(runs[0].path, shown[(shown["group"] == g) & (shown["run"] == runs[0].label)]))}
    figures = plots.make_figures(shown, metrics, out, lines, samples)
    pairing = verdicts.Pairing({r.label: r.path for r in runs})
    sections = [recommendation_section(shown, metrics, pairing, classes), equivalence_section(classes),
                summary_section(shown, metrics, groups),
                Section("Figures", list(figures) or ["No figures: no ok cell has a quality metric, a reference error "
                                                     "or a wall-clock."]),
                order_section(shown, order_tol), implementations_section(rows, metrics, pairing),
                target_section(shown, metrics, groups, tolerance),
                pareto_section(shown, metrics), guidance_section(shown, metrics, groups, tolerance, order_tol, out),
                timing_section(shown, runs)]
    if len(runs) > 1:
        sections.append(compare_section(rows, metrics, runs, compare_tol))
    sections += [failures_section(rows), provenance_section(runs)]
    return _write(out, formats, runs, rows, [s for s in sections if s is not None])


def _load_runs(run_dirs) -> list:
    run_dirs = [run_dirs] if isinstance(run_dirs, (str, Path)) else list(run_dirs)
    if not run_dirs:
        raise ReportError("give at least one run directory")
    runs = [load_run(d) for d in run_dirs]
    seen: dict[str, int] = {}
    for run in runs:  # labels tell runs apart in tables and legends
        seen[run.label] = seen.get(run.label, 0) + 1
        if seen[run.label] > 1:
            run.label = f"{run.label}#{seen[run.label]}"
    return runs


def _group_rows(runs, rows: pd.DataFrame) -> pd.DataFrame:
    """Every run's group rows (reference quality, noise floor) with the same `group` labels as `rows`."""
    parts = [read_group_rows(r.path).assign(run=r.label) for r in runs]
    groups = pd.concat(parts, ignore_index=True)
    keys = ["model", "schedule", "prediction", "guidance_kind", "guidance"]
    label = {tuple(_key(r[c]) for c in keys): r["group"] for _, r in rows.drop_duplicates(keys).iterrows()}
    groups["group"] = [label.get(tuple(_key(r[c]) for c in keys), r["model"]) for _, r in groups.iterrows()]
    return groups


def _key(value):
    """A table value as a dictionary key: <NA> and NaN as None."""
    return None if pd.isna(value) else value


def _write(out: Path, formats, runs, rows, sections) -> Path:
    title = "samplerbench report: " + ", ".join(r.label for r in runs)
    meta = (f"{len(rows)} cells, {rows['group'].nunique()} model(s), {rows['solver'].nunique()} solver(s); made "
            f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `python -m bench report`.")
    written = {}
    if "html" in formats:
        written["html"] = out / "report.html"
        written["html"].write_text(render_html(title, meta, sections), encoding="utf-8")
    if "md" in formats:
        written["md"] = out / "report.md"
        written["md"].write_text(render_md(title, meta, sections), encoding="utf-8")
    return written.get("html", written.get("md"))


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="run directories (results.parquet + manifest.json); later runs are compared with the first")
    parser.add_argument("--out", default=None, help="output directory (default: <first RUN_DIR>/report)")
    parser.add_argument("--format", default="html,md", help=f"comma-separated, from {', '.join(FORMATS)} (default html,md)")
    parser.add_argument("--tolerance", type=positive_number, default=DEFAULT_TOLERANCE,
                        help="quality target: the reference solution's quality (upper end of its 95%% interval) "
                             f"plus this fraction (default {DEFAULT_TOLERANCE}, i.e. 10%%)")
    parser.add_argument("--order-tol", type=positive_number, default=orders.ORDER_TOL,
                        help=f"|measured - declared| order above which a solver is marked warn (default {orders.ORDER_TOL})")
    parser.add_argument("--compare-tol", type=positive_number, default=COMPARE_TOL,
                        help=f"relative rise counted as a regression when comparing runs (default {COMPARE_TOL})")
    parser.add_argument("--screenshot", default=None, metavar="PNG",
                        help="also render the HTML with headless Chromium into this PNG (needs chromium)")
    parser.add_argument("--screenshot-size", default="1400", metavar="W[,H]",
                        help=f"window width of the screenshot, whole page (up to {TALL} px high); W,H: a fixed window")


def main_report(args) -> int:
    try:
        formats = parse_formats(args.format)
        if args.screenshot and "html" not in formats:
            raise ReportError("--screenshot renders the HTML report: include html in --format")
        if args.screenshot:
            parse_size(args.screenshot_size)
            find_chromium()
        path = make_report(args.runs, args.out, formats, args.tolerance, args.order_tol, args.compare_tol)
        print(f"report: {path}")
        if args.screenshot:
            print(f"screenshot: {screenshot(path, Path(args.screenshot), args.screenshot_size)}")
    except ReportError as e:
        print(f"python -m bench report: error: {e}", file=sys.stderr)
        return 2
    return 0
