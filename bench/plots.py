"""Report figures, made only from result tables: quality and error vs NFE, quality vs wall-clock with its Pareto
front, solver overhead.

Every figure draws a solver the same way (bench.colours), whichever solvers a run holds.
"""
from __future__ import annotations

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
import torch  # noqa: E402

from . import orders  # noqa: E402
from .colours import KNOWN, Style, solver_style  # noqa: E402
from .schema import LABELS, error_label, quality, quality_bounds  # noqa: E402

RUN_STYLES = ["-", "--", ":", "-."]
DPI = 110
EQUIV = " ≡ "  # joined label of equivalent solvers (bench.verdicts)


def style(name: str) -> Style:
    """The solver's fixed style (bench.colours); a class of equivalent solvers is drawn in its first member's."""
    return solver_style(name.split(EQUIV)[0])


def solver_colour(name: str) -> str:
    return style(name).colour


@dataclass
class Figure:
    path: Path
    title: str
    caption: str


def _ordered_solvers(rows: pd.DataFrame) -> list[str]:
    """Solvers family by family (bench.colours), then unknown names sorted."""
    rank = {s: i for i, s in enumerate(KNOWN)}
    return sorted(set(rows["solver"]), key=lambda s: (rank.get(s.split(EQUIV)[0].split(".")[-1], len(rank)), s))


class _PlainLog(ticker.LogFormatter):
    """Log-axis labels as plain numbers (0.02, 5e-05); matplotlib still picks which minor ticks get one."""

    def __call__(self, x, pos=None):
        return f"{x:g}" if super().__call__(x, pos) else ""


def _label(metric: str) -> str:
    """Axis label of a quality metric, with its unit where it has one."""
    return LABELS.get(metric, metric) + {"swd": " (data units)"}.get(metric, "")


def _legend(ax, labels: dict[str, str], runs: list[str], adaptive: bool, extra: list | None = None) -> None:
    """One entry per solver in its colour, then the line style of each run, the adaptive-solver marker and `extra`."""
    handles = [Line2D([], [], color=style(s).colour, marker=style(s).marker, markersize=5, linestyle=style(s).linestyle,
                      markerfacecolor="none" if style(s).hollow else style(s).colour, label=text)
               for s, text in labels.items()]
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


def _hline(ax, value: tuple, colour: str, label: str, style: str) -> Line2D | None:
    """A horizontal line at a group-level value (noise floor, reference quality) with its 95% band."""
    v, lo, hi = value
    if not np.isfinite(v):
        return None
    ax.axhline(v, color=colour, linestyle=style, linewidth=1.3, zorder=1)
    if np.isfinite(lo) and np.isfinite(hi):
        ax.axhspan(max(lo, 0) if ax.get_yscale() == "log" else lo, hi, color=colour, alpha=0.08, zorder=0)
    return Line2D([], [], color=colour, linestyle=style, label=label)


def quality_vs_nfe(rows: pd.DataFrame, metric: str, title: str, path: Path, floor=(np.nan,) * 3,
                   reference=(np.nan,) * 3) -> bool:
    """Headline metric against NFE per solver (mean over seeds) with its 95% interval as a band; the noise floor
    (real data against real data) and the reference solution's quality as lines; adaptive solvers as stars."""
    ok = rows[rows["status"] == "ok"]
    lo, hi = quality_bounds(ok, metric)
    ok = ok.assign(q=quality(ok, metric), q_lo=lo, q_hi=hi).dropna(subset=["q"])
    if ok.empty:
        return False
    runs = list(dict.fromkeys(ok["run"]))
    fig, ax = plt.subplots(figsize=(8.5, 4.6))
    logy = _positive(ok["q"]) and (not np.isfinite(floor[0]) or floor[0] > 0)
    if logy:
        ax.set_yscale("log")
    fixed = ok[ok["nfe"].notna()].assign(nfe=lambda d: d["nfe"].astype(float))
    for solver in _ordered_solvers(ok):
        st = style(solver)
        for r, run in enumerate(runs):
            g = fixed[(fixed["solver"] == solver) & (fixed["run"] == run)].groupby("nfe")[["q", "q_lo", "q_hi"]].mean()
            if not g.empty:
                ax.plot(g.index, g["q"], linestyle=RUN_STYLES[r % len(RUN_STYLES)], marker=st.marker, markersize=5,
                        color=st.colour, markerfacecolor="none" if st.hollow else st.colour)
                band = g.dropna()
                if len(band):
                    # on a log axis an interval reaching 0 or below is drawn down to 1/10 of the solver's smallest
                    # value (as the error bands), not to 1e-300, which would squash every line to the top
                    low = band["q_lo"].clip(lower=fixed["q"][fixed["q"] > 0].min() * 0.1) if logy else band["q_lo"]
                    ax.fill_between(band.index, low, band["q_hi"], color=st.colour, alpha=0.15, linewidth=0)
            a = ok[(ok["solver"] == solver) & (ok["run"] == run) & ok["nfe"].isna()]
            if not a.empty:
                _star(ax, a["nfe_used"].astype(float).mean(), a["q"].mean(), st.colour)
    failed = _failed_cells(rows, ok)
    if len(failed):  # widen the NFE range to the failed budgets
        ax.set_xscale("log")
        lo_x, hi_x = ax.get_xlim()
        ax.set_xlim(min(lo_x, failed["nfe"].min() / 1.25), max(hi_x, failed["nfe"].max() * 1.25))
    for _, f in failed.iterrows():  # on the bottom edge, at the budget that failed
        ax.scatter(f["nfe"], 0.035, transform=ax.get_xaxis_transform(), marker="X", s=70,
                   color=solver_colour(f["solver"]), edgecolor="black", linewidth=0.7, zorder=5, clip_on=False)
    extra = [h for h in (_hline(ax, floor, "0.45", "noise floor (data vs data)", "--"),
                         _hline(ax, reference, "black", "reference solution", ":")) if h is not None]
    extra += [Line2D([], [], color="0.35", marker="X", markersize=8, markeredgecolor="black", linestyle="none",
                     label="failed (no ok seed)")] if len(failed) else []
    _legend(ax, {s: s for s in _ordered_solvers(ok)}, runs, bool(ok["nfe"].isna().any()), extra)
    _finish(fig, ax, path, title, "NFE (model evaluations per sample)", f"{_label(metric)} — lower is better",
            logy=logy,
            xticks=_nfe_ticks(np.union1d(fixed["nfe"].unique(), failed["nfe"].to_numpy(dtype=float)), _adaptive_used(ok)))
    return True


def _failed_cells(rows: pd.DataFrame, ok: pd.DataFrame) -> pd.DataFrame:
    """(run, solver, nfe) budgets with a failed row and no ok row with a quality value."""
    bad = rows[(rows["status"] == "failed") & rows["nfe"].notna()]
    cells = bad[["run", "solver", "nfe"]].drop_duplicates().assign(nfe=lambda d: d["nfe"].astype(float))
    have = set(zip(ok["run"], ok["solver"], ok["nfe"].astype("Float64").fillna(-1.0).astype(float)))
    return cells[np.array([k not in have for k in zip(cells["run"], cells["solver"], cells["nfe"])], dtype=bool)]


def error_vs_nfe(rows: pd.DataFrame, title: str, path: Path, kind: str = "ode") -> bool:
    """RMSE against the reference solution vs NFE for ODE solvers (geometric mean over seeds, 95% band), with the
    order fitted by bench.orders over its detected asymptotic range; kind "sde": the stochastic rows' strong error."""
    ok = rows[(rows["status"] == "ok") & (rows["kind"] == kind)]
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
                nfe = fixed["nfe"].astype(float)
                mean = np.exp(np.log(fixed["error_rmse"].astype(float)).groupby(nfe).mean())
                ax.plot(mean.index, mean.values, RUN_STYLES[r % len(RUN_STYLES)], marker=style(solver).marker,
                        markersize=4, color=colour)
                if "error_rmse_lo" in fixed:
                    band = fixed[["error_rmse_lo", "error_rmse_hi"]].astype(float).groupby(nfe).mean().dropna()
                    ax.fill_between(band.index, band["error_rmse_lo"].clip(lower=mean.min() * 1e-3),
                                    band["error_rmse_hi"], color=colour, alpha=0.15, linewidth=0)
                result = orders.fit(fixed["nfe"], fixed["error_rmse"])
                if result.ok:  # the fitted line, drawn wide and pale over the range it was fitted on
                    x = np.array(result.nfe)
                    at = mean.reindex(x).to_numpy()
                    c = np.log(at).mean() + result.order * np.log(x).mean()
                    ax.plot(x, np.exp(c - result.order * np.log(x)), color=colour, linewidth=7, alpha=0.22,
                            solid_capstyle="round")
                slopes.append(result.order)
            adaptive = g[g["nfe"].isna()]
            if len(adaptive):
                _star(ax, adaptive["nfe_used"].astype(float).mean(),
                      float(np.exp(np.log(adaptive["error_rmse"].astype(float)).mean())), colour)
        finite = [f"{p:.2f}" for p in slopes if np.isfinite(p)]
        labels[solver] = f"{solver}  p = {' / '.join(finite)}" if finite else solver
    _legend(ax, labels, runs, bool(ok["nfe"].isna().any()))
    _finish(fig, ax, path, title + "  (p: order fitted over the pale range)", "NFE (model evaluations per sample)",
            f"{error_label('error_rmse', kind)} (data units)",
            xticks=_nfe_ticks(ok["nfe"].dropna().astype(float).unique(), _adaptive_used(ok)))
    return True


def time_cells(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per (run, solver, NFE budget) of the ok rows: median wall_s (of the repeats, and over seeds), the
    largest timing spread and the mean oriented quality `q` over seeds.

    Adaptive solvers (NFE <NA>) form one cell each; `nfe_used` is the mean NFE they used.
    """
    ok = rows[rows["status"] == "ok"].assign(q=lambda d: quality(d, metric),
                                             wall_s=lambda d: pd.to_numeric(d["wall_s"], errors="coerce"))
    ok = ok[ok["q"].notna() & np.isfinite(ok["q"]) & (ok["wall_s"] > 0)]
    if ok.empty:
        return pd.DataFrame(columns=["run", "solver", "nfe", "nfe_used", "wall_s", "spread", "q"])
    spread = pd.to_numeric(ok["wall_spread"], errors="coerce") if "wall_spread" in ok else np.nan
    ok = ok.assign(key=ok["nfe"].astype("Float64").fillna(-1.0), nfe_used=ok["nfe_used"].astype(float), spread=spread)
    cells = ok.groupby(["run", "solver", "key"], sort=False).agg(
        nfe_used=("nfe_used", "mean"), wall_s=("wall_s", "median"), spread=("spread", "max"), q=("q", "mean"))
    cells = cells.reset_index()
    cells["nfe"] = cells["key"].where(cells["key"] >= 0).astype("Float64").round().astype("Int64")
    return cells[["run", "solver", "nfe", "nfe_used", "wall_s", "spread", "q"]]


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
            half = (fixed["wall_s"] * fixed["spread"].fillna(0) / 2).to_numpy(dtype=float)
            ax.errorbar(fixed["wall_s"], fixed["q"], xerr=half, linestyle=RUN_STYLES[r % len(RUN_STYLES)],
                        marker=style(solver).marker, markersize=4, color=solver_colour(solver), alpha=0.75,
                        elinewidth=1, capsize=2)
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
    _finish(fig, ax, path, title, "sampling wall-clock per cell (s, median of the repeats; bars: spread)",
            f"{_label(metric)} — lower is better", logy=_positive(cells["q"]))
    return True


def overhead(rows: pd.DataFrame, groups: list[str], path: Path) -> bool:
    """Solver overhead (wall_s - model_s) as a share of wall-clock, median over cells: a solver x model heat map."""
    ok = rows[rows["status"] == "ok"].copy()
    wall, model = pd.to_numeric(ok["wall_s"], errors="coerce"), pd.to_numeric(ok["model_s"], errors="coerce")
    ok["share"] = (100 * (wall - model) / wall).where(wall > 0)
    ok = ok.dropna(subset=["share"])
    groups = [g for g in groups if g in set(ok["group"])]
    if not groups:
        return False
    solvers = _ordered_solvers(ok)
    table = ok.pivot_table(index="solver", columns="group", values="share", aggfunc="median").reindex(
        index=solvers, columns=groups)
    fig, ax = plt.subplots(figsize=(min(1.25 * len(groups) + 3.2, 11), 0.32 * len(solvers) + 1.9))
    sns.heatmap(table, ax=ax, annot=True, fmt=".0f", cmap="Oranges", vmin=0, vmax=100, linewidths=0.5,
                cbar_kws={"label": "overhead share of wall-clock (%)", "shrink": 0.8}, annot_kws={"fontsize": 9})
    ax.set_xlabel("")
    ax.set_ylabel("")
    ax.set_xticklabels([g.get_text() for g in ax.get_xticklabels()], rotation=30, ha="right", fontsize=9)
    ax.set_yticklabels([g.get_text() for g in ax.get_yticklabels()], rotation=0, fontsize=9)
    ax.set_title("Solver overhead: (wall-clock − model time) / wall-clock, median over cells (%)", fontsize=11)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return True


def samples_figure(cells: dict, real: torch.Tensor | None, image: bool, title: str, path: Path) -> bool:
    """Samples of every (solver, NFE) cell from the same x_T: image grids, or 2-D scatters over the real data.

    `cells` maps (solver, nfe label) to the cell's drawn samples; rows are solvers, columns NFE budgets.
    """
    if not cells:
        return False
    solvers = list(dict.fromkeys(s for s, _ in cells))
    budgets = list(dict.fromkeys(n for _, n in cells))
    size = 1.55 if image else 1.9
    fig, axes = plt.subplots(len(solvers), len(budgets), figsize=(size * len(budgets) + 1.8, size * len(solvers) + 0.6),
                             squeeze=False)
    for i, solver in enumerate(solvers):
        for j, nfe in enumerate(budgets):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            x = cells.get((solver, nfe))
            if x is not None and image:
                ax.imshow(_image_grid(x), cmap="gray" if x.shape[1] == 1 else None, vmin=0, vmax=1)
            elif x is not None and x.shape[1] == 1:  # one-dimensional samples: histograms
                if real is not None:
                    ax.hist(real[:, 0], bins=40, density=True, color="0.78")
                ax.hist(x[:, 0], bins=40, density=True, histtype="step", color=solver_colour(solver))
            elif x is not None:
                if real is not None:
                    ax.scatter(real[:, 0], real[:, 1], s=1, color="0.78", rasterized=True)
                ax.scatter(x[:, 0], x[:, 1], s=1.2, color=solver_colour(solver), rasterized=True)
                if real is not None:
                    lim = float(real.abs().max()) * 1.15
                    ax.set_xlim(-lim, lim)
                    ax.set_ylim(-lim, lim)
                ax.set_aspect("equal")
            if i == 0:
                ax.set_title(f"NFE {nfe}", fontsize=9)
            if j == 0:
                ax.set_ylabel(solver, fontsize=8, rotation=0, ha="right", va="center")
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return True


def _image_grid(x: torch.Tensor, cols: int = 4) -> np.ndarray:
    """Up to 16 images (N, C, H, W) in [-1, 1] tiled 4 x 4 with 1-pixel gaps, as an (H', W'[, 3]) array in [0, 1]."""
    x = ((x[:cols * cols].float().clamp(-1, 1) + 1) / 2).numpy()
    n, c, h, w = x.shape
    rows = -(-n // cols)
    out = np.ones((c, rows * (h + 1) - 1, cols * (w + 1) - 1))
    for k in range(n):
        r, q = divmod(k, cols)
        out[:, r * (h + 1): r * (h + 1) + h, q * (w + 1): q * (w + 1) + w] = x[k]
    return out[0] if c == 1 else out.transpose(1, 2, 0)


def make_figures(rows: pd.DataFrame, metrics: dict[str, str | None], out_dir: Path, lines: dict | None = None,
                 samples: dict | None = None) -> list[Figure]:
    """Every figure of a report, written as PNG files into out_dir; `rows` carry `run` and `group` columns.

    `lines[group]` = (noise floor, reference quality), each (value, lo, hi); `samples[group]` = (cells, real,
    image) for `samples_figure`.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    with plt.rc_context({**sns.axes_style("whitegrid"), **sns.plotting_context("notebook", font_scale=0.9)}):
        return _figures(rows, metrics, out_dir, lines or {}, samples or {})


def _figures(rows, metrics, out_dir, lines, samples) -> list[Figure]:
    figures = []
    none = ((np.nan,) * 3, (np.nan,) * 3)
    for i, (group, metric) in enumerate(metrics.items()):
        g = rows[rows["group"] == group]
        stem = f"{i:02d}-" + "".join(c if c.isalnum() else "-" for c in group).strip("-")
        if metric is not None:
            p = out_dir / f"{stem}-quality.png"
            floor, ref = lines.get(group, none)
            if quality_vs_nfe(g, metric, f"{group}: {LABELS.get(metric, metric)} vs NFE", p, floor, ref):
                figures.append(Figure(p, f"{group}: quality vs NFE",
                                      "Mean over seeds with its 95% interval as a band. Dashed grey: the noise floor "
                                      "(real data against real data at the same sample size); dotted black: the "
                                      "reference solution's quality. Stars: adaptive solvers at the NFE they used."))
        p = out_dir / f"{stem}-error.png"
        if error_vs_nfe(g, f"{group}: error vs NFE", p):
            figures.append(Figure(p, f"{group}: error vs NFE",
                                  "RMSE against the high-accuracy reference solution from the same x_T "
                                  "(geometric mean over seeds, 95% band); p is the order of the order table, fitted "
                                  "over the pale range (absent where the range is too short)."))
        p = out_dir / f"{stem}-strong-error.png"
        if error_vs_nfe(g, f"{group}: strong error vs NFE", p, kind="sde"):
            figures.append(Figure(p, f"{group}: strong error vs NFE (stochastic samplers)",
                                  "RMSE against Euler-Maruyama at 4096 uniform steps on the same Brownian path per "
                                  "sample, from the same x_T (geometric mean over seeds, 95% band); p: the strong "
                                  "order fitted over the pale range."))
        if metric is not None:
            p = out_dir / f"{stem}-time.png"
            if quality_vs_time(g, metric, f"{group}: {LABELS.get(metric, metric)} vs wall-clock", p):
                figures.append(Figure(p, f"{group}: quality vs wall-clock",
                                      "One point per (solver, NFE) cell: mean quality over seeds, median wall-clock of "
                                      "the timed repeats, bars spanning their spread; lower left is better. Outlined "
                                      "points joined by the black step line form the Pareto front."))
        if group in samples:
            p = out_dir / f"{stem}-samples.png"
            cells, real, image = samples[group]
            if samples_figure(cells, real, image, f"{group}: samples from the same x_T", p):
                figures.append(Figure(p, f"{group}: samples", "Rows: solvers; columns: NFE. Every panel starts from "
                                      "the same prior noise (first seed)" + (", first 16 samples." if image else
                                                                            "; grey: real data.")))
    p = out_dir / "overhead.png"
    if overhead(rows, list(metrics), p):
        figures.append(Figure(p, "Solver overhead", "Share of the sampling wall-clock a solver spends outside the model, "
                                   "median over the ok cells of each model; the rest is model time."))
    return figures
