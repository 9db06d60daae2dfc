"""DPM-Solver++ (dpmpp_2s, dpmpp_2m, dpmpp_3m) and the exponential-integrator vocabulary they share.

Orders on the exact mixture (VP and VE), order 1 = ddim, the phi-functions and the history against exact
values, and equivalence with diffusers' DPMSolverMultistepScheduler on the wrapped DDPM chain.
Exact NFE, finite output and batch independence: the parametrized tests of tests/test_solvers.py.
dpmpp_2s has no diffusers equal: DPMSolverSinglestepScheduler puts a 2nd-order step's intermediate point on the
next timestep (r = h_0 / h from its grid), ours on the lambda-midpoint (r = 1/2, the paper's choice).
"""
import math
from decimal import Decimal, getcontext

import numpy as np
import pytest
import torch
from test_solvers import NFES, mixture_2d

from reference_models import load
from solvers import (
    VESchedule,
    VPSchedule,
    get_solver,
    make_grid,
    reference_solution,
    sample,
    testing,
)
from solvers.exponential import PHI, History, data_step, phi_1, phi_2, phi_3, phi_4

F64 = torch.float64


@pytest.fixture(scope="module", params=["vp", "ve"])
def problem(request):
    """The convergence test problem of tests/test_solvers.py, on VP (t_end 1e-3) and VE (t_end 1e-5)."""
    if request.param == "vp":
        model, t_end = mixture_2d().model(VPSchedule.linear()), 1e-3
        x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    else:
        model, t_end = mixture_2d().model(VESchedule()), 1e-5
        x_T = 50.0 * torch.randn(64, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    return model, x_T, reference_solution(model, x_T, 1.0, t_end, rtol=1e-11, atol=1e-11), t_end


def _curve(problem, name, **options):
    model, x_T, ref, t_end = problem
    return testing.error_curve(name, model, x_T, NFES, reference=ref, t_start=1.0, t_end=t_end, timesteps="logsnr",
                               **options)


@pytest.mark.parametrize("name, options", [("dpmpp_2s", {}), ("dpmpp_2m", {}), ("dpmpp_3m", {}),
                                           ("dpmpp_3m", {"start": "singlestep"})])
def test_order_in_band_of_declared(problem, name, options):
    """Measured 1.83/1.95 (2s), 1.98/2.01 (2m), 2.94/3.04 (3m), 2.96/3.06 (3m singlestep start) on VP/VE."""
    curve = _curve(problem, name, **options)
    outcome = testing.check_order(name, problem[0], problem[1], curve=curve, **options)
    assert outcome.status == "pass" and outcome.data["fit"].nfe[-1] == NFES[-1], outcome.detail


def test_halved_curvature_is_second_order(problem):
    """DPM-Solver's code, diffusers and k-diffusion halve the x0'' term: exact for linear x0 only, so order ~2.1,
    where the Taylor term of eq. 10 gives order 3 and an 8-20x smaller error at NFE 640."""
    half, taylor = _curve(problem, "dpmpp_3m", curvature="half"), _curve(problem, "dpmpp_3m")
    assert 1.8 < testing.measure_order("dpmpp_3m", problem[0], problem[1], curve=half).order < 2.4
    assert taylor.errors[-1] < 0.2 * half.errors[-1]


@pytest.mark.parametrize("schedule", [VPSchedule.linear(), VESchedule()], ids=["vp", "ve"])
def test_first_order_steps_equal_ddim(schedule):
    """Every data-prediction update at order 1 is DDIM (float64, 1e-10): 1-step runs, and 2-step runs of the
    multistep solvers (lower_order_final: 1st order at both steps below 10 steps)."""
    model = mixture_2d().model(schedule)
    x_T = schedule.prior_std * torch.randn(16, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    t_end = schedule.default_t_end
    for steps in (1, 2):
        grid = make_grid(schedule, "logsnr", steps, 1.0, t_end)
        ddim = sample(model, x_T, "ddim", nfe=steps, timesteps=grid)
        runs = [("dpmpp_2m", {}), ("dpmpp_3m", {}), ("dpmpp_3m", {"curvature": "half"})]
        runs += [("dpmpp_2s", {}), ("dpmpp_3m", {"start": "singlestep"})] if steps == 1 else []
        for name, opts in runs:
            x = sample(model, x_T, name, nfe=steps, timesteps=grid, **opts)
            assert torch.max(torch.abs(x - ddim)) < 1e-10, (name, opts, steps)
    grid = make_grid(schedule, "logsnr", 3, 1.0, t_end)  # not vacuous: a 2nd-order step differs from DDIM
    assert torch.max(torch.abs(sample(model, x_T, "dpmpp_2m", nfe=3, timesteps=grid, lower_order_final=False)
                               - sample(model, x_T, "ddim", nfe=3, timesteps=grid))) > 1e-3


def test_lower_order_start_is_the_more_accurate_at_nfe_5_to_20():
    """The default start, decided by measurement (README): on gmm2d (VP) the 2S start's coarser grid (nfe - 1 steps)
    costs more than its better first step; singlestep error / lower_order error, median over NFE 5-20 = 1.17."""
    ref_model = load("gmm2d", "vp")
    model, sched = ref_model.model, ref_model.model.schedule
    x_T = sched.prior_sample((256, *ref_model.shape), generator=torch.Generator().manual_seed(0), dtype=F64)
    ref = reference_solution(model, x_T, sched.T, sched.default_t_end, rtol=1e-10, atol=1e-10)

    def rmse(n, start):
        return float((sample(model, x_T, "dpmpp_3m", nfe=n, start=start) - ref).pow(2).sum(1).mean().sqrt())

    ratios = [rmse(n, "singlestep") / rmse(n, "lower_order") for n in range(5, 21)]
    assert get_solver("dpmpp_3m").options["start"] == "lower_order"
    assert float(np.median(ratios)) > 1.05 and sum(r > 1 for r in ratios) >= 12, ratios


def test_singlestep_start_spends_the_budget_on_one_step_fewer():
    spec = get_solver("dpmpp_3m")
    assert [spec.steps(n, {"start": "singlestep"}) for n in (1, 2, 3, 10)] == [1, 1, 2, 9]
    assert [spec.steps(n) for n in (1, 2, 10)] == [1, 2, 10]
    assert [get_solver("dpmpp_2s").steps(n) for n in (1, 2, 3, 10, 11)] == [1, 1, 2, 5, 6]
    model = mixture_2d().model(VPSchedule.linear())
    x_T = torch.randn(2, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    outcome = testing.check_exact_nfe("dpmpp_3m", model, x_T, range(1, 61), start="singlestep")
    assert outcome.status == "pass" and outcome.detail.startswith("60 budgets of 1–60 spent exactly")


@pytest.mark.parametrize("option, value, valid", [("start", "warmup", "lower_order, singlestep"),
                                                  ("curvature", "full", "taylor, half")])
def test_bad_option_names_the_valid_choices(option, value, valid):
    model = mixture_2d().model(VPSchedule.linear())
    with pytest.raises(ValueError, match=f"^{option} must be one of {valid}, got '{value}'$"):
        sample(model, torch.zeros(2, 2, dtype=F64), "dpmpp_3m", nfe=5, **{option: value})


# --- the vocabulary ---------------------------------------------------------------------------------------------


def _phi_exact(k: int, z: float) -> float:
    """phi_k(z) = (e^z - sum_{j<k} z^j / j!) / z^k in 50-digit decimals."""
    getcontext().prec = 50
    d = Decimal(z)
    rest = d.exp() - sum(d**j / math.factorial(j) for j in range(k))
    return float(rest / d**k)


@pytest.mark.parametrize("z", [-20.0, -4.0, -1.01, -1.0, -0.99, -0.5, -0.1, -1e-4, -1e-9, 1e-7, 0.3, 1.0, 2.0])
def test_phi_functions_to_machine_precision(z):
    for k, phi in ((1, phi_1), (2, phi_2), (3, phi_3)):
        assert abs(phi(z) - _phi_exact(k, z)) <= 2e-15 * abs(_phi_exact(k, z)), (k, z)
    assert (phi_1(0.0), phi_2(0.0), phi_3(0.0)) == (1.0, 0.5, 1.0 / 6.0) and PHI[1:] == (phi_1, phi_2, phi_3, phi_4)


def test_history_derivatives_exact_for_a_parabola_on_uneven_lambdas():
    def f(lam):
        return torch.tensor([3.0 - 2.0 * lam + 0.75 * lam**2], dtype=F64)

    hist = History(3)
    for lam in (-4.0, -3.1, -2.5, -2.2):  # the oldest falls out
        hist.push(lam, f(lam))
    assert len(hist) == 3 and hist.lams == [-3.1, -2.5, -2.2]
    d1, d2 = hist.derivatives(3)
    assert abs(float(d1) - (-2.0 + 1.5 * -2.2)) < 1e-13 and abs(float(d2) - 1.5) < 1e-13
    (b,) = hist.derivatives(2)  # the backward difference
    assert abs(float(b) - float((f(-2.2) - f(-2.5)) / 0.3)) < 1e-13 and hist.derivatives(1) == ()
    with pytest.raises(ValueError, match="order must be 1 to 3"):
        hist.derivatives(4)


@pytest.mark.parametrize("schedule", [VPSchedule.linear(), VESchedule()], ids=["vp", "ve"])
def test_data_step_is_exact_when_x0_is_a_parabola_in_lambda(schedule):
    """x_t = (sigma_t/sigma_s) x_s + sigma_t int e^lambda x0(lambda) dlambda, by 40-point Gauss-Legendre: eq. 10
    truncated after x0'' is exact for a quadratic x0 (the halved term is not)."""
    s, t = schedule.at(0.7), schedule.at(0.2)
    a, b, c = 0.4, -1.3, 0.9  # x0(lambda) = a + b u + c u^2 / 2, u = lambda - lambda_s
    nodes, weights = np.polynomial.legendre.leggauss(40)
    h = t.lam - s.lam
    u = 0.5 * h * (nodes + 1.0)
    integral = 0.5 * h * float(np.sum(weights * np.exp(s.lam + u) * (a + b * u + 0.5 * c * u * u)))
    x_s = torch.tensor([1.7], dtype=F64)
    exact = t.sigma / s.sigma * 1.7 + t.sigma * integral
    x0, d = torch.tensor([a], dtype=F64), (torch.tensor([b], dtype=F64), torch.tensor([c], dtype=F64))
    assert abs(float(data_step(x_s, s, t, x0, d)) - exact) < 1e-12 * max(1.0, abs(exact))
    assert abs(float(data_step(x_s, s, t, x0, (d[0], 0.5 * d[1]))) - exact) > 1e-3 * abs(c) * t.alpha


# --- diffusers --------------------------------------------------------------------------------------------------


@pytest.fixture
def chain(diffusers_chain):
    """diffusers' DPMSolverMultistepScheduler (dpmsolver++) on the wrapped DDPM chain (tests/conftest.py)."""
    model, x_T, run = diffusers_chain

    def diffusers_run(order: int, nfe: int, lower_order_final: bool = True):
        return run("DPMSolverMultistepScheduler", nfe, solver_order=order, algorithm_type="dpmsolver++",
                   final_sigmas_type="sigma_min", lower_order_final=lower_order_final)

    return model, x_T, diffusers_run


@pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers")
@pytest.mark.parametrize("ours, order, options", [("dpmpp_2m", 2, {}), ("dpmpp_3m", 3, {"curvature": "half"})])
@pytest.mark.parametrize("nfe", [5, 8, 20, 50])
@pytest.mark.parametrize("lower_order_final", [True, False])
def test_equals_diffusers_multistep_on_its_timesteps(chain, ours, order, options, nfe, lower_order_final):
    """1e-4 asked; 1.5e-6 (2m) and 1.1e-5 (3m) seen: diffusers steps in float32."""
    model, x_T, diffusers_run = chain
    theirs, times = diffusers_run(order, nfe, lower_order_final)
    x = sample(model, x_T, ours, nfe=nfe, timesteps=times, lower_order_final=lower_order_final, **options)
    assert (x - theirs).abs().max() < 1e-4


@pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers")
def test_conventions_that_differ_from_diffusers(chain):
    """lower_order_final lowers the last orders below 10 steps here (DPM-Solver's rule), below 15 in diffusers:
    at 12 steps ours is diffusers without it. The default Taylor x0'' term is not diffusers' halved one."""
    model, x_T, diffusers_run = chain
    for ours, order, opts in (("dpmpp_2m", 2, {}), ("dpmpp_3m", 3, {"curvature": "half"})):
        plain, times = diffusers_run(order, 12, lower_order_final=False)
        lowered, _ = diffusers_run(order, 12, lower_order_final=True)
        x = sample(model, x_T, ours, nfe=12, timesteps=times, lower_order_final=True, **opts)
        assert (x - plain).abs().max() < 1e-4 and (x - lowered).abs().max() > 1e-2, ours
    theirs, times = diffusers_run(3, 20)
    assert (sample(model, x_T, "dpmpp_3m", nfe=20, timesteps=times) - theirs).abs().max() > 1e-2
