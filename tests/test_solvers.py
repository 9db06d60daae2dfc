"""Deterministic solvers held to their numerics: measured orders, equivalences, exact NFE, bad input.

Orders, exact NFE and batch independence go through solvers.testing, the functions of `bench check`.
Run `python tests/test_solvers.py` to print the measured order of every ODE solver.
"""
import math

import pytest
import torch

from reference_models import GaussianMixture
from solvers import (Model, ModelOutputError, VESchedule, VPSchedule, get_solver, list_solvers, reference_solution,
                     sample, testing)

F64 = torch.float64
NFES = [40, 80, 160, 320, 640]
FIXED_ODE = [n for n in list_solvers("ode") if not get_solver(n).adaptive]


def mixture_2d() -> GaussianMixture:
    """Four unequal modes with variances 0.05-0.25: the convergence test problem."""
    ang = torch.arange(4, dtype=F64) * math.pi / 2
    means = 1.5 * torch.stack([torch.cos(ang), torch.sin(ang)], 1)
    return GaussianMixture(means, torch.tensor([0.05, 0.1, 0.15, 0.25]), weights=[0.1, 0.2, 0.3, 0.4])


@pytest.fixture(scope="module")
def problem():
    model = mixture_2d().model(VPSchedule.linear())
    x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    ref = reference_solution(model, x_T, 1.0, 1e-3, rtol=1e-11, atol=1e-11)
    return model, x_T, ref


def rmse(x, ref):
    return float((x - ref).pow(2).sum(1).mean().sqrt())


def error_curve(model, x_T, ref, solver, nfes=NFES) -> testing.Curve:
    """RMSE against `ref` at `nfes` on the logsnr grid, t from 1 to 1e-3 (solvers.testing.error_curve)."""
    return testing.error_curve(solver, model, x_T, nfes, reference=ref, t_start=1.0, t_end=1e-3, timesteps="logsnr")


@pytest.fixture(scope="module")
def curves(problem):
    return {name: error_curve(*problem, name) for name in FIXED_ODE}


@pytest.mark.parametrize("name", FIXED_ODE)
def test_measured_order_matches_declared(problem, curves, name):
    """The order fitted by the one rule lies in [p - 0.3, p + 0.5] (solvers.testing.check_order raises if not)."""
    outcome = testing.check_order(name, problem[0], problem[1], curve=curves[name])
    assert outcome.status == "pass" and outcome.data["fit"].nfe[-1] == NFES[-1]


def test_dpm_solver_3m_beats_2m_at_every_budget(curves):
    assert all(e3 < e2 for e3, e2 in zip(curves["dpm_solver_3m"].errors, curves["dpm_solver_2m"].errors))


def test_ddim_equals_dpm_solver_1(problem):
    model, x_T, _ = problem
    for grid in ("logsnr", "uniform", "quadratic"):
        a = sample(model, x_T, "ddim", nfe=17, timesteps=grid)
        b = sample(model, x_T, "dpm_solver_1", nfe=17, timesteps=grid)
        assert torch.max(torch.abs(a - b)) < 1e-10


def test_rk45_matches_dop853_reference(problem):
    model, x_T, ref = problem
    model.reset()
    x, info = sample(model, x_T, "rk45", t_start=1.0, t_end=1e-3, rtol=1e-8, atol=1e-8, return_info=True)
    assert torch.max(torch.abs(x - ref)) < 1e-5
    assert info.nfe == model.nfe > 0


def test_dpm_solver_adaptive_default_tolerances(problem):
    model, x_T, ref = problem
    model.reset()
    x, info = sample(model, x_T, "dpm_solver_adaptive", t_start=1.0, t_end=1e-3, return_info=True)
    assert rmse(x, ref) < 1e-2
    assert info.nfe == model.nfe > 0 and info.steps >= 1
    assert float(info.grid[-1]) == 1e-3
    # A tighter tolerance spends more evaluations and is more accurate.
    x2, info2 = sample(model, x_T, "dpm_solver_adaptive", t_start=1.0, t_end=1e-3, rtol=1e-3, atol=1e-4,
                       return_info=True)
    assert info2.nfe > info.nfe and rmse(x2, ref) < rmse(x, ref)


def test_dpm_solver_orders_converge_on_ve():
    model = mixture_2d().model(VESchedule())
    x_T = 50.0 * torch.randn(64, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    ref = reference_solution(model, x_T, 1.0, 1e-5, rtol=1e-11, atol=1e-11)
    nfes = [60, 120, 240]
    for name, lo in (("dpm_solver_2", 1.7), ("dpm_solver_3", 2.6)):
        result = testing.measure_order(name, model, x_T, nfes, reference=ref, t_end=1e-5)
        assert result.order >= lo, (name, result)


# --- NFE ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in list_solvers() if not get_solver(n).adaptive])
def test_nfe_is_exact_for_every_fixed_step_solver(name):
    """Counted from calls, at every budget 1..60; budgets a solver cannot use: a ValueError naming the valid ones."""
    model = mixture_2d().model(VPSchedule.linear())
    x_T = torch.randn(2, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    spec = get_solver(name)
    budgets = spec.budgets(range(1, 61))
    per = spec.evaluations_per_step()
    if per is not None:  # the declared NFE per step, held against the budget rule
        assert budgets == list(range(per, 61, per)), (name, budgets)
    outcome = testing.check_exact_nfe(name, model, x_T, range(1, 61))
    assert outcome.status == "pass" and outcome.detail.startswith(f"{len(budgets)} budgets of 1–60 spent exactly")


def test_budgets_of_adaptive_and_with_bad_options():
    assert get_solver("rk45").budgets(range(1, 61)) == []
    assert get_solver("heun").budgets([7, 10, 0, 3, 8]) == [10, 8]  # those it spends exactly, in the order given
    with pytest.raises(ValueError, match="unknown option.*valid options: eta"):
        get_solver("ddim").budgets([10], {"rho": 7})


def test_singlestep_split_matches_reference_dpm_solver():
    from solvers.dpm import singlestep_orders

    assert singlestep_orders(3, 9) == [3, 3, 2, 1]
    assert singlestep_orders(3, 10) == [3, 3, 3, 1]
    assert singlestep_orders(3, 11) == [3, 3, 3, 2]
    assert singlestep_orders(2, 7) == [2, 2, 2, 1]
    for nfe in range(1, 40):
        for order in (1, 2, 3):
            split = singlestep_orders(order, nfe)
            assert sum(split) == nfe
    assert len(singlestep_orders(3, 12)) == 12 // 3 + 1


# --- model interface ----------------------------------------------------------------------


@pytest.mark.parametrize("schedule", [VPSchedule.linear(), VPSchedule.cosine(), VESchedule()])
def test_prediction_kinds_give_the_same_forms(schedule):
    mix = mixture_2d()
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    models = {p: mix.model(schedule, p) for p in ("eps", "score", "x0", "v")}
    for t in (0.9, 0.3, 0.01):
        base = models["eps"]
        for m in models.values():
            assert torch.allclose(m.eps(x, t), base.eps(x, t), rtol=1e-9, atol=1e-9)
            assert torch.allclose(m.x0(x, t), base.x0(x, t), rtol=1e-9, atol=1e-9)
            assert torch.allclose(m.score(x, t), base.score(x, t), rtol=1e-9, atol=1e-9)
    ref = sample(models["eps"], x, "dpm_solver_3", nfe=15)
    for m in models.values():
        assert torch.allclose(sample(m, x, "dpm_solver_3", nfe=15), ref, atol=1e-8)


def test_score_matches_log_density_gradient():
    mix, sched = mixture_2d(), VPSchedule.linear()
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(4), dtype=F64).requires_grad_(True)
    logp = mix.log_prob(x, sched, 0.2).sum()
    (grad,) = torch.autograd.grad(logp, x)
    assert torch.allclose(mix.model(sched, "score").score(x.detach(), 0.2), grad, atol=1e-10)


def test_float32_and_batch_independence(problem):
    model, x_T, _ = problem
    for name in FIXED_ODE:
        assert testing.check_batch_independent(name, model, x_T[:32], nfe=12).status == "pass"
        full = sample(model, x_T[:32], name, nfe=12)
        x32 = sample(model, x_T[:32].float(), name, nfe=12)
        assert x32.dtype == torch.float32 and x32.shape == (32, 2)
        assert torch.allclose(x32.double(), full, atol=1e-4), name


def test_output_keeps_shape_of_x_T():
    mix = GaussianMixture(torch.zeros(2, 64, dtype=F64), torch.tensor([0.5, 1.0]), shape=(1, 8, 8))
    model = mix.model(VPSchedule.linear())
    x_T = torch.randn(3, 1, 8, 8, dtype=F64)
    for name in list_solvers():
        spec = get_solver(name)
        out = sample(model, x_T, name, nfe=None if spec.adaptive else 10)
        assert out.shape == x_T.shape and torch.isfinite(out).all(), name


# --- bad input ----------------------------------------------------------------------------


@pytest.fixture
def small():
    model = mixture_2d().model(VPSchedule.linear())
    return model, torch.randn(4, 2, dtype=F64)


def test_unknown_solver_lists_valid_names(small):
    with pytest.raises(ValueError, match="dpm_solver_3.*heun|heun.*dpm_solver_3"):
        sample(*small, "dpm_solver_4", nfe=10)


def test_unknown_option_is_an_error(small):
    with pytest.raises(ValueError, match="unknown option.*order_final.*valid options: lower_order_final"):
        sample(*small, "dpm_solver_3m", nfe=10, order_final=True)
    with pytest.raises(ValueError, match="valid options: none"):
        sample(*small, "heun", nfe=10, rho=7)


@pytest.mark.parametrize("nfe", [0, -3, 2.5, "10", True])
def test_nfe_must_be_a_positive_integer(small, nfe):
    with pytest.raises(ValueError, match="positive integer"):
        sample(*small, "euler", nfe=nfe)


def test_heun_odd_budget_names_valid_values(small):
    with pytest.raises(ValueError, match="even positive integers"):
        sample(*small, "heun", nfe=7)


def test_adaptive_solver_rejects_nfe(small):
    with pytest.raises(ValueError, match="tolerances"):
        sample(*small, "rk45", nfe=10)


def test_t_end_not_below_t_start_is_an_error(small):
    with pytest.raises(ValueError, match="t_end < t_start"):
        sample(*small, "ddim", nfe=5, t_start=0.5, t_end=0.5)


def test_nan_from_model_names_time_and_step(small):
    _, x = small
    model = Model(lambda x, t: torch.where(t[:, None] < 0.5, float("nan"), 0.0) * x, VPSchedule.linear())
    with pytest.raises(ModelOutputError, match=r"dpm_solver_2, step \d+ of 5: model returned NaN/Inf .*t=0\.[0-4]"):
        sample(model, x, "dpm_solver_2", nfe=10, timesteps="uniform")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_output_check_finds_one_bad_value_and_passes_sums_that_overflow(dtype, bad):
    """The check sums the output (a NaN/Inf makes the sum non-finite) and only then looks value by value: a single
    bad value is caught, and finite outputs whose sum overflows (256 values at 0.9 x the float32/float64 maximum;
    float16 is summed in float32, where it does not) are not."""
    big = torch.full((64, 4), torch.finfo(dtype).max * 0.9, dtype=dtype)
    model = Model(lambda x, t: big, VPSchedule.linear())
    assert torch.equal(model.raw(torch.zeros(64, 4, dtype=dtype), 0.5), big)
    one_bad = big.clone()
    one_bad[37, 2] = bad
    model = Model(lambda x, t: one_bad, VPSchedule.linear())
    with pytest.raises(ModelOutputError, match="NaN/Inf"):
        model.raw(torch.zeros(64, 4, dtype=dtype), 0.5)


def test_wrong_output_shape_is_an_error(small):
    _, x = small
    model = Model(lambda x, t: x[:, :1], VPSchedule.linear())
    with pytest.raises(ModelOutputError, match=r"shape \(4, 1\), expected \(4, 2\)"):
        sample(model, x, "euler", nfe=3)


def test_invalid_model_arguments():
    with pytest.raises(ValueError, match="eps, score, x0, v"):
        Model(lambda x, t: x, VPSchedule.linear(), prediction="noise")
    with pytest.raises(TypeError):
        Model(lambda x, t: x, "vp")


if __name__ == "__main__":
    model = mixture_2d().model(VPSchedule.linear())
    x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    ref = reference_solution(model, x_T, 1.0, 1e-3, rtol=1e-11, atol=1e-11)
    print(f"{'solver':16s} declared  measured  RMSE at NFE {NFES}")
    for name in FIXED_ODE:
        curve = error_curve(model, x_T, ref, name)
        result = testing.measure_order(name, model, x_T, curve=curve)
        errors = " ".join(f"{e:.2e}" for e in curve.errors)
        print(f"{name:16s} {get_solver(name).order:8g}  {result.order:8.3f}  {errors}")


def test_readme_name_map_has_a_row_for_every_solver():
    """The README's map to k-diffusion, diffusers and ComfyUI names covers every registered solver."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("### The same solvers under other names", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    named = {re.match(r"\| `([a-z0-9_]+)", line).group(1) for line in rows}
    assert set(list_solvers()) <= named, sorted(set(list_solvers()) - named)
