"""`python -m bench check` and solvers.testing: a correct plugin passes; a wrong order, a NaN at one budget and an
extra model call are each caught and named; --equal-to compares two solvers on the same grids.

In-process on gmm2d (one schedule where that is enough), so that the whole file takes well under a minute.
"""
import json
import math
from pathlib import Path

import pytest
import torch

from bench.__main__ import main
from reference_models import load
from solvers import solver, testing

PLUGINS = Path(__file__).parent / "plugins"
F64 = torch.float64


def check(capsys, *argv) -> tuple[int, str]:
    """(exit code, stdout) of `python -m bench check --models gmm2d --quiet ...`, in-process."""
    code = main(["check", "--models", "gmm2d", "--quiet", *argv])
    return code, capsys.readouterr().out


def rows_of(path: Path) -> dict:
    return {(r["solver"], r["check"]): r for r in json.loads(path.read_text())["rows"]}


def test_the_example_plugin_passes_every_check(capsys, tmp_path):
    code, out = check(capsys, "--plugins", str(PLUGINS / "good_solver.py"), "--solvers", "my_dpmpp_2m",
                      "--json", str(tmp_path / "rows.json"))
    assert code == 0, out
    rows = rows_of(tmp_path / "rows.json")
    checks = ["order", "exact NFE", "finite", "batch independence", "determinism", "convergence"]
    assert [c for _, c in rows] == checks and all(r["status"] == "pass" for r in rows.values()), out
    order = rows[("my_dpmpp_2m", "order")]
    assert [p["where"] for p in order["pairs"]] == ["gmm2d/vp", "gmm2d/ve"]
    assert all(1.7 <= p["value"] <= 2.5 for p in order["pairs"]), order  # the band of declared order 2


def test_a_first_order_solver_declared_second_order_fails_its_order_check(capsys, tmp_path):
    code, out = check(capsys, "--plugins", str(PLUGINS / "wrong_order.py"), "--solvers", "wrong_order_2m",
                      "--schedules", "vp", "--json", str(tmp_path / "rows.json"))
    assert code == 1
    rows = rows_of(tmp_path / "rows.json")
    assert {k[1] for k, r in rows.items() if r["status"] == "FAIL"} == {"order"}, out
    assert rows[("wrong_order_2m", "convergence")]["status"] == "pass"  # it converges, at the wrong rate
    measured = rows[("wrong_order_2m", "order")]["pairs"][0]["value"]
    assert abs(measured - 1.0) < 0.1
    assert any(line.split()[:3] == ["wrong_order_2m", "order", "FAIL"] for line in out.splitlines()), out
    assert "declared 2, band [1.7, 2.5]" in out and "local slopes" in out  # the measured table follows


@pytest.mark.parametrize("plugin, solver, schedule, failing, detail", [
    ("nan_at_one_budget.py", "nan_at_37", "vp", "finite", "NFE 37, t_end 0.001: NaN/Inf"),  # NaN at one budget
    ("extra_call.py", "extra_call_at_23", "ve", "exact NFE", "NFE 23: 24 evaluations"),  # an extra model call
])
def test_a_fault_at_a_single_budget_is_caught(plugin, solver, schedule, failing, detail, capsys, tmp_path):
    code, out = check(capsys, "--plugins", str(PLUGINS / plugin), "--solvers", solver, "--schedules", schedule,
                      "--json", str(tmp_path / "rows.json"))
    assert code == 1
    rows = rows_of(tmp_path / "rows.json")
    assert {k[1] for k, r in rows.items() if r["status"] == "FAIL"} == {failing}, out
    assert detail in rows[(solver, failing)]["detail"]


def test_equal_to_passes_for_an_equivalent_solver_and_fails_for_another(capsys, tmp_path):
    code, out = check(capsys, "--solvers", "dpm_solver_1,euler", "--equal-to", "ddim", "--schedules", "vp",
                      "--json", str(tmp_path / "rows.json"))
    rows = rows_of(tmp_path / "rows.json")
    assert rows[("dpm_solver_1", "equal to ddim")]["status"] == "pass", out
    assert rows[("euler", "equal to ddim")]["status"] == "FAIL", out
    assert code == 1 and [k for k, r in rows.items() if r["status"] == "FAIL"] == [("euler", "equal to ddim")], out


@pytest.mark.parametrize("argv, message", [
    (["--solvers", "dpm_solver_4"], "unknown solver 'dpm_solver_4'"),
    (["--solvers", "ddim", "--equal-to", "ddim,euler"], "give one solver"),
    (["--solvers", "ddim", "--models", "digits"], "unknown model 'digits'"),
    (["--solvers", "ddim", "--equal-tol", "0"], "finite number > 0"),
])
def test_bad_arguments_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main(["check", *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_json_into_a_missing_directory_exits_2_before_checking(capsys, tmp_path):
    assert main(["check", "--solvers", "ddim", "--json", str(tmp_path / "no" / "rows.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such directory" in err


def test_a_schedule_the_solver_does_not_run_on_is_skipped_and_said(capsys, tmp_path):
    @solver("vp_only_euler", order=1, nfe_per_step=1, schedules="vp")
    def vp_only_euler(model, x, grid):
        for s, t in zip(grid[:-1].tolist(), grid[1:].tolist()):
            x = x + (t - s) * model.ode_drift(x, s)
        return x

    code, out = check(capsys, "--solvers", "vp_only_euler", "--json", str(tmp_path / "rows.json"))
    rows = rows_of(tmp_path / "rows.json")
    assert code == 0, out
    assert rows[("vp_only_euler", "schedules")]["status"] == "n/a"
    assert "skipped ve: it runs on vp schedules only" in rows[("vp_only_euler", "schedules")]["detail"]
    assert [p["where"] for p in rows[("vp_only_euler", "order")]["pairs"]] == ["gmm2d/vp"]


# --- solvers.testing, as a solver author calls it ------------------------------------------------


@pytest.fixture(scope="module")
def vp():
    rm = load("gmm2d", "vp")
    x_T = rm.schedule.prior_sample((16, 2), torch.Generator().manual_seed(0), dtype=F64)
    return rm, x_T


def test_a_failed_check_is_an_assertion_error_with_the_measured_table(vp):
    rm, x_T = vp

    @solver("too_many_evals", order=1, nfe_per_step=1)
    def too_many_evals(model, x, grid):
        model.eps(x, float(grid[0]))  # one evaluation more than the budget, at every budget
        for s, t in zip(grid[:-1].tolist(), grid[1:].tolist()):
            x = x + (t - s) * model.ode_drift(x, s)
        return x

    with pytest.raises(AssertionError) as e:
        testing.check_exact_nfe("too_many_evals", rm.model, x_T[:2], budgets=range(1, 6))
    text = str(e.value)
    assert "too_many_evals  exact NFE  FAIL" in text
    assert all(f"NFE {n}: {n + 1} evaluations" in text for n in range(1, 6)), text
    assert isinstance(e.value, testing.CheckFailed) and e.value.outcome.check == "exact NFE"


def test_budgets_refused_by_the_nfe_rule_pass_and_a_refusal_while_sampling_fails(vp):
    rm, x_T = vp

    def steps(nfe, options):
        if nfe % 2:
            raise ValueError("odd budgets are not supported")  # the registry adds the valid budgets
        return nfe // 2

    @solver("even_only", order=1, steps_for_nfe=steps, valid_nfe="even budgets")
    def even_only(model, x, grid, *, nfe):
        if len(grid) == 4:
            raise ValueError("3 steps are too few")  # a budget its rule accepts, refused while sampling
        for s, t in zip(grid[:-1].tolist(), grid[1:].tolist()):
            x = x + (t - s) * model.ode_drift(x, s)
            x = x + 0 * model.ode_drift(x, t)
        return x

    outcome = testing.check_exact_nfe("even_only", rm.model, x_T[:2], budgets=[1, 2, 3, 4, 5, 8])
    assert outcome.status == "pass" and "3 budgets of 1–8 spent exactly, 3 refused" in outcome.detail
    with pytest.raises(AssertionError, match=r"NFE 6: its NFE rule accepts it but sampling refused it \(ValueError"):
        testing.check_exact_nfe("even_only", rm.model, x_T[:2], budgets=range(1, 9))


def test_order_of_builtins_through_the_same_functions(vp):
    rm, x_T = vp
    fit = testing.measure_order("dpm_solver_2", rm.model, x_T, nfes=(20, 40, 80, 160, 320))
    assert fit.ok and 1.7 <= fit.order <= 2.5, fit
    assert testing.check_order("dpm_solver_2", rm.model, x_T, nfes=(20, 40, 80, 160, 320)).status == "pass"


def test_strong_order_is_measured_on_brownian_paths(vp):
    """A solver that ignores its noise declares strong order 1 in vain: its error against the fine-step solution on the
    same Brownian paths does not fall. Without a model the check is n/a, never pass."""
    rm, x_T = vp

    @solver("em_with_strong", kind="sde", weak_order=1, strong_order=1, nfe_per_step=1, default_grid="uniform")
    def em_with_strong(model, x, grid, *, generator=None):
        for s, t in zip(grid[:-1].tolist(), grid[1:].tolist()):
            x = x + (t - s) * model.sde_drift(x, s)
        return x

    outcome = testing.check_strong_order("em_with_strong")
    assert outcome.status == "n/a" and "declared 1: give a model and x_T" in outcome.detail
    with pytest.raises(testing.CheckFailed, match="strong order"):
        testing.check_strong_order("em_with_strong", rm.model, x_T[:64], (16, 32, 64, 128), steps=1024)
    assert testing.check_strong_order("reverse_diffusion").detail == "no strong order declared"


def test_a_global_generator_draw_breaks_determinism_and_per_sample_noise_keeps_batches(vp):
    rm, x_T = vp

    @solver("global_noise", kind="sde", weak_order=1, nfe_per_step=1, default_grid="uniform")
    def global_noise(model, x, grid, *, generator=None):
        return x + 0.0 * model.eps(x, float(grid[0])) + torch.randn_like(x)  # ignores `generator`

    with pytest.raises(AssertionError, match="determinism  FAIL"):
        testing.check_deterministic("global_noise", rm.model, x_T, nfe=1)
    with pytest.raises(AssertionError, match="batch independence  FAIL"):
        testing.check_batch_independent("global_noise", rm.model, x_T, nfe=1)
    assert testing.check_batch_independent("ddim", rm.model, x_T, eta=1.0).status == "pass"  # per-sample generators
    assert testing.check_deterministic("ddim", rm.model, x_T, eta=1.0).status == "pass"


def test_weak_order_and_convergence_of_a_stochastic_solver(vp):
    rm, _ = vp
    sched, t_end = rm.schedule, rm.schedule.default_t_end
    x_T = sched.prior_sample((20_000, 2), torch.Generator().manual_seed(1), dtype=F64)
    exact = rm.mixture.sample(200_000, torch.Generator().manual_seed(2), sched, t_end, dtype=F64)
    kw = {"log_prob": lambda x: rm.mixture.log_prob(x, sched, t_end), "exact": exact}
    curve = testing.error_curve("reverse_diffusion", rm.model, x_T, (10, 20, 40, 80), **kw)
    assert curve.kind == "weak" and all(e > 3 * s for e, s in zip(curve.errors, curve.stderr)), curve.table()
    assert testing.check_convergence("reverse_diffusion", rm.model, x_T, curve=curve).status == "pass"
    order = testing.check_order("reverse_diffusion", rm.model, x_T, curve=curve)
    assert order.check == "weak order" and 0.7 <= order.value <= 1.5, order
    with pytest.raises(ValueError, match="needs log_prob"):
        testing.error_curve("reverse_diffusion", rm.model, x_T)


def test_an_inconsistent_solver_fails_convergence(vp):
    rm, x_T = vp

    @solver("biased_euler", order=1, nfe_per_step=1)
    def biased_euler(model, x, grid):
        for s, t in zip(grid[:-1].tolist(), grid[1:].tolist()):
            x = x + (t - s) * 1.01 * model.ode_drift(x, s)  # converges to a different solution
        return x

    with pytest.raises(AssertionError, match="convergence  FAIL") as e:
        testing.check_convergence("biased_euler", rm.model, x_T, nfes=(15, 30, 60, 120, 240, 480))
    assert "the error stalls" in str(e.value)


def test_adaptive_solvers_converge_as_tolerances_tighten_and_batch_independence_is_na(vp):
    rm, x_T = vp
    outcomes = {o.check: o for o in testing.check_solver("rk45", rm.model, x_T)}
    assert outcomes["convergence"].status == "pass" and "as rtol=atol 0.001 → 1e-07" in outcomes["convergence"].detail
    assert outcomes["batch independence"].status == "n/a" and "by design" in outcomes["batch independence"].detail
    assert outcomes["order"].status == outcomes["exact NFE"].status == "n/a"
    assert outcomes["determinism"].status == outcomes["finite"].status == "pass"
    assert math.isfinite(outcomes["convergence"].value)


def test_pooled_weak_curves_average_the_biases_by_sample_count():
    from solvers.curves import pool, weak_errors

    a = weak_errors((10, 20), [0.4, -0.1], [0.02, 0.02], ("", ""), 100, 0.01)
    b = weak_errors((10, 20), [0.2, 0.1], [0.03, 0.03], ("", ""), 300, 0.01)
    both = pool(a, b)
    assert both.samples == 400 and both.errors == pytest.approx((0.25, 0.05))
    own = math.sqrt(100**2 * (0.02**2 - 0.01**2) + 300**2 * (0.03**2 - 0.01**2)) / 400
    assert both.stderr[0] == pytest.approx(math.hypot(own, 0.01))
    with pytest.raises(ValueError, match="same budgets"):
        pool(a, weak_errors((10, 40), [0.4, 0.1], [0.02, 0.02], ("", ""), 100, 0.01))


def test_an_adaptive_solver_without_tolerances_still_gets_its_other_checks(vp):
    rm, x_T = vp

    @solver("fixed_adaptive", order=1, adaptive=True)
    def fixed_adaptive(model, x, grid, *, steps: int = 20):
        times = torch.linspace(float(grid[0]), float(grid[-1]), steps + 1, dtype=F64)
        for s, t in zip(times[:-1].tolist(), times[1:].tolist()):
            x = x + (t - s) * model.ode_drift(x, s)
        return x, times

    outcomes = {o.check: o for o in testing.check_solver("fixed_adaptive", rm.model, x_T)}
    assert outcomes["convergence"].status == "n/a" and "no rtol/atol" in outcomes["convergence"].detail
    assert outcomes["determinism"].status == outcomes["finite"].status == "pass"
