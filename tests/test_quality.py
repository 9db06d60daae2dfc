"""Sample-quality metrics: sliced Wasserstein and MMD against closed-form values and orderings, bad input."""
import math

import pytest
import torch

from bench.quality import mmd, sliced_wasserstein


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_swd_of_identical_sets_is_zero():
    x = torch.randn(500, 2, generator=_gen(0))
    assert sliced_wasserstein(x, x.flip(0)) == pytest.approx(0.0, abs=1e-12)


def test_swd_of_a_shift_is_its_length_over_sqrt2_in_2d():
    # Projecting a shift d e_1 on a uniform direction at angle phi moves every point by d cos(phi):
    # SW2^2 = d^2 E[cos^2 phi] = d^2 / 2 exactly, for any point set.
    x = torch.randn(2000, 2, generator=_gen(1))
    d = 0.3
    got = sliced_wasserstein(x + torch.tensor([d, 0.0]), x, n_projections=4000, generator=_gen(2))
    assert got == pytest.approx(d / math.sqrt(2), rel=0.03)


def test_swd_in_1d_is_the_wasserstein_distance():
    x = torch.randn(1000, 1, generator=_gen(3))
    assert sliced_wasserstein(x + 0.25, x, n_projections=3) == pytest.approx(0.25, rel=1e-6)


def test_swd_handles_unequal_sizes():
    x = torch.randn(300, 2, generator=_gen(4))
    assert sliced_wasserstein(torch.cat([x, x]), x) < 0.02
    assert sliced_wasserstein(torch.cat([x, x]), x + 1.0) > 0.5


def test_swd_orders_distances_between_distributions():
    g = _gen(5)
    ref = torch.randn(4000, 2, generator=g)
    near = torch.randn(4000, 2, generator=g)
    far = 1.3 * torch.randn(4000, 2, generator=g)
    assert sliced_wasserstein(near, ref) < sliced_wasserstein(far, ref)


def test_mmd_separates_same_from_different_distributions():
    g = _gen(6)
    ref, same = torch.randn(1500, 2, generator=g), torch.randn(1500, 2, generator=g)
    shifted = torch.randn(1500, 2, generator=g) + torch.tensor([0.5, 0.0])
    m_same, m_shift = mmd(same, ref), mmd(shifted, ref)
    assert abs(m_same) < 2e-3
    assert m_shift > 10 * abs(m_same)


def test_mmd_is_exact_zero_free_of_the_diagonal_for_a_single_pair_formula():
    # Unbiased estimate on two copies of one set: every off-diagonal term cancels except the
    # cross-term diagonal, so the value is -2 (mean_i k(x_i, x_i) - mean_{i != j} k(x_i, x_j)) / n < 0.
    x = torch.randn(200, 3, generator=_gen(7))
    assert mmd(x, x.clone()) < 0


def test_metrics_reject_bad_input():
    x = torch.randn(100, 2)
    with pytest.raises(ValueError, match="different dimensions"):
        sliced_wasserstein(x, torch.randn(100, 3))
    with pytest.raises(ValueError, match="NaN"):
        mmd(x, torch.full((100, 2), float("nan")))
    with pytest.raises(ValueError, match="n_projections"):
        sliced_wasserstein(x, x, n_projections=0)
    with pytest.raises(ValueError, match="at least 2 samples"):
        sliced_wasserstein(torch.randn(1, 2), x)
