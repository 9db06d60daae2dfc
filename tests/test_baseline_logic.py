"""The baseline comparison catches small solver changes, passes improvements, and stores numbers exactly.

Fast: a few cells on gmm2d, plus synthetic tables. The full comparison is tests/test_regression.py.
"""
import math

import pandas as pd
import pytest
import torch

from bench import baseline as B
from bench import baseline_compare as C
from bench import baseline_measure as M
from bench import baseline_store as S
from bench.__main__ import main as bench_main
from solvers import get_solver, list_solvers, make_grid, sample


@pytest.fixture(scope="module")
def problem():
    return M.Problem("gmm2d", "vp")


def measured(problem, solver, nfe, run=sample, options=()):
    stochastic = get_solver(solver).stochastic(dict(options))
    with M.single_thread():
        return S.table(M.measure_cell(problem, M.Cell("gmm2d", "vp", solver, tuple(options), nfe, stochastic), run))


def perturbed_output(*args, **kwargs):
    return sample(*args, **kwargs) * (1 + 1e-4)


def swap_steps(grid: torch.Tensor, i: int) -> torch.Tensor:
    """The same grid with steps i and i + 1 taken in the other order (same ends, still decreasing)."""
    d = torch.diff(grid)
    d[[i, i + 1]] = d[[i + 1, i]]
    return torch.cat([grid[:1], grid[0] + torch.cumsum(d, 0)])


def swapped_grid(model, x_T, solver, nfe=None, **kwargs):
    spec = get_solver(solver)
    steps = spec.steps(nfe)
    grid = make_grid(model.schedule, spec.default_grid, steps, model.schedule.T, model.schedule.default_t_end)
    return sample(model, x_T, solver, nfe=nfe, timesteps=swap_steps(grid, steps // 2), **kwargs)


@pytest.mark.parametrize("change", [perturbed_output, swapped_grid], ids=["output*(1+1e-4)", "swap two steps"])
def test_small_change_of_a_deterministic_solver_regresses(problem, change):
    base = measured(problem, "dpm_solver_3", 100)
    now = measured(problem, "dpm_solver_3", 100, run=change)
    cmp = C.compare(base, now)
    assert set(cmp["metric"]) == {"rmse", "max_error"}
    assert "regressed" in set(cmp["status"]), cmp
    assert len(C.failures(cmp)) >= 1
    # The other way round the change is an improvement: reported, not failed.
    back = C.compare(now, base)
    assert "improved" in set(back["status"]), back


def test_swap_is_caught_on_a_first_order_solver_too(problem):
    cmp = C.compare(measured(problem, "euler", 20), measured(problem, "euler", 20, run=swapped_grid))
    assert (cmp["status"] == "regressed").all(), cmp


def test_stochastic_bias_rising_by_more_than_3_se_regresses(problem):
    base = measured(problem, "euler_maruyama", 20)
    assert set(base["metric"]) == set(S.BIAS_METRICS + S.ERROR_METRICS)
    assert (base[base.metric.isin(S.BIAS_METRICS)]["stderr"] > 0).all()
    spread = measured(problem, "euler_maruyama", 20, run=lambda *a, **k: sample(*a, **k) * 1.05)
    cmp = C.compare(base, spread)
    row = cmp.set_index("metric").loc["bias_sq_norm"]
    assert row["status"] == "regressed", cmp
    assert C.failures(C.compare(spread, base)).empty  # the reverse is an improvement


@pytest.mark.parametrize("solver,nfe,options", [("euler_maruyama", 100, ()), ("dpmpp_2m_sde", 100, ()),
                                                 ("restart", 50, ()), ("ddim", 5, (("eta", 1.0),))])
def test_small_change_of_a_stochastic_solver_is_caught(problem, solver, nfe, options):
    """An output scaled by 1 + 1e-4 moves the biases by 0.007-0.03 standard errors (far inside 3) and the strong error
    by under 1%; on the baseline's own x_T and Brownian paths that is a changed output, and fails."""
    base = measured(problem, solver, nfe, options=options)
    now = measured(problem, solver, nfe, run=perturbed_output, options=options)
    cmp = C.compare(base, now).set_index("metric")
    assert cmp.loc["bias_sq_norm", "status"] == "changed", cmp
    assert not C.failures(cmp).empty and set(cmp["status"]) <= {"same", "moved", "changed"}, cmp
    assert (C.compare(base, measured(problem, solver, nfe, options=options))["status"] == "same").all()


def test_a_stochastic_solver_off_its_brownian_paths_regresses_through_the_strong_error(problem):
    """Noise from another source has the same law (biases within their standard errors) but not the same paths: the
    strong error against Euler-Maruyama at 4096 steps on the baseline's paths rises far above 1%."""
    base = measured(problem, "euler_maruyama", 50)
    rows = base.set_index("metric")
    assert 0 < rows.loc["rmse", "value"] <= rows.loc["max_error", "value"]
    assert "strong error vs Euler-Maruyama at 4096 uniform steps" in rows.loc["rmse", "reference"]
    other = measured(problem, "euler_maruyama", 50,
                     run=lambda *a, generator=None, **k: sample(*a, generator=torch.Generator().manual_seed(5), **k))
    cmp = C.compare(base, other).set_index("metric")
    assert cmp.loc["rmse", "status"] == "regressed" and cmp.loc["max_error", "status"] != "improved", cmp


def test_measurement_is_reproducible_bit_for_bit(problem):
    for solver, nfe, options in (("heun", 20, ()), ("rk45", None, ()), ("ddim", 10, (("eta", 1.0),))):
        a, b = measured(problem, solver, nfe, options=options), measured(problem, solver, nfe, options=options)
        pd.testing.assert_frame_equal(a, b)
        assert (C.compare(a, b)["status"] == "same").all()


# --- pure comparison rules on synthetic tables ----------------------------------------------


def row(metric="rmse", value=1.0, stderr=math.nan, solver="euler", nfe=10, nfe_used=10, schedule="vp"):
    return {"model": "gmm2d", "schedule": schedule, "solver": solver, "options": "", "kind": "ode",
            "timesteps": "logsnr", "nfe": nfe, "nfe_used": nfe_used, "samples": 8, "metric": metric, "value": value,
            "stderr": stderr, "reference": "synthetic"}


def status(base_rows, now_rows):
    return list(C.compare(S.table(base_rows), S.table(now_rows))["status"])


def test_deterministic_rule_is_one_percent_plus_1e_12():
    assert status([row(value=1.0)], [row(value=1.0099)]) == ["moved"]
    assert status([row(value=1.0)], [row(value=1.0101)]) == ["regressed"]
    assert status([row(value=1.0)], [row(value=0.98)]) == ["improved"]
    assert status([row(value=0.0)], [row(value=0.9e-12)]) == ["moved"]
    assert status([row(value=0.0)], [row(value=2e-12)]) == ["regressed"]
    assert status([row(value=1.0)], [row(value=math.nan)]) == ["regressed"]


def test_stochastic_rule_is_three_standard_errors_on_the_size_of_the_bias():
    b = [row("bias_logp", -0.5, 0.1, "euler_maruyama")]
    assert status(b, [row("bias_logp", -0.79, 0.1, "euler_maruyama")]) == ["changed"]  # same paths, other output
    assert status(b, [row("bias_logp", -0.5 - 0.99e-4, 0.1, "euler_maruyama")]) == ["moved"]  # < 1e-3 se: rounding
    assert status(b, [row("bias_logp", -0.5 + 1.01e-4, 0.1, "euler_maruyama")]) == ["changed"]
    assert status(b, [row("bias_logp", -0.81, 0.1, "euler_maruyama")]) == ["regressed"]
    assert status(b, [row("bias_logp", 0.81, 0.1, "euler_maruyama")]) == ["regressed"]  # sign flips count
    assert status(b, [row("bias_logp", 0.1, 0.1, "euler_maruyama")]) == ["improved"]


def test_order_below_its_band_regresses():
    lo, hi = C.order_band("dpm_solver_2")
    assert (lo, hi) == pytest.approx((1.7, 2.5))  # [p - 0.3, p + 0.5], the rule of solvers.convergence
    base = [row("order", 2.05, solver="dpm_solver_2", nfe=None, nfe_used=1240)]
    assert status(base, [row("order", lo - 0.01, solver="dpm_solver_2", nfe=None, nfe_used=1240)]) == ["regressed"]
    assert status(base, [row("order", lo + 0.01, solver="dpm_solver_2", nfe=None, nfe_used=1240)]) == ["moved"]
    assert C.order_band("dpm_solver_3m") == pytest.approx((1.7, 2.5))  # declared order 2: its warm-up caps it
    assert status(base, [row("order", hi + 0.2, solver="dpm_solver_2", nfe=None, nfe_used=1240)]) == ["moved"]


def test_missing_and_new_rows_fail_and_adaptive_nfe_rise_regresses():
    cmp = C.compare(S.table([row(nfe=10), row(nfe=20, nfe_used=20)]), S.table([row(nfe=10), row(nfe=50, nfe_used=50)]))
    assert sorted(cmp["status"]) == ["missing", "new", "same"]
    assert len(C.failures(cmp)) == 2
    adaptive = {"solver": "rk45", "nfe": None}
    assert status([row(**adaptive, nfe_used=80)], [row(**adaptive, nfe_used=98)]) == ["regressed"]
    assert status([row(**adaptive, nfe_used=80)], [row(**adaptive, nfe_used=70)]) == ["improved"]


def test_partial_measurement_compares_only_what_it_measured():
    base = S.table([row(schedule="vp"), row(schedule="ve"), row("order", 1.0, nfe=None)])
    assert list(C.compare(base, S.table([row(schedule="ve")]))["status"]) == ["same"]


def test_csv_round_trip_is_exact(tmp_path):
    rows = [row(value=0.1 + 0.2), row(metric="max_error", value=1 / 3),
            row("bias_logp", -1e-17 / 7, 2 / 3, "ddim", nfe=5, nfe_used=5),
            row("order", math.pi, solver="heun", nfe=None, nfe_used=1240)]
    rows[2]["options"] = "eta=1.0"
    written = S.write_baselines(S.table(rows), tmp_path)
    assert [p.name for p in written] == ["gmm2d.csv"]
    back = S.read_baselines(tmp_path)
    assert (C.compare(S.table(rows), back)["status"] == "same").all()
    assert sorted(back["value"].tolist()) == sorted(r["value"] for r in rows)


# --- coverage and command line ----------------------------------------------------------------


def test_cells_cover_every_registered_solver_and_stochastic_variant():
    cells = M.cells(models=["gmm2d"], schedules=["vp"])
    assert {c.solver for c in cells} == set(list_solvers())
    for name in list_solvers():
        spec = get_solver(name)
        if spec.kind == "ode" and spec.stochastic_if is not None:
            assert name in M.STOCHASTIC_VARIANTS, f"{name} has stochastic options but no stochastic baseline"
            assert spec.stochastic(M.STOCHASTIC_VARIANTS[name])
    heun = [c.nfe for c in cells if c.solver == "heun"]
    assert heun == [10, 20, 50, 100]  # odd budgets are skipped, not failed
    assert [c.nfe for c in cells if c.solver == "rk45"] == [None]


def test_bad_arguments_exit_2_naming_the_valid_choices(capsys):
    for argv, valid in ((["--models", "cifar10"], "gmm2d, gmm-digits"), (["--solvers", "dpm_solver_4"], "dpm_solver_3")):
        with pytest.raises(SystemExit) as exit_:
            bench_main(["baseline", *argv])
        assert exit_.value.code == 2
        assert valid in capsys.readouterr().err


@pytest.mark.parametrize("where", ["empty", "nonexistent"])
def test_a_directory_without_baselines_exits_2_before_measuring(tmp_path, capsys, monkeypatch, where):
    directory = tmp_path / "baselines"
    if where == "empty":
        directory.mkdir()
    monkeypatch.setattr(B, "measure", lambda *a, **k: pytest.fail("measured although there is nothing to compare"))
    assert bench_main(["baseline", "--dir", str(directory), "--quiet"]) == 2
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and "no baseline CSVs" in lines[0] and "--update" in lines[0], out
    assert not out.out


def test_clean_comparison_prints_only_a_one_line_summary():
    base = [row(value=1.0, nfe=n) for n in (5, 10, 20)]
    now = [row(value=1.001, nfe=n) for n in (5, 10, 20)]  # all moved within 1%: nothing failed
    text = C.format_comparison(C.compare(S.table(base), S.table(now)))
    assert text == "0 same, 3 moved, 0 improved, 0 regressed, 0 changed, 0 missing, 0 new; no regression"


def test_failing_comparison_prints_only_the_failing_rows():
    base = [row(value=1.0, nfe=5), row(value=1.0, nfe=10), row(value=1.0, nfe=20)]
    now = [row(value=1.001, nfe=5), row(value=2.0, nfe=10), row(value=1.0, nfe=50)]
    lines = C.format_comparison(C.compare(S.table(base), S.table(now))).splitlines()
    assert len(lines) == 1 + 3 + 1  # header, regressed, missing, new, summary
    assert [line.split()[-1] for line in lines[1:4]] == ["x2", "measured", "--update`"]  # the notes, failures only
    assert lines[-1] == "0 same, 1 moved, 0 improved, 1 regressed, 0 changed, 1 missing, 1 new; 3 FAILED (regressed, changed, missing or new)"


def test_update_then_compare_passes_end_to_end(tmp_path, capsys):
    argv = ["baseline", "--models", "gmm2d", "--schedules", "vp", "--solvers", "euler", "--dir", str(tmp_path), "--quiet"]
    assert bench_main([*argv, "--update"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["gmm2d.csv"]
    capsys.readouterr()
    assert bench_main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("11 same, 0 moved") and "no regression" in lines[0], lines
