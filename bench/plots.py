"""Report figures, made only from result tables: quality and error vs NFE, quality vs wall-clock with its Pareto
front, solver overhead.

Every figure colours a solver the same way (`solver_colour`), whichever solvers a run holds.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .orders import asymptotic_points, fit_order  # noqa: E402
from .schema import LABELS, quality  # noqa: E402

# Fixed colours of the solvers DESIGN.md names, by family: DPM-Solver singlestep blues, multistep greens,
# adaptive purple, classical ODE warm colours, stochastic samplers pink/olive/gold. Never re-indexed.
SOLVER_COLOURS = {
    "ddim": "#17becf", "dpm_solver_1": "#9ecae1", "dpm_solver_2": "#4292c6", "dpm_solver_3": "#08306b",
    "dpm_solver_2m": "#74c476", "dpm_solver_3m": "#006d2c", "dpm_solver_adaptive": "#6a51a3",
    "euler": "#ff7f0e", "heun": "#d62728", "rk45": "#8c564b",
    "euler_maruyama": "#e377c2", "reverse_diffusion": "#bcbd22", "pc": "#b8860b",
}
_FALLBACK = [matplotlib.colors.to_hex(c) for c in sns.color_palette("husl", 16)]
RUN_STYLES = ["-", "--", ":", "-."]
DPI = 110


def solver_colour(name: str) -> str:
    """The solver's fixed colour; an unknown name gets a colour chosen by a stable hash of the name."""
    if name in SOLVER_COLOURS:
        return SOLVER_COLOURS[name]
    return _FALLBACK[int(hashlib.md5(name.encode()).hexdigest(), 16) % len(_FALLBACK)]


@dataclass
class Figure:
    path: Path
    title: str
    caption: str


def _ordered_solvers(rows: pd.DataFrame) -> list[str]:
    known = [s for s in SOLVER_COLOURS if s in set(rows["solver"])]
    return known + sorted(set(rows["solver"]) - set(known))


class _PlainLog(ticker.LogFormatter):
    """Log-axis labels as plain numbers (0.02, 5e-05); matplotlib still picks which minor ticks get one."""

    def __call__(self, x, pos=None):
        return f"{x:g}" if super().__call__(x, pos) else ""


def _label(metric: str) -> str:
    """Axis label of a quality metric, with its unit where it has one."""
    return LABELS.get(metric, metric) + {"swd": " (data units)"}.get(metric, "")


def _legend(ax, labels: dict[str, str], runs: list[str], adaptive: bool, extra: list | None = None) -> None:
    """One entry per solver in its colour, then the line style of each run, the adaptive-solver marker and `extra`."""
    handles = [Line2D([], [], color=solver_colour(s), marker="o", markersize=5, label=text) for s, text in labels.items()]
    if len(runs) > 1:
        handles += [Line2D([], [], color="0.35", linestyle=RUN_STYLES[i % len(RUN_STYLES)], label=f"run {r}")
                    for i, r in enumerate(runs)]
    if adaptive:
        handles.append(Line2D([], [], color="0.35", marker="*", markersize=11, linestyle="none",
                              label="adaptive: at NFE used"))
    handles += extra or []
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8.5, frameon=False)


def _finish(fig, ax, path: Path, title: str, xlabel: str, ylabel: str, logy: bool = True, xticks=None) -> None:
    """Log axes labelled with plain numbers (NFE ticks at the budgets swept), title, labels; save and close."""
    ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    for axis, log in ((ax.xaxis, True), (ax.yaxis, logy)):
        if log:  # plain numbers (0.02, 5e-05) instead of 2 x 10^-2, also on minor ticks of a short range
            axis.set_major_formatter(_PlainLog())
            axis.set_minor_formatter(_PlainLog(labelOnlyBase=False, minor_thresholds=(1, 0.6)))
    if xticks is not None and len(xticks):
        ax.xaxis.set_major_locator(ticker.FixedLocator(sorted(xticks)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def _adaptive_used(ok: pd.DataFrame) -> pd.Series:
    """Mean NFE used per (run, solver) of the adaptive rows: where their stars are drawn."""
    a = ok[ok["nfe"].isna()]
    return a["nfe_used"].astype(float).groupby([a["run"], a["solver"]]).mean()


def _nfe_ticks(budgets, adaptive_used) -> np.ndarray:
    """Ticks at the NFE budgets swept, plus the NFE adaptive solvers used where that leaves room for the label."""
    ticks = sorted(float(b) for b in budgets)
    for u in sorted(set(np.round(pd.to_numeric(adaptive_used, errors="coerce").dropna().astype(float)))):
        if u > 0 and all(abs(np.log(u / t)) > np.log(1.3) for t in ticks):
            ticks.append(u)
    return np.array(sorted(ticks))


def _positive(values: pd.Series) -> bool:
    v = values.dropna()
    return len(v) > 0 and bool((v > 0).all())


def _star(ax, x: float, y: float, colour: str) -> None:
    ax.scatter(x, y, marker="*", s=170, color=colour, edgecolor="black", linewidth=0.5, zorder=5)


def quality_vs_nfe(rows: pd.DataFrame, metric: str, title: str, path: Path) -> bool:
    """Headline metric against NFE per solver (mean over seeds, min-max band); adaptive solvers as stars."""
    ok = rows[rows["status"] == "ok"].assign(q=lambda d: quality(d, metric)).dropna(subset=["q"])
    if ok.empty:
        return False
    runs = list(dict.fromkeys(ok["run"]))
    fig, ax = plt.subplots(figsize=(8.5, 4.6))
    fixed = ok[ok["nfe"].notna()].assign(nfe=lambda d: d["nfe"].astype(float))
    for solver in _ordered_solvers(ok):
        for r, run in enumerate(runs):
            g = fixed[(fixed["solver"] == solver) & (fixed["run"] == run)]
            if not g.empty:
                sns.lineplot(data=g, x="nfe", y="q", ax=ax, color=solver_colour(solver), marker="o", markersize=5,
                             linestyle=RUN_STYLES[r % len(RUN_STYLES)], errorbar=("pi", 100), legend=False)
            a = ok[(ok["solver"] == solver) & (ok["run"] == run) & ok["nfe"].isna()]
            if not a.empty:
                _star(ax, a["nfe_used"].astype(float).mean(), a["q"].mean(), solver_colour(solver))
    failed = _failed_cells(rows, ok)
    if len(failed):  # widen the NFE range to the failed budgets
        ax.set_xscale("log")
        lo, hi = ax.get_xlim()
        ax.set_xlim(min(lo, failed["nfe"].min() / 1.25), max(hi, failed["nfe"].max() * 1.25))
    for _, f in failed.iterrows():  # on the bottom edge, at the budget that failed
        ax.scatter(f["nfe"], 0.035, transform=ax.get_xaxis_transform(), marker="X", s=70,
                   color=solver_colour(f["solver"]), edgecolor="black", linewidth=0.7, zorder=5, clip_on=False)
    extra = [Line2D([], [], color="0.35", marker="X", markersize=8, markeredgecolor="black", linestyle="none",
                    label="failed (no ok seed)")] if len(failed) else []
    _legend(ax, {s: s for s in _ordered_solvers(ok)}, runs, bool(ok["nfe"].isna().any()), extra)
    _finish(fig, ax, path, title, "NFE (model evaluations per sample)", f"{_label(metric)} — lower is better",
            logy=_positive(ok["q"]),
            xticks=_nfe_ticks(np.union1d(fixed["nfe"].unique(), failed["nfe"].to_numpy(dtype=float)), _adaptive_used(ok)))
    return True


def _failed_cells(rows: pd.DataFrame, ok: pd.DataFrame) -> pd.DataFrame:
    """(run, solver, nfe) budgets with a failed row and no ok row with a quality value."""
    bad = rows[(rows["status"] == "failed") & rows["nfe"].notna()]
    cells = bad[["run", "solver", "nfe"]].drop_duplicates().assign(nfe=lambda d: d["nfe"].astype(float))
    have = set(zip(ok["run"], ok["solver"], ok["nfe"].astype("Float64").fillna(-1.0).astype(float)))
    return cells[np.array([k not in have for k in zip(cells["run"], cells["solver"], cells["nfe"])], dtype=bool)]


def error_vs_nfe(rows: pd.DataFrame, title: str, path: Path) -> bool:
    """RMSE against the reference solution vs NFE for ODE solvers (geometric mean over seeds), with fitted slopes."""
    ok = rows[(rows["status"] == "ok") & (rows["kind"] == "ode")]
    ok = ok[pd.to_numeric(ok["error_rmse"], errors="coerce") > 0]
    if ok.empty:
        return False
    runs = list(dict.fromkeys(ok["run"]))
    fig, ax = plt.subplots(figsize=(8.5, 4.6))
    labels = {}
    for solver in _ordered_solvers(ok):
        colour, slopes = solver_colour(solver), []
        for r, run in enumerate(runs):
            g = ok[(ok["solver"] == solver) & (ok["run"] == run)]
            fixed = g[g["nfe"].notna()]
            if len(fixed):
                mean = np.exp(np.log(fixed["error_rmse"].astype(float)).groupby(fixed["nfe"].astype(float)).mean())
                ax.plot(mean.index, mean.values, RUN_STYLES[r % len(RUN_STYLES)], marker="o", markersize=4, color=colour)
                x, y = asymptotic_points(fixed["nfe"], fixed["error_rmse"])
                if len(x) >= 2:  # the fitted line, drawn wide and pale over the points it was fitted on
                    c = np.polyfit(np.log(x), y, 1)
                    ax.plot(x, np.exp(np.polyval(c, np.log(x))), color=colour, linewidth=7, alpha=0.22,
                            solid_capstyle="round")
                slopes.append(fit_order(fixed["nfe"], fixed["error_rmse"]))
            adaptive = g[g["nfe"].isna()]
            if len(adaptive):
                _star(ax, adaptive["nfe_used"].astype(float).mean(),
                      float(np.exp(np.log(adaptive["error_rmse"].astype(float)).mean())), colour)
        finite = [f"{p:.2f}" for p in slopes if np.isfinite(p)]
        labels[solver] = f"{solver}  p = {' / '.join(finite)}" if finite else solver
    _legend(ax, labels, runs, bool(ok["nfe"].isna().any()))
    _finish(fig, ax, path, title + "  (p: order fitted over the pale range)", "NFE (model evaluations per sample)",
            f"{LABELS['error_rmse']} (data units)",
            xticks=_nfe_ticks(ok["nfe"].dropna().astype(float).unique(), _adaptive_used(ok)))
    return True


def time_cells(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per (run, solver, NFE budget) of the ok rows: mean wall_s and oriented quality `q` over seeds.

    Adaptive solvers (NFE <NA>) form one cell each; `nfe_used` is the mean NFE they used.
    """
    ok = rows[rows["status"] == "ok"].assign(q=lambda d: quality(d, metric),
                                             wall_s=lambda d: pd.to_numeric(d["wall_s"], errors="coerce"))
    ok = ok[ok["q"].notna() & np.isfinite(ok["q"]) & (ok["wall_s"] > 0)]
    if ok.empty:
        return pd.DataFrame(columns=["run", "solver", "nfe", "nfe_used", "wall_s", "q"])
    ok = ok.assign(key=ok["nfe"].astype("Float64").fillna(-1.0), nfe_used=ok["nfe_used"].astype(float))
    cells = ok.groupby(["run", "solver", "key"], sort=False)[["nfe_used", "wall_s", "q"]].mean().reset_index()
    cells["nfe"] = cells["key"].where(cells["key"] >= 0).astype("Float64").round().astype("Int64")
    return cells[["run", "solver", "nfe", "nfe_used", "wall_s", "q"]]


def pareto_front(cells: pd.DataFrame, x: str = "wall_s", y: str = "q") -> pd.DataFrame:
    """The cells no other cell dominates (lower-or-equal x and y, one strictly lower), sorted by x.

    Lower is better on both axes: pass y oriented with `schema.quality`. Exact duplicates are all kept.
    """
    xv, yv = cells[x].to_numpy(dtype=float), cells[y].to_numpy(dtype=float)
    le = (xv[None, :] <= xv[:, None]) & (yv[None, :] <= yv[:, None])  # [i, j]: j is at least as good as i
    lt = (xv[None, :] < xv[:, None]) | (yv[None, :] < yv[:, None])
    dominated = (le & lt).any(axis=1)
    return cells[~dominated].sort_values([x, y], kind="stable")


def quality_vs_time(rows: pd.DataFrame, metric: str, title: str, path: Path) -> bool:
    """Headline metric against sampling wall-clock, one point per (solver, NFE) cell; the Pareto front highlighted."""
    cells = time_cells(rows, metric)
    if cells.empty:
        return False
    runs = list(dict.fromkeys(cells["run"]))
    fig, ax = plt.subplots(figsize=(8.5, 4.6))
    for solver in _ordered_solvers(cells):
        for r, run in enumerate(runs):
            g = cells[(cells["solver"] == solver) & (cells["run"] == run)]
            fixed = g[g["nfe"].notna()].sort_values("nfe")
            ax.plot(fixed["wall_s"], fixed["q"], RUN_STYLES[r % len(RUN_STYLES)], marker="o", markersize=4,
                    color=solver_colour(solver), alpha=0.75)
            a = g[g["nfe"].isna()]
            if len(a):
                _star(ax, float(a["wall_s"].iloc[0]), float(a["q"].iloc[0]), solver_colour(solver))
    for r, run in enumerate(runs):  # the front per run: wall-clocks of different runs are not comparable
        front = pareto_front(cells[cells["run"] == run])
        ax.step(front["wall_s"], front["q"], where="post", color="black", linewidth=1.4, alpha=0.8,
                linestyle=RUN_STYLES[r % len(RUN_STYLES)], zorder=4)
        for star, pts in front.groupby(front["nfe"].isna()):  # adaptive cells keep their star
            ax.scatter(pts["wall_s"], pts["q"], s=260 if star else 95, c=[solver_colour(s) for s in pts["solver"]],
                       marker="*" if star else "o", edgecolors="black", linewidths=1.6, zorder=6)
    _legend(ax, {s: s for s in _ordered_solvers(cells)}, runs, bool(cells["nfe"].isna().any()),
            extra=[Line2D([], [], color="black", linewidth=1.4, marker="o", markersize=9, markerfacecolor="white",
                          markeredgewidth=1.6, label="Pareto front")])
    _finish(fig, ax, path, title, "sampling wall-clock per cell (s)",
            f"{_label(metric)} — lower is better", logy=_positive(cells["q"]))
    return True


def overhead(rows: pd.DataFrame, groups: list[str], path: Path) -> bool:
    """Solver overhead (wall_s - model_s) as a share of wall-clock, median over cells, one panel per model."""
    ok = rows[rows["status"] == "ok"].copy()
    wall, model = pd.to_numeric(ok["wall_s"], errors="coerce"), pd.to_numeric(ok["model_s"], errors="coerce")
    ok["share"] = (100 * (wall - model) / wall).where(wall > 0)
    ok = ok.dropna(subset=["share"])
    groups = [g for g in groups if g in set(ok["group"])]
    if not groups:
        return False
    solvers = _ordered_solvers(ok)
    fig, axes = plt.subplots(1, len(groups), figsize=(3.6 * len(groups) + 1.5, 0.3 * len(solvers) + 1.6),
                             squeeze=False, sharey=True)
    for ax, group in zip(axes[0], groups):
        med = ok[ok["group"] == group].groupby("solver")["share"].median().reindex(solvers)
        ax.barh(range(len(solvers)), med.fillna(0).values, color=[solver_colour(s) for s in solvers])
        for y, v in enumerate(med.values):
            ax.text(0 if np.isnan(v) else max(v, 0) + 1.5, y, "—" if np.isnan(v) else f"{v:.0f}%",
                    va="center", fontsize=8)
        ax.set_yticks(range(len(solvers)), solvers, fontsize=9)
        ax.set_xlim(0, 115)
        ax.xaxis.set_major_locator(ticker.FixedLocator([0, 25, 50, 75, 100]))
        ax.invert_yaxis()
        ax.set_title(group, fontsize=10)
        ax.set_xlabel("overhead share of wall-clock (%)")
        ax.grid(True, axis="x", alpha=0.35)
        ax.grid(False, axis="y")
    fig.suptitle("Solver overhead: (wall-clock − model time) / wall-clock, median over cells", fontsize=11)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return True


def make_figures(rows: pd.DataFrame, metrics: dict[str, str | None], out_dir: Path) -> list[Figure]:
    """Every figure of a report, written as PNG files into out_dir; `rows` carry `run` and `group` columns."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with plt.rc_context({**sns.axes_style("whitegrid"), **sns.plotting_context("notebook", font_scale=0.9)}):
        return _figures(rows, metrics, out_dir)


def _figures(rows: pd.DataFrame, metrics: dict[str, str | None], out_dir: Path) -> list[Figure]:
    figures = []
    for i, (group, metric) in enumerate(metrics.items()):
        g = rows[rows["group"] == group]
        stem = f"{i:02d}-" + "".join(c if c.isalnum() else "-" for c in group).strip("-")
        if metric is not None:
            p = out_dir / f"{stem}-quality.png"
            if quality_vs_nfe(g, metric, f"{group}: {LABELS.get(metric, metric)} vs NFE", p):
                figures.append(Figure(p, f"{group}: quality vs NFE",
                                      "Mean over seeds; the band spans min to max. Stars: adaptive solvers at "
                                      "the NFE they used."))
        p = out_dir / f"{stem}-error.png"
        if error_vs_nfe(g, f"{group}: error vs NFE", p):
            figures.append(Figure(p, f"{group}: error vs NFE",
                                  "RMSE against the high-accuracy reference solution from the same x_T "
                                  "(geometric mean over seeds); p is the fitted order of the order table."))
        if metric is not None:
            p = out_dir / f"{stem}-time.png"
            if quality_vs_time(g, metric, f"{group}: {LABELS.get(metric, metric)} vs wall-clock", p):
                figures.append(Figure(p, f"{group}: quality vs wall-clock",
                                      "One point per (solver, NFE) cell, mean over seeds; lower left is better. "
                                      "Outlined points joined by the black step line form the Pareto front: no "
                                      "other cell is both faster and better (listed in the Pareto table)."))
    p = out_dir / "overhead.png"
    if overhead(rows, list(metrics), p):
        figures.append(Figure(p, "Solver overhead", "Share of the sampling wall-clock a solver spends outside the model, "
                                   "median over the ok cells of each model; the rest is model time."))
    return figures
