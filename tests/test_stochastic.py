"""Stochastic samplers held to their numerics: convergence in distribution, weak order, exact NFE, reproducibility.

On the exact 2-D Gaussian mixture (gmm2d) the marginal at t_end is known, so a sampler's bias is
measured through E[log p_{t_end}(x)] and E|x|^2 against an exact draw of that marginal.
Run `python tests/test_stochastic.py` to print the biases (24, 100, 500 NFE) and Euler-Maruyama's weak-error ratio.
"""
import functools
import math

import pytest
import torch

from reference_models import make_schedule
from reference_models.registry import gmm2d
from solvers import (Model, SubVPSchedule, VESchedule, VPSchedule, get_solver, list_solvers, per_sample_generators,
                     sample)
from solvers.sde import forward_step, langevin_step

F64 = torch.float64
N_SAMPLES = 10_000  # statistical error of each mean about 0.01 (both statistics have std ~1 on gmm2d)
N_EXACT = 100_000
T_END = {"vp": 1e-3, "ve": 1e-5, "subvp": 1e-3}
CELLS = {"euler_maruyama": {}, "reverse_diffusion": {}, "pc": {}, "ddim": {"eta": 1.0}}
MAX_BIAS_LOGP, MAX_BIAS_X2 = 0.08, 0.1  # at 500 NFE (issue 3)


def _schedule(name):
    return SubVPSchedule() if name == "subvp" else make_schedule(name)


@functools.lru_cache(maxsize=None)
def exact_stats(schedule: str):
    """E log p_{t_end} and E|x|^2 of an exact draw of the marginal at t_end."""
    mix, sched = gmm2d(), _schedule(schedule)
    x = mix.sample(N_EXACT, torch.Generator().manual_seed(2), sched, T_END[schedule], dtype=F64)
    return float(mix.log_prob(x, sched, T_END[schedule]).mean()), float(x.pow(2).sum(1).mean())


@functools.lru_cache(maxsize=None)
def bias(schedule: str, solver: str, nfe: int, n: int = N_SAMPLES) -> tuple[float, float]:
    """(bias of E log p_{t_end}, bias of E|x|^2) of `solver` at `nfe` on a uniform grid, t from 1 to t_end."""
    mix, sched = gmm2d(), _schedule(schedule)
    model = mix.model(sched)
    x_T = sched.prior_sample((n, 2), torch.Generator().manual_seed(0), dtype=F64)
    x = sample(model, x_T, solver, nfe=nfe, t_start=1.0, t_end=T_END[schedule], timesteps="uniform",
               generator=torch.Generator().manual_seed(1), **CELLS[solver])
    assert model.nfe == nfe
    logp, x2 = exact_stats(schedule)
    return float(mix.log_prob(x, sched, T_END[schedule]).mean()) - logp, float(x.pow(2).sum(1).mean()) - x2


# --- convergence in distribution ----------------------------------------------------------


@pytest.mark.parametrize("solver", list(CELLS))
@pytest.mark.parametrize("schedule", ["vp", "ve"])
def test_converges_in_distribution(schedule, solver):
    """|bias| of E log p <= 0.08 and of E|x|^2 <= 0.1 at 500 NFE, and the bias at 24 NFE is larger."""
    logp_500, x2_500 = bias(schedule, solver, 500)
    logp_24, x2_24 = bias(schedule, solver, 24)
    assert abs(logp_500) <= MAX_BIAS_LOGP and abs(x2_500) <= MAX_BIAS_X2, (logp_500, x2_500)
    assert abs(logp_24) > abs(logp_500), (logp_24, logp_500)
    score = lambda lp, x2: max(abs(lp) / MAX_BIAS_LOGP, abs(x2) / MAX_BIAS_X2)  # noqa: E731
    assert score(logp_24, x2_24) > score(logp_500, x2_500)


def test_euler_maruyama_weak_order_one():
    """The weak error (bias of E log p, VP) falls at least 2.5x from 24 to 100 NFE; order 1 gives 100/24 = 4.2x."""
    ratio = abs(bias("vp", "euler_maruyama", 24)[0]) / abs(bias("vp", "euler_maruyama", 100)[0])
    assert ratio >= 2.5, ratio
    assert get_solver("euler_maruyama").order == 1


def test_euler_maruyama_converges_on_subvp():
    """sub-VP (g^2 = beta (1 - alpha^4)): the bias shrinks from 24 to 200 NFE and is small at 200."""
    logp_24, _ = bias("subvp", "euler_maruyama", 24, n=4000)
    logp_200, x2_200 = bias("subvp", "euler_maruyama", 200, n=4000)
    assert abs(logp_200) <= MAX_BIAS_LOGP and abs(x2_200) <= MAX_BIAS_X2, (logp_200, x2_200)
    assert abs(logp_24) > 2 * abs(logp_200), (logp_24, logp_200)


# --- the discretisation itself ------------------------------------------------------------


def test_forward_step_is_the_exact_transition():
    """VP: a^2 = 1 - beta_i, v = beta_i; VE: a = 1, v = sigma_hi^2 - sigma_lo^2; any: v = sigma_hi^2 - a^2 sigma_lo^2."""
    for sched in (VPSchedule.linear(), VPSchedule.cosine(), VESchedule(), SubVPSchedule()):
        for hi, lo in ((0.9, 0.1), (0.5, 0.49), (1e-3 + 1e-6, 1e-3)):
            hi = min(hi, sched.T)
            a, v = forward_step(sched, hi, lo)
            al_hi, al_lo = float(sched.alpha(hi)), float(sched.alpha(lo))
            s_hi, s_lo = float(sched.sigma(hi)), float(sched.sigma(lo))
            assert a == pytest.approx(al_hi / al_lo, rel=1e-12)
            assert v > 0 and v == pytest.approx(s_hi**2 - a * a * s_lo**2, rel=1e-9)
            if sched.kind == "vp":
                assert v == pytest.approx(1.0 - a * a, rel=1e-9)
            if sched.kind == "ve":
                assert a == 1.0 and v == pytest.approx(s_hi**2 - s_lo**2, rel=1e-9)


@pytest.mark.parametrize("schedule", ["vp", "ve", "subvp"])
def test_coarse_grids_stay_defined(schedule):
    model = gmm2d().model(_schedule(schedule))
    x_T = _schedule(schedule).prior_sample((64, 2), torch.Generator().manual_seed(0), dtype=F64)
    for solver in ("reverse_diffusion", "pc", "euler_maruyama", "ddim"):
        for nfe in (2, 4, 10):
            x = sample(model, x_T, solver, nfe=nfe, timesteps="uniform", generator=torch.Generator().manual_seed(1),
                       **CELLS[solver])
            assert torch.isfinite(x).all(), (solver, nfe)


@pytest.mark.parametrize("schedule", [VPSchedule.linear(), VESchedule()])
@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_ddim_noise_is_ddim_eq16(schedule, eta):
    """One DDIM step with eps = 0: x_t = (alpha_t/alpha_s) x_s + c z, c = DDIM's sigma (eq. 16) / VE's posterior std."""
    model = Model(lambda x, t: torch.zeros_like(x), schedule, prediction="eps")
    s, t = 0.6, 0.3
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    out = sample(model, x, "ddim", nfe=1, timesteps=torch.tensor([s, t]), eta=eta,
                 generator=torch.Generator().manual_seed(7))
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(7), dtype=F64)
    a_s, a_t = float(schedule.alpha(s)), float(schedule.alpha(t))
    sig_s, sig_t = float(schedule.sigma(s)), float(schedule.sigma(t))
    if schedule.kind == "vp":  # abar = alpha^2
        c = eta * math.sqrt((1 - a_t**2) / (1 - a_s**2) * (1 - a_s**2 / a_t**2))
    else:
        c = eta * sig_t * math.sqrt(sig_s**2 - sig_t**2) / sig_s
    assert torch.allclose(out, (a_t / a_s) * x + c * z, atol=1e-12)


def test_langevin_corrector_keeps_p_t_and_reaches_it():
    """Langevin steps alone at a fixed t (sigma rule) take a wrong start to p_t: bias of E log p_t small."""
    mix, sched, t = gmm2d(), VPSchedule.linear(), 0.3
    model = mix.model(sched)
    exact = mix.sample(N_EXACT, torch.Generator().manual_seed(2), sched, t, dtype=F64)
    gap = lambda x: float(mix.log_prob(x, sched, t).mean() - mix.log_prob(exact, sched, t).mean())  # noqa: E731
    x = 2.0 * torch.randn(2000, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert gap(x) < -1.0  # a wrong start
    gen = torch.Generator().manual_seed(1)
    for _ in range(200):
        x = langevin_step(model, x, t, snr=0.16, alpha=1.0, generator=gen)
    assert abs(gap(x)) < 0.05, gap(x)  # statistical error ~0.02


@pytest.mark.parametrize("step_size", ["sigma", "batch"])
def test_langevin_step_size_rules(step_size):
    """sigma: eps = 2 alpha (snr sigma_t)^2; batch: score_sde's 2 alpha (snr mean||z|| / mean||score||)^2."""
    mix, sched, t, snr, alpha = gmm2d(), VESchedule(), 0.2, 0.16, 0.9
    model = mix.model(sched, "score")
    x = mix.sample(6, torch.Generator().manual_seed(0), sched, t, dtype=F64)
    out = langevin_step(model, x, t, snr, alpha, step_size, generator=torch.Generator().manual_seed(3))
    z = torch.randn(6, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    score = mix.score(x, sched, t)
    if step_size == "sigma":
        eps = 2 * alpha * (snr * float(sched.sigma(t))) ** 2
    else:
        eps = 2 * alpha * (snr * float(z.norm(dim=1).mean()) / float(score.norm(dim=1).mean())) ** 2
    assert torch.allclose(out, x + eps * score + math.sqrt(2 * eps) * z, atol=1e-12)


# --- NFE and denoise_final ----------------------------------------------------------------


def _counting_model():
    """A VP gmm2d model that records the time of every evaluation."""
    mix, sched = gmm2d(), VPSchedule.linear()
    inner = mix.model(sched)
    times = []

    def fn(x, t):
        times.append(float(t[0]))
        return inner.fn(x, t)

    return Model(fn, sched), times


def test_nfe_is_exact_and_pc_counts_every_corrector():
    model, times = _counting_model()
    x_T = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    for solver in ("euler_maruyama", "reverse_diffusion", "ddim"):
        for nfe in range(1, 25):
            model.reset()
            sample(model, x_T, solver, nfe=nfe, generator=torch.Generator().manual_seed(1), **CELLS[solver])
            assert model.nfe == nfe, (solver, nfe)
    for c in (0, 1, 2, 3):
        for nfe in range(1, 25):
            model.reset()
            if nfe % (1 + c):
                with pytest.raises(ValueError, match=rf"divisible by {1 + c}.*valid budgets: multiples of 1 \+ corrector"):
                    sample(model, x_T, "pc", nfe=nfe, corrector_steps=c)
                continue
            times.clear()
            x, info = sample(model, x_T, "pc", nfe=nfe, corrector_steps=c, return_info=True,
                             generator=torch.Generator().manual_seed(1))
            assert model.nfe == info.nfe == nfe and info.steps == nfe // (1 + c)
            grid = info.grid.tolist()  # predictor at t_i, then c corrector evaluations at t_{i+1}
            expected = [u for i in range(info.steps) for u in [grid[i]] + [grid[i + 1]] * c]
            assert times == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("solver", list(CELLS))
def test_denoise_final_spends_one_evaluation_inside_the_budget(solver):
    model = gmm2d().model(VPSchedule.linear())
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    nfe = 9
    model.reset()
    x, info = sample(model, x_T, solver, nfe=nfe, timesteps="uniform", denoise_final=True, return_info=True,
                     generator=torch.Generator().manual_seed(1), **CELLS[solver])
    assert model.nfe == info.nfe == nfe
    plain = sample(model, x_T, solver, nfe=nfe - 1, timesteps="uniform",
                   generator=torch.Generator().manual_seed(1), **CELLS[solver])
    assert torch.equal(x, model.x0(plain, 1e-3))
    if solver == "pc":
        with pytest.raises(ValueError, match=r"divisible by 2.*plus 1 for denoise_final"):
            sample(model, x_T, solver, nfe=8, denoise_final=True)


# --- randomness ---------------------------------------------------------------------------


@pytest.mark.parametrize("solver", list(CELLS) + ["pc_em"])
def test_same_seed_same_samples_in_any_batch(solver):
    opts = {"predictor": "euler_maruyama", "corrector_steps": 2} if solver == "pc_em" else CELLS[solver]
    solver = "pc" if solver == "pc_em" else solver
    model = gmm2d().model(VPSchedule.linear())
    x_T = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    run = lambda x, gen: sample(model, x, solver, nfe=12, generator=gen, **opts)  # noqa: E731
    a = run(x_T, torch.Generator().manual_seed(3))
    assert torch.equal(a, run(x_T, torch.Generator().manual_seed(3)))
    assert not torch.allclose(a, run(x_T, torch.Generator().manual_seed(4)))
    torch.manual_seed(5)  # no generator: torch's global one
    g1 = run(x_T, None)
    torch.manual_seed(5)
    assert torch.equal(g1, run(x_T, None))
    # one generator per sample: a sample is the same whatever batch it is drawn in
    seeds = list(range(100, 108))
    full = run(x_T, per_sample_generators(seeds))
    idx = [5, 2, 7]
    other = torch.randn(2, 2, generator=torch.Generator().manual_seed(9), dtype=F64)
    part = run(torch.cat([x_T[idx], other]), per_sample_generators([seeds[i] for i in idx] + [900, 901]))
    assert torch.allclose(part[:3], full[idx], rtol=0, atol=1e-12)


def test_registry_declares_stochastic_solvers():
    for name in ("euler_maruyama", "reverse_diffusion", "pc"):
        spec = get_solver(name)
        assert spec.kind == "sde" and spec.order == 1 and spec.default_grid == "uniform" and spec.stochastic()
    assert set(list_solvers("sde")) >= {"euler_maruyama", "reverse_diffusion", "pc"}
    ddim = get_solver("ddim")
    assert ddim.kind == "ode" and not ddim.stochastic() and not ddim.stochastic({"eta": 0.0})
    assert ddim.stochastic({"eta": 1.0}) and ddim.stochastic({"eta": 0.3})
    assert not any(get_solver(n).stochastic() for n in list_solvers("ode"))


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize("solver, options, message", [
    ("ddim", {"eta": -0.5}, r"eta must be a finite number >= 0"),
    ("ddim", {"eta": float("nan")}, r"eta must be"),
    ("pc", {"snr": 0.0}, r"snr must be a finite number > 0"),
    ("pc", {"snr": -0.1}, r"snr must be"),
    ("pc", {"predictor": "heun"}, r"unknown predictor 'heun'; valid: reverse_diffusion, euler_maruyama"),
    ("pc", {"corrector_steps": -1}, r"corrector_steps must be an integer >= 0"),
    ("pc", {"corrector_steps": 1.5}, r"corrector_steps must be an integer"),
    ("pc", {"step_size": "sample"}, r"unknown step_size 'sample'; valid: sigma, batch"),
    ("euler_maruyama", {"snr": 0.1}, r"unknown option\(s\) snr for solver 'euler_maruyama'; valid options: none"),
    ("reverse_diffusion", {"eta": 1.0}, r"unknown option\(s\) eta"),
])
def test_bad_options_are_clear_errors(solver, options, message):
    model = gmm2d().model(VPSchedule.linear())
    with pytest.raises(ValueError, match=message):
        sample(model, torch.zeros(2, 2, dtype=F64), solver, nfe=10, **options)


# --- the numbers, printed ------------------------------------------------------------------


def main():
    """Print the bias table (VP and VE, 24 / 100 / 500 NFE) and Euler-Maruyama's weak-error ratio."""
    print(f"bias = sampler - exact draw of p_t_end on gmm2d, uniform grid, {N_SAMPLES} samples (stat. error ~0.01)")
    print(f"{'schedule':8s} {'solver':18s} {'NFE':>4s} {'bias E log p':>13s} {'bias E|x|^2':>12s}")
    for schedule in ("vp", "ve"):
        for solver in CELLS:
            for nfe in (24, 100, 500):
                lp, x2 = bias(schedule, solver, nfe)
                print(f"{schedule:8s} {solver:18s} {nfe:4d} {lp:+13.4f} {x2:+12.4f}", flush=True)
    for schedule in ("vp", "ve"):
        (lp24, x24), (lp100, x100) = bias(schedule, "euler_maruyama", 24), bias(schedule, "euler_maruyama", 100)
        print(f"euler_maruyama weak-error ratio 24 -> 100 NFE ({schedule}): E log p {abs(lp24 / lp100):.2f}x, "
              f"E|x|^2 {abs(x24 / x100):.2f}x (first order: {100 / 24:.2f}x)")


if __name__ == "__main__":
    main()
