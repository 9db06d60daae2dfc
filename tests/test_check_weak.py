"""The paired weak order of `python -m bench check` and `solvers.testing.check_solver(..., weak_f=...)`: a sampler
whose weak order on E log p against exact draws was lost in the Monte-Carlo noise is measured in its band, with a
jackknife standard error below 0.15; a sampler declared one weak order too high is caught; where the paired curve
cannot be fitted the unpaired one gives the weak order.
"""
import pytest
import torch

from bench import check as bench_check
from bench.check import paired_paths
from reference_models import load
from solvers import get_solver, solver, testing
from solvers.curves import PAIRED_FINE, Curve, paired_nfes

F64 = torch.float64


def square(x):
    return x.pow(2).sum(1)


@pytest.fixture(scope="module")
def vp():
    return load("gmm2d", "vp")


def paths(rm, n: int) -> torch.Tensor:
    return rm.schedule.prior_sample((n, 2), torch.Generator().manual_seed(0), dtype=F64)


def test_budgets_and_paths_follow_the_declared_weak_order_and_the_cost_per_step():
    assert paired_nfes(1) == (32, 64, 128, 256) and paired_nfes(2) == (8, 16, 32, 64) and PAIRED_FINE == 16
    assert paired_nfes(2, per_step=2) == (16, 32, 64, 128)  # heun-based samplers: 8-64 steps
    assert paired_paths((8, 16, 32, 64), 1024) == 16000 and paired_paths((32, 64, 128, 256), 4096) == 4000


def test_bench_checks_weak_order_of_dpmpp_2m_sde_is_measured_on_paired_paths():
    """Not measurable on E log p from 200,000 unpaired samples (biases within 3 standard errors of 0 from NFE 80);
    bench check's paired curve (f = |x|^2, NFE 8-64 paired with 1024 on 16,000 Brownian paths) puts it in
    [1.7, 2.5] with a standard error below 0.15 (gmm2d VP: 2.39 over NFE 16-64, SE 0.05)."""
    curve = bench_check._paired_curve("dpmpp_2m_sde", "gmm2d", "vp")
    weak = testing.check_weak_order("dpmpp_2m_sde", curve=curve)
    assert curve.fine == 1024 and curve.samples == 16000 and curve.nfes == (8, 16, 32, 64), curve
    assert weak.status == "pass" and "paired with NFE 1024 on 16,000 Brownian paths" in weak.detail, weak.detail
    assert 1.7 <= weak.value <= 2.5 and weak.data["stderr"] < testing.MAX_SLOPE_SE, weak.detail


def test_check_solver_takes_the_weak_order_from_the_paired_curve_given_weak_f(vp):
    """euler_ancestral (declared weak order 1) on 1,000 paths, NFE 16-128 paired with 1024: about 1, SE < 0.15;
    convergence needs log_prob and exact, so it is n/a here."""
    out = {o.check: o for o in testing.check_solver("euler_ancestral", vp.model, paths(vp, 1000), weak_f=square,
                                                     weak_nfes=(16, 32, 64, 128), weak_fine=1024)}
    weak = out["weak order"]
    assert weak.status == "pass" and "paired with NFE 1024 on 1,000 Brownian paths" in weak.detail, weak
    assert 0.8 <= weak.value <= 1.2 and weak.data["stderr"] < testing.MAX_SLOPE_SE, weak
    assert out["convergence"].status == "n/a"


def test_a_first_order_sampler_declared_weak_order_two_is_caught(vp):
    """Euler-Maruyama registered as weak order 2: paired over NFE 32-256 (fine 2048, 1,000 paths) it measures about
    1, outside [1.7, 2.5], and check_solver raises with the measured table."""
    em = get_solver("euler_maruyama").fn

    @solver("em_declared_weak_2", kind="sde", weak_order=2, nfe_per_step=1, default_grid="uniform")
    def em_declared_weak_2(model, x, grid, *, generator=None):
        return em(model, x, grid, generator=generator)

    with pytest.raises(testing.CheckFailed) as e:
        testing.check_solver("em_declared_weak_2", vp.model, paths(vp, 1000), weak_f=square,
                             weak_nfes=(32, 64, 128, 256), weak_fine=2048)
    weak = next(o for o in e.value.outcomes if o.check == "weak order")
    assert weak.status == "FAIL" and "declared 2, band [1.7, 2.5]" in weak.detail and "paired" in weak.detail
    assert 0.7 <= weak.value <= 1.3, weak.detail
    assert "local slopes" in str(e.value)


def test_where_the_paired_curve_cannot_be_fitted_the_unpaired_one_gives_the_weak_order(vp):
    """pc's Langevin corrector draws fresh noise, so its paired differences stay at the noise: the weak order is then
    the unpaired curve's (E log p against exact draws), and the detail says why."""
    noise = Curve("weak", (32, 64, 128, 256), (0.02, 0.01, 0.02, 0.03), (0.03, 0.03, 0.03, 0.03), 0.06,
                  bias=(0.02, -0.01, 0.02, 0.03), samples=2000, fine=4096, jackknife=((0.02, -0.01, 0.02, 0.03),) * 20)
    unpaired = Curve("weak", (20, 40, 80, 160), (0.8, 0.4, 0.2, 0.1), (0.003,) * 4, 0.009,
                     bias=(-0.8, -0.4, -0.2, -0.1), samples=100_000)
    out = {o.check: o for o in testing.check_solver("pc", vp.model, paths(vp, 8), curve=unpaired, weak_curve=noise,
                                                     raise_on_failure=False)}
    weak = out["weak order"]
    assert weak.status == "pass" and abs(weak.value - 1.0) < 1e-9, weak.detail
    assert weak.detail.startswith("weak order (paired with NFE 4096 on 2,000 Brownian paths) not measurable: fewer "
                                  "than two usable NFE values, so unpaired: weak order (E log p, 100,000 samples) 1.00")
    assert out["convergence"].status == "pass"
