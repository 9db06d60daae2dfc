"""`python -m bench report` on synthetic run tables whose errors follow known slopes."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench import orders, plots, report, screenshot, sections
from bench.render import Table
from bench.__main__ import main as bench_main
from bench.schema import conform

NFES = [6, 12, 24, 48, 96]
SEEDS = [0, 1, 2]
# solver -> (kind, declared order, true slope of the synthetic error); 3m is deliberately below its order.
SOLVERS = {"ddim": ("ode", 1, 1.0), "dpm_solver_2": ("ode", 2, 2.0), "dpm_solver_3": ("ode", 3, 3.0),
           "dpm_solver_3m": ("ode", 3, 2.1), "euler": ("ode", 1, 1.0), "heun": ("ode", 2, 2.0),
           "rk45": ("ode", 5, None), "euler_maruyama": ("sde", 1, None), "pc": ("sde", 1, None)}
MODELS = {"gmm2d": "nll_gap", "moons": "swd", "digits": "fid"}


def synthetic_rows(run_id: str = "run-a", worse: dict | None = None, models=tuple(MODELS)) -> pd.DataFrame:
    """A table shaped like a real run: error = C NFE^-p (1 + 2/NFE^2) e^(0.02 z); quality = floor + C' NFE^-p'."""
    rng = np.random.default_rng(0)
    rows = []
    for m, (model, metric) in enumerate(MODELS.items()):
        if model not in models:
            continue
        for s, (solver, (kind, order, slope)) in enumerate(SOLVERS.items()):
            for nfe in ([None] if solver == "rk45" else NFES):
                for seed in SEEDS:
                    used = 140 + 10 * seed if nfe is None else nfe
                    r = dict(run_id=run_id, model=model, schedule="vp", prediction="eps", solver=solver, kind=kind,
                             order=float(order), nfe=nfe, nfe_used=used, steps=used, seed=seed, timesteps="logsnr",
                             options="{}", samples=256, device="cpu", status="ok", message="",
                             wall_s=2e-3 * used * (1 + 0.3 * s) + 0.01, model_s=2e-3 * used)
                    if kind == "ode" and nfe is not None:
                        r["error_rmse"] = (0.5 + m) * nfe ** -slope * (1 + 2 / nfe**2) * math.exp(0.02 * rng.normal())
                        r["error_max"] = 3 * r["error_rmse"]
                    elif kind == "ode":
                        r["error_rmse"] = r["error_max"] = 1e-6
                    elif nfe is not None:  # a stochastic row's strong error (same Brownian paths): order 1
                        r["error_rmse"] = 2 * (0.5 + m) / nfe * math.exp(0.02 * rng.normal())
                        r["error_max"] = 3 * r["error_rmse"]
                    p = 0.7 if kind == "sde" else min(order, 3)
                    q = (0.02 + 0.3 * (12 if nfe is None else nfe) ** -p) * (1 + 0.01 * rng.normal())
                    q *= (worse or {}).get(solver, 1.0)
                    if metric == "nll_gap":
                        r["nll_gap"], r["swd"], r["mmd"] = -q, 2 * q, q / 10
                    elif metric == "swd":
                        r["swd"], r["mmd"] = q, q / 10
                    else:
                        r["fid"], r["kid"] = 100 * q, q / 10
                    rows.append(r)
    rows.append(dict(run_id=run_id, model=models[-1], schedule="vp", prediction="eps", solver="dpm_solver_3",
                     kind="ode", nfe=7, nfe_used=None, seed=0, status="skipped",
                     message="solver 'dpm_solver_3' needs an NFE budget that is a multiple of 3"))
    rows.append(dict(run_id=run_id, model=models[0], schedule="vp", prediction="eps", solver="euler", kind="ode",
                     nfe=3, nfe_used=None, seed=1, status="failed",
                     message="ModelOutputError: euler, step 2 of 3: model returned NaN"))
    return conform(pd.DataFrame(rows))


def write_run(path, rows: pd.DataFrame, run_id: str):
    path.mkdir(parents=True, exist_ok=True)
    rows.to_parquet(path / "results.parquet")
    rows.to_csv(path / "results.csv", index=False)
    (path / "manifest.json").write_text(json.dumps({
        "run_id": run_id, "created": "2025-01-01T00:00:00Z", "command": "python -m bench run --nfe 6,12,24,48,96",
        "config": {"nfe": NFES, "seeds": SEEDS, "samples": 256}, "git_commit": "0123abc",
        "versions": {"torch": "2.5.0", "numpy": "2.0"}, "device": "cpu (synthetic)"}))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    a = write_run(root / "a", synthetic_rows("run-a"), "run-a")
    # a one-model pair for the comparison and the CLI tests, which then draw few figures
    small = [write_run(root / f"small-{k}", synthetic_rows(f"run-{k}", worse, models=("digits",)), f"run-{k}")
             for k, worse in (("a", None), ("b", {"heun": 1.3, "dpm_solver_2": 0.8}))]
    return a, *small


@pytest.fixture(scope="module")
def single(runs):
    html = report.make_report([runs[0]])
    return html, html.parent


def test_report_files_and_every_png_has_content(single):
    html, out = single
    assert html == out / "report.html" and out == html.parent and out.name == "report"
    pngs = sorted(out.glob("*.png"))
    # 3 models x (quality, error, strong error, quality-vs-time) + overhead
    assert len(pngs) == 3 * 4 + 1
    assert len(list(out.glob("*-strong-error.png"))) == 3
    text, md = html.read_text(), (out / "report.md").read_text()
    assert text.count("src='data:image/png;base64,") == len(pngs) and "<img src='" not in text
    for section in ("Recommendation: which sampler at which NFE", "Summary", "Figures", "Convergence order",
                    "NFE to reach the reference quality", "Pareto front: quality vs wall-clock", "Timings",
                    "Failed and skipped cells", "Provenance"):
        assert f"'>{section}</h2>" in text and f"\n## {section}\n" in md and f"'>{section}</a>" in text
    for png in pngs:
        assert f"]({png.name})" in md
        with Image.open(png) as im:
            im.verify()
        with Image.open(png) as im:
            pixels = np.asarray(im.convert("L"), dtype=float)
        assert min(pixels.shape) > 200 and pixels.std() > 10, f"{png.name} looks blank"
        assert (pixels < 128).mean() > 0.005, f"{png.name} has almost no ink"


def test_order_table_slopes_match_known_and_direct_fit(runs):
    rows = report.load_run(runs[0]).rows.assign(group=lambda d: d["model"], run="a")
    tab = orders.order_table(rows, by=("group",))
    assert set(tab["solver"]) == {s for s, (k, _, p) in SOLVERS.items() if k == "ode" and p is not None}
    for _, r in tab.iterrows():
        g = rows[(rows["group"] == r["group"]) & (rows["solver"] == r["solver"]) & (rows["status"] == "ok")]
        # direct computation over the range the rule chose: geometric mean over seeds, least squares in log-log
        lo, hi = map(int, r["nfe_range"].split("–"))
        mean = np.log(g["error_rmse"].astype(float)).groupby(g["nfe"].astype(float)).mean()
        mean = mean[(mean.index >= lo) & (mean.index <= hi)]
        direct = -np.polyfit(np.log(mean.index.to_numpy()), mean.to_numpy(), 1)[0]
        assert r["measured"] == pytest.approx(direct, abs=1e-9)
        assert r["measured"] == pytest.approx(SOLVERS[r["solver"]][2], abs=0.05)
        assert r["points"] >= orders.MIN_POINTS and hi / lo >= orders.MIN_SPAN and r["lo"] < r["measured"] < r["hi"]
        assert r["mark"] == ("warn (low)" if r["solver"] == "dpm_solver_3m" else "pass")


def test_order_table_in_report(single, runs):
    """Every measured order printed in the report is within 0.05 of a log-log fit of the parquet's numbers."""
    md = (single[1] / "report.md").read_text()
    section = md.split("## Convergence order")[1].split("\n## ")[0]
    lines = [ln.split(" | ") for ln in section.splitlines() if ln.startswith("| ") and not ln.startswith("| model")]
    rows = pd.read_parquet(runs[0] / "results.parquet")
    checked = 0
    for model, solver, declared, measured, nfe_range, mark in (ln[:6] for ln in lines):
        model = model[2:]
        g = rows[(rows["model"] == model) & (rows["solver"] == solver) & (rows["status"] == "ok")]
        lo, hi = map(int, nfe_range.split("–"))
        g = g[(g["nfe"] >= lo) & (g["nfe"] <= hi)]
        direct = -np.polyfit(np.log(g["nfe"].astype(float)), np.log(g["error_rmse"].astype(float)), 1)[0]
        assert float(measured.split()[0]) == pytest.approx(direct, abs=0.05), (model, solver)
        assert float(declared) == SOLVERS[solver][1]
        assert mark.strip(" |") == ("warn (low)" if solver == "dpm_solver_3m" else "pass")
        checked += 1
    assert checked == len(MODELS) * sum(k == "ode" and p is not None for k, _, p in SOLVERS.values())


# cells (solver, nfe) -> (wall_s, nll_gap); the gap's sign is random, |gap| is the quality
PARETO_CELLS = {("ddim", 6): (0.10, -2.0), ("ddim", 12): (0.20, 1.0), ("euler", 6): (0.15, -3.0),
                ("heun", 6): (0.30, 0.5), ("heun", 12): (0.60, -0.6), ("dpm_solver_3", 12): (0.50, 0.1),
                ("rk45", None): (0.90, -0.1), ("dpm_solver_2", 24): (1.00, 0.02), ("dpm_solver_2", 48): (1.00, 0.03)}
PARETO_FRONT = [("ddim", 6), ("ddim", 12), ("heun", 6), ("dpm_solver_3", 12), ("dpm_solver_2", 24)]


def pareto_rows() -> pd.DataFrame:
    """Two seeds per cell at +-10% of the values above, and a failed cell that would lead the front if counted."""
    rows = [dict(model="gmm2d", schedule="vp", prediction="eps", solver=solver, kind="ode", nfe=nfe,
                 nfe_used=nfe or 30, seed=seed, status="ok", wall_s=wall * (1 + d), model_s=wall / 2,
                 nll_gap=gap * (1 + d), swd=1.0)
            for (solver, nfe), (wall, gap) in PARETO_CELLS.items() for seed, d in enumerate((-0.1, 0.1))]
    rows.append(dict(model="gmm2d", schedule="vp", prediction="eps", solver="euler", kind="ode", nfe=3, seed=0,
                     status="failed", wall_s=0.01, message="ModelOutputError: NaN"))
    return conform(pd.DataFrame(rows)).assign(run="r", group="gmm2d")


def test_pareto_front_known_cells():
    cells = plots.time_cells(pareto_rows(), "nll_gap")
    assert len(cells) == len(PARETO_CELLS)
    front = plots.pareto_front(cells)
    got = [(s, None if pd.isna(n) else int(n)) for s, n in zip(front["solver"], front["nfe"])]
    assert got == PARETO_FRONT  # exactly these, fastest first
    assert front["q"].tolist() == pytest.approx([abs(PARETO_CELLS[c][1]) for c in PARETO_FRONT])
    # the bare rule: duplicates both stay; equal quality at a longer time and equal time at a worse quality do not
    pts = pd.DataFrame({"wall_s": [1, 1, 2, 1, 3, 0.5], "q": [2, 2, 2, 3, 1, 9]})
    assert plots.pareto_front(pts).index.tolist() == [5, 0, 1, 4]
    # the report's table lists the same cells
    rows = pareto_rows()
    sec = sections.pareto_section(rows, {"gmm2d": "nll_gap"})
    table = next(b for b in sec.blocks if isinstance(b, Table))
    assert [(r[0], r[1]) for r in table.rows] == [(s, "adaptive @30" if n is None else str(n)) for s, n in PARETO_FRONT]
    assert table.columns == ["solver", "NFE", "wall-clock (s, median)", "spread", "|NLL gap|"]


def test_summary_table_shows_failed_and_skipped_cells(single):
    md = (single[1] / "report.md").read_text()
    summary = md.split("## Summary")[1].split("\n## ")[0]
    euler = next(ln for ln in summary.splitlines() if ln.startswith("| euler |"))
    header = next(ln for ln in summary.splitlines() if ln.startswith("| solver | NFE 3 |"))
    assert euler.split(" | ")[1] == "**failed**" and header.split(" | ")[1] == "NFE 3"
    assert "| skipped |" in summary.split("### digits")[1]


def test_fit_order_rule():
    n = np.array([5, 10, 20, 50])
    assert orders.fit_order(n, 7.0 * n**-2.0) == pytest.approx(2.0, abs=1e-12)
    # a pre-asymptotic point whose local slope disagrees is left out of the range
    err = 1.0 * n**-2.0
    err[0] = 1.0
    result = orders.fit(n, err)
    assert result.order == pytest.approx(2.0, abs=1e-12) and result.nfe == (10.0, 20.0, 50.0)
    # seeds average geometrically; NaN, zero and missing NFE are ignored
    n2 = np.array([10, 10, 20, 20, 40, 40, 80, np.nan])
    e2 = np.array([1e-2, 4e-2, 2.5e-3, 1e-2, 6.25e-4, 2.5e-3, 0.0, 1.0])
    assert orders.fit_order(n2, e2) == pytest.approx(2.0, abs=1e-12)
    assert math.isnan(orders.fit_order([10, 10], [1.0, 2.0]))
    # the default budgets 6, 10, 20 span 3.3x: too short, and said so instead of a warning
    short = orders.fit([6, 10, 20], [1e-1, 4e-2, 1e-2])
    assert math.isnan(short.order) and short.note == "range too short to measure (NFE 6–20)"
    assert orders.order_mark(short, 2.0) == "range too short to measure (NFE 6–20)"
    # errors below the reference's own accuracy are not fitted
    n3 = np.array([10, 20, 40, 80, 160])
    e3 = np.maximum(n3**-2.0, 1e-4)
    assert orders.fit(n3, e3, floor=1e-4 * 1.0001).nfe == (10.0, 20.0, 40.0, 80.0)


def test_target_is_the_reference_quality_with_its_interval(runs):
    run = report.load_run(runs[0])
    rows = run.rows.assign(run=run.label, group=run.rows["model"])
    metrics = {m: report.headline_metric(rows[rows["group"] == m]) for m in MODELS}
    assert metrics == MODELS
    g = rows[(rows["model"] == "moons") & (rows["status"] == "ok")]
    ref = float(g[g["solver"] == "rk45"]["swd"].mean())
    groups = pd.DataFrame({"group": ["moons"], "source": ["reference"], "metric": ["swd"], "value": [ref],
                           "lo": [ref * 0.9], "hi": [ref * 1.1]})
    rows.loc[rows["model"] == "moons", "swd_lo"] = rows["swd"] * 0.97
    rows.loc[rows["model"] == "moons", "swd_hi"] = rows["swd"] * 1.03
    sec = sections.target_section(rows, metrics, groups, tolerance=0.1)
    text = [b for b in sec.blocks if isinstance(b, str)]
    assert any("gmm2d: no reference quality" in t for t in text)
    table = next(b for b in sec.blocks if isinstance(b, Table)).rows
    threshold = ref * 1.1 * 1.1
    mean = g.groupby(["solver", "nfe"])["swd"].mean()
    expect = int(mean["heun"][mean["heun"] * 0.97 <= threshold].index.min())
    assert next(r for r in table if r[0] == "heun")[1] == str(expect)
    assert next(r for r in table if r[0] == "euler_maruyama")[1][0] == "not reached"


def test_compare_marks_regressions(runs, tmp_path):
    html = report.make_report(runs[1:], tmp_path / "cmp", formats=("html", "md"))
    text, md = html.read_text(), (tmp_path / "cmp" / "report.md").read_text()
    assert "run-b vs run-a" in text
    # heun's quality is 30% worse in run-b: red cells and a 'worse' sentence; dpm_solver_2 20% better
    assert "<td class=bad>+30.0%</td>" in text and "<td class=good>-20.0%</td>" in text
    assert "<p class=bad>heun: worse (median change of the headline metric +30.0% over 5 cells; 5 regressions)" in text
    assert "dpm_solver_2: better (median change of the headline metric -20.0% over 5 cells; 0 regressions)" in md
    assert "<p class=bad>Worse: heun.</p>" in text and "<p class=good>Better: dpm_solver_2.</p>" in text
    unchanged = next(ln for ln in md.splitlines() if ln.startswith("Unchanged"))
    assert set(unchanged.split(": ")[1].rstrip(".").split(", ")) == set(SOLVERS) - {"heun", "dpm_solver_2"}
    # the per-cell grid: every common cell of heun in red, dpm_solver_2's in plain text (green in the HTML)
    grid = {ln.split(" | ")[0][2:]: ln for ln in md.splitlines() if ln.startswith("| ") and ln.count("%") >= 5}
    assert grid["heun"].count("**+30.0%**") == len(NFES) and grid["dpm_solver_2"].count("-20.0%") == len(NFES)
    assert grid["ddim"].count("+0.0%") == len(NFES)
    listed = [ln for ln in md.splitlines() if ln.startswith("| digits | ") and ("improved" in ln or "regression" in ln)]
    assert len(listed) == 10 and all("| heun |" in ln or "| dpm_solver_2 |" in ln for ln in listed)
    assert all("**regression**" in ln for ln in listed if "| heun |" in ln)
    ok_cells = (len(SOLVERS) - 1) * len(NFES) + 1
    assert f"{ok_cells - 10} of {ok_cells} common cells changed by at most 5%" in md


def test_failed_skipped_and_provenance(single):
    md = (single[1] / "report.md").read_text()
    assert "2 of " in md and "model returned NaN" in md and "multiple of 3" in md
    assert "| status |" in md and "| **failed** |" in md and "| skipped |" in md
    for item in ("0123abc", "torch 2.5.0", "cpu (synthetic)", "run-a"):
        assert item in md


def _cli(capsys, *argv):
    code = bench_main(["report", *map(str, argv)])
    return code, capsys.readouterr().err


def test_cli_bad_input_exits_2(runs, tmp_path, capsys):
    code, err = _cli(capsys, tmp_path / "nothing")
    assert code == 2 and "results.parquet" in err and "not found" in err and "Traceback" not in err
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "results.parquet").write_bytes(b"PAR1 this is not parquet")
    code, err = _cli(capsys, corrupt)
    assert code == 2 and "cannot read" in err
    partial = tmp_path / "partial"
    partial.mkdir()
    synthetic_rows().drop(columns=["status", "kind"]).to_parquet(partial / "results.parquet")
    code, err = _cli(capsys, partial)
    assert code == 2 and "status" in err and "kind" in err and "required" in err
    code, err = _cli(capsys, runs[0], "--format", "html,pdf", "--out", tmp_path / "o")
    assert code == 2 and "pdf" in err and "html, md" in err
    with pytest.raises(SystemExit) as exit_:
        _cli(capsys, runs[0], "--tolerance", "-1", "--out", tmp_path / "o")
    assert exit_.value.code == 2 and "--tolerance" in capsys.readouterr().err


def test_cli_md_only_and_screenshot_needs_chromium(runs, tmp_path, capsys, monkeypatch):
    assert bench_main(["report", str(runs[1]), "--format", "md", "--out", str(tmp_path / "md")]) == 0
    assert (tmp_path / "md" / "report.md").is_file() and not (tmp_path / "md" / "report.html").exists()
    code, err = _cli(capsys, runs[1], "--out", tmp_path / "w", "--screenshot", tmp_path / "w.png",
                     "--screenshot-size", "wide")
    assert code == 2 and "1400,3000" in err and not (tmp_path / "w").exists()
    monkeypatch.setattr(screenshot.shutil, "which", lambda name: None)
    code, err = _cli(capsys, runs[0], "--out", tmp_path / "s", "--screenshot", tmp_path / "s.png")
    assert code == 2 and "chromium" in err.lower()


def test_report_renders_when_no_cell_is_ok(tmp_path):
    rows = synthetic_rows(models=("digits",)).assign(status="failed", message="ModelOutputError: NaN")
    run = write_run(tmp_path / "failed", rows, "all-failed")
    (run / "manifest.json").unlink()
    md = report.make_report([run], formats=("md",)).read_text()
    assert f"{len(rows)} of {len(rows)} cells did not finish ok" in md
    assert "No figures: no ok cell" in md and "no manifest.json" in md
    assert not list((run / "report").glob("*.png"))
    with pytest.raises(report.ReportError, match="valid: html, md"):
        report.make_report([run], formats=("pdf",))
