"""Intervals, paired comparisons, equivalent solvers, the noise floor and the recommendation, end to end on gmm2d."""
from __future__ import annotations

import math

import numpy as np
import pytest

from bench import intervals, metrics, verdicts
from bench.dist import World
from bench.group_rows import read_group_rows
from bench.report import make_report
from bench.schema import METRICS, bounds
from bench.sweep import Sweep, run_sweep


def test_bootstrap_interval_covers_the_mean_and_has_the_normal_width():
    rng = np.random.default_rng(1)
    hits, widths = 0, []
    for trial in range(60):
        x = rng.normal(size=400)
        value, lo, hi = intervals.bootstrap(lambda idx: float((x if idx is None else x[idx]).mean()), len(x), trial)
        hits += lo <= 0.0 <= hi
        widths.append(hi - lo)
    assert hits >= 52  # 95% nominal: 57 of 60 expected
    assert np.mean(widths) == pytest.approx(2 * 1.96 / math.sqrt(400), rel=0.1)


def test_paired_difference_resolves_what_marginal_intervals_cannot():
    rng = np.random.default_rng(2)
    base = rng.exponential(size=500)
    ev = metrics.Evaluator(None, None, seed=0, family="2d")
    a = metrics.Observation(points=None, sq_err=base, max_err=np.sqrt(base))
    b = metrics.Observation(points=None, sq_err=base * 1.03, max_err=np.sqrt(base * 1.03))  # 1.5% worse RMSE
    ma, mb = ev.measure(a, 0), ev.measure(b, 0)
    assert intervals.overlap(ma["error_rmse_lo"], ma["error_rmse_hi"], mb["error_rmse_lo"], mb["error_rmse_hi"])
    diff, lo, hi = ev.paired(b, a, "error_rmse", 0)
    assert diff > 0 and intervals.excludes_zero(lo, hi)
    same = ev.paired(a, a, "error_rmse", 0)
    assert same == (0.0, 0.0, 0.0)


def test_signed_metric_is_compared_by_its_size():
    ev = metrics.Evaluator(None, np.array([0.0, 1.0, 1e6]), seed=0, family="2d")
    rng = np.random.default_rng(3)
    lp = rng.normal(size=300)
    lp -= lp.mean()
    under, over = metrics.Observation(None, log_p=lp - 0.5), metrics.Observation(None, log_p=lp + 0.5)
    assert ev.paired(under, over, "nll_gap", 0)[0] == pytest.approx(0.0, abs=1e-12)  # gaps +0.5 and -0.5: same size


def test_noise_floor_and_target_rules():
    floor = (0.05, 0.04, 0.06)
    assert verdicts.at_floor(0.055, 0.07, floor) and not verdicts.at_floor(0.07, 0.09, floor)
    assert not verdicts.at_floor(0.0, 1.0, (math.nan,) * 3)
    assert verdicts.reaches(0.5, 0.6) and not verdicts.reaches(0.7, 0.6) and not verdicts.reaches(math.nan, 1)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("verdicts")
    sweep = Sweep(["gmm2d"], ["ddim", "dpm_solver_1", "heun", "dpm_solver_2", "euler_maruyama"], [6, 10], [0],
                  samples=300, repeats=2, run_id="v")
    df = run_sweep(sweep, out, World(), progress=False)
    return out, df


def test_every_metric_has_its_interval_and_cost_its_repeats(small_run):
    out, df = small_run
    ok = df[df["status"] == "ok"]
    assert len(ok) == 5 * 2  # every solver spends NFE 6 and 10 exactly (heun: even budgets)
    for m in METRICS:
        lo, hi = bounds(m)
        have = ok[ok[m].notna()]
        assert have[lo].notna().all() and have[hi].notna().all(), m
        assert (have[lo] <= have[m] + 1e-12).all() and (have[m] <= have[hi] + 1e-12).all(), m
    assert ok["swd"].notna().all() and ok["nll_gap"].notna().all()
    # ODE rows: the error against the reference solution; SDE rows: the strong error on their Brownian paths
    assert ok["error_rmse"].notna().all() and (ok.loc[ok["kind"] == "sde", "error_rmse"] > 0).all()
    assert (ok["repeats"] == 2).all() and (ok["wall_spread"] >= 0).all()
    assert np.allclose(ok["wall_per_sample_s"], ok["wall_s"] / 300)
    groups = read_group_rows(out)
    assert set(groups["source"]) == {"data", "reference"} and set(groups["metric"]) >= {"swd", "mmd", "nll_gap"}
    floor = groups[(groups["source"] == "data") & (groups["metric"] == "nll_gap")].iloc[0]
    assert floor["lo"] <= 0 <= floor["hi"]  # exact draws against exact draws: no gap


def test_report_names_equivalent_solvers_once_and_recommends_with_ties(small_run):
    out, df = small_run
    rows = df.assign(run="v", group=df["model"])
    assert verdicts.equivalent_solvers(rows) == {"ddim": "ddim ≡ dpm_solver_1", "dpm_solver_1": "ddim ≡ dpm_solver_1"}
    md = make_report([out], formats=("md",)).read_text()
    rec = md.split("## Recommendation")[1].split("\n## ")[0]
    assert md.index("## Recommendation") < md.index("## Summary")
    assert "| 6 |" in rec and "| 10 |" in rec
    summary = md.split("## Summary")[1].split("\n## ")[0]
    assert "| ddim ≡ dpm_solver_1 |" in summary and "| ddim |" not in summary and " ± " in summary
    assert "noise floor" in summary
    orders_md = md.split("## Convergence order")[1].split("\n## ")[0]
    assert "range too short to measure (NFE 6–10)" in orders_md and "warn" not in orders_md
    assert (out / "report" / "00-gmm2d-samples.png").is_file()


def test_same_algorithm_is_one_class_and_a_far_cell_a_resolved_difference(small_run):
    """ddim (written in x0) and dpm_solver_1 (in eps) are one algorithm: their float32 samples differ by round-off,
    which a paired bootstrap can resolve (2e-8 in swd), so the report classes them as equivalent before any
    comparison and never states a verdict between them."""
    out, df = small_run
    rows = df.assign(run="v", group=df["model"])
    pairing = verdicts.Pairing({"v": out})
    d = pairing.difference(rows, "v", "ddim", "dpm_solver_1", 10, "swd")
    assert d is not None and abs(d[0]) < 1e-6
    assert verdicts.equivalent_solvers(rows)["ddim"] == "ddim ≡ dpm_solver_1"
    d = pairing.difference(rows, "v", "heun", "ddim", 6, "nll_gap")  # heun at 6 NFE is far off
    assert d is not None and intervals.excludes_zero(d[1], d[2]) and d[0] > 0


def test_a_cell_out_of_memory_is_a_failed_row_and_the_sweep_goes_on(tmp_path, monkeypatch):
    from bench import sweep as sweep_module

    real_sample = sweep_module.sample

    def sample(model, x, solver, **kw):
        if solver == "dpm_solver_3":
            raise MemoryError("cannot allocate the grid")
        return real_sample(model, x, solver, **kw)

    monkeypatch.setattr(sweep_module, "sample", sample)
    df = run_sweep(Sweep(["gmm2d"], ["dpm_solver_3", "ddim"], [6], [0], samples=50, repeats=1), tmp_path, World(),
                   progress=False)
    rows = df.set_index("solver")
    assert rows.loc["dpm_solver_3", "status"] == "failed" and "MemoryError" in rows.loc["dpm_solver_3", "message"]
    assert rows.loc["ddim", "status"] == "ok"
