"""Noise schedules and time grids: identities, inverses, SDE coefficients, validation."""
import math

import pytest
import torch

from solvers import GRIDS, SubVPSchedule, VESchedule, VPSchedule, make_grid

F64 = torch.float64
DDPM_BETAS = torch.linspace(1e-4, 0.02, 1000, dtype=F64)

SCHEDULES = {
    "vp_linear": VPSchedule.linear(),
    "vp_cosine": VPSchedule.cosine(),
    "vp_discrete": VPSchedule.discrete(DDPM_BETAS),
    "subvp": SubVPSchedule(),
    "ve": VESchedule(),
}


def _times(s):
    return torch.linspace(s.default_t_end, s.T, 257, dtype=F64)


@pytest.mark.parametrize("name", ["vp_linear", "vp_cosine", "vp_discrete"])
def test_vp_is_variance_preserving(name):
    s = SCHEDULES[name]
    t = _times(s)
    assert torch.allclose(s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones_like(t), atol=1e-14, rtol=0)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_lambda_inverse_round_trips(name):
    s = SCHEDULES[name]
    t = _times(s)
    assert torch.max(torch.abs(s.t_of_lambda(s.lambda_(t)) - t)) < 1e-9
    lam = s.lambda_(t)
    assert torch.all(lam[1:] < lam[:-1]), "lambda must decrease in t"


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_sde_coefficients_match_marginals(name):
    """f = d log alpha / dt and g^2 = d sigma^2/dt - 2 f sigma^2 (the forward SDE's moment equations)."""
    s = SCHEDULES[name]
    t = torch.linspace(0.05, s.T - 0.05, 41, dtype=F64)
    if name == "vp_discrete":  # piecewise linear log alpha: differentiate inside a segment
        t = (torch.arange(50, 950, 23, dtype=F64) + 1.5) / 1000
    h = 1e-6
    dlog_alpha = (s.log_alpha(t + h) - s.log_alpha(t - h)) / (2 * h)
    dvar = (s.sigma(t + h) ** 2 - s.sigma(t - h) ** 2) / (2 * h)
    assert torch.allclose(s.f(t), dlog_alpha, rtol=1e-6, atol=1e-8)
    assert torch.allclose(s.g2(t), dvar - 2 * s.f(t) * s.sigma(t) ** 2, rtol=1e-5, atol=1e-8)


def test_discrete_matches_cumulative_product_of_betas():
    s = SCHEDULES["vp_discrete"]
    n = torch.arange(1000)
    t_n = (n + 1).to(F64) / 1000
    alphas_cumprod = torch.cumprod(1 - DDPM_BETAS, 0)
    assert torch.allclose(s.alpha(t_n) ** 2, alphas_cumprod, rtol=1e-12, atol=0)


def test_ve_sigma_is_geometric():
    s = VESchedule(sigma_min=0.01, sigma_max=50)
    assert float(s.sigma(0.0)) == pytest.approx(0.01, rel=1e-14)
    assert float(s.sigma(1.0)) == pytest.approx(50.0, rel=1e-14)
    assert float(s.sigma(0.5)) == pytest.approx(math.sqrt(0.01 * 50), rel=1e-14)
    assert float(s.alpha(0.3)) == 1.0 and s.prior_std == 50.0


def test_vp_linear_matches_score_sde_marginal():
    s = VPSchedule.linear(0.1, 20.0)
    t = 0.37
    log_mean = -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1
    assert float(s.alpha(t)) == pytest.approx(math.exp(log_mean), rel=1e-14)
    assert float(s.g2(t)) == pytest.approx(0.1 + t * 19.9, rel=1e-14)


@pytest.mark.parametrize("bad", [
    lambda: VPSchedule.linear(0.0, 20.0),
    lambda: VPSchedule.linear(20.0, 0.1),
    lambda: VPSchedule.cosine(T=1.0),
    lambda: VPSchedule.discrete([0.1]),
    lambda: VPSchedule.discrete([0.1, 1.5]),
    lambda: VESchedule(sigma_min=50, sigma_max=0.01),
    lambda: VESchedule(sigma_min=-1.0),
])
def test_invalid_schedule_arguments_are_rejected(bad):
    with pytest.raises(ValueError):
        bad()


# --- grids --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(GRIDS))
@pytest.mark.parametrize("name", ["vp_linear", "ve"])
def test_grids_are_float64_decreasing_with_exact_ends(kind, name):
    s = SCHEDULES[name]
    g = make_grid(s, kind, 10, 1.0, s.default_t_end)
    assert g.dtype == F64 and g.shape == (11,)
    assert float(g[0]) == 1.0 and float(g[-1]) == s.default_t_end
    assert torch.all(g[1:] < g[:-1])


def test_logsnr_grid_is_uniform_in_lambda():
    s = SCHEDULES["vp_linear"]
    lam = s.lambda_(make_grid(s, "logsnr", 12, 1.0, 1e-3))
    assert torch.allclose(torch.diff(lam), torch.full((12,), float(lam[-1] - lam[0]) / 12, dtype=F64), atol=1e-9)


def test_karras_grid_follows_edm_rho_7():
    s = SCHEDULES["ve"]  # alpha = 1: sigma/alpha = sigma
    g = make_grid(s, "karras", 8, 1.0, 1e-5)
    smax, smin = float(s.sigma(1.0)), float(s.sigma(1e-5))
    i = torch.arange(9, dtype=F64) / 8
    expect = (smax ** (1 / 7) + i * (smin ** (1 / 7) - smax ** (1 / 7))) ** 7
    assert torch.allclose(s.sigma(g), expect, rtol=1e-10)


def test_explicit_grid_is_validated():
    s = SCHEDULES["vp_linear"]
    assert torch.equal(make_grid(s, [1.0, 0.5, 0.1], 2, 1.0, 0.1), torch.tensor([1.0, 0.5, 0.1], dtype=F64))
    with pytest.raises(ValueError, match="strictly decreasing"):
        make_grid(s, [1.0, 0.1, 0.5], 2, 1.0, 0.1)
    with pytest.raises(ValueError, match="needs 3 times"):
        make_grid(s, [1.0, 0.1], 2, 1.0, 0.1)
    with pytest.raises(ValueError, match="outside"):
        make_grid(s, [1.5, 0.5, 0.1], 2, 1.5, 0.1)


@pytest.mark.parametrize("t_start,t_end,match", [
    (0.5, 0.5, "t_end < t_start"), (0.1, 0.5, "t_end < t_start"), (1.0, 0.0, "outside"),
    (2.0, 0.1, "outside"), (1.0, float("nan"), "finite"),
])
def test_bad_interval_is_rejected(t_start, t_end, match):
    with pytest.raises(ValueError, match=match):
        make_grid(SCHEDULES["vp_linear"], "logsnr", 4, t_start, t_end)


def test_unknown_grid_names_valid_choices():
    with pytest.raises(ValueError, match="uniform, logsnr, quadratic, karras"):
        make_grid(SCHEDULES["vp_linear"], "cosine", 4, 1.0, 1e-3)
