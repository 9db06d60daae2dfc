"""One Brownian path per sample (solvers.brownian_paths): consistency, law, batch independence, strong and weak orders.

Run `python tests/test_brownian.py` to print Euler-Maruyama's strong and weak orders with their standard errors.
"""
import functools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from reference_models.registry import gmm2d
from solvers import VPSchedule, brownian_paths, get_solver, sample, seeded_noise, testing
from solvers.curves import path_seeds, strong_error_curve, strong_reference
from solvers.noise import increment_normal

F64 = torch.float64
T_END = 1e-3
STRONG_NFES = (16, 32, 64, 128, 256)
WEAK_NFES = (32, 64, 128, 256, 512)  # below 32 the weak error is pre-asymptotic (local slopes 2.6, 1.6)
MAX_SLOPE_SE = 0.15  # the Monte-Carlo standard error of a fitted order must be below this


def _values(paths, times):
    return torch.stack([paths.value(t) for t in times])


# --- the path ------------------------------------------------------------------------------


def test_increments_add_up():
    """(W(u) - W(s)) + (W(t) - W(u)) = W(t) - W(s), through the normalised increments, to float64 round-off."""
    p = brownian_paths(range(8), (3, 2), 1e-3, 1.0)
    for s, u, t in ((0.9, 0.5, 0.1), (1.0, 0.123456, 1e-3), (0.3, 0.30001, 0.2999)):
        whole = p.increment(s, t) * math.sqrt(abs(t - s))
        parts = p.increment(s, u) * math.sqrt(abs(u - s)) + p.increment(u, t) * math.sqrt(abs(t - u))
        assert torch.allclose(whole, parts, rtol=0, atol=1e-12)
    assert torch.equal(p.value(1e-3), torch.zeros(8, 3, 2, dtype=F64))


def test_the_path_is_the_same_at_10_and_1000_steps():
    """Queried along grids of 10 and 1000 steps (fresh objects, in any order), the path agrees at the shared times."""
    coarse, fine = torch.linspace(1.0, T_END, 11, dtype=F64), torch.linspace(1.0, T_END, 1001, dtype=F64)
    a = _values(brownian_paths([5, 6, 7], (4,), T_END, 1.0), coarse.tolist())
    b = _values(brownian_paths([5, 6, 7], (4,), T_END, 1.0), fine.tolist())
    c = _values(brownian_paths([5, 6, 7], (4,), T_END, 1.0), coarse.tolist()[::-1]).flip(0)
    assert torch.allclose(a, b[::100], rtol=0, atol=1e-9)
    assert torch.equal(a, c)
    # and a sampler's increments over a coarse step are the sums of the fine ones
    x = torch.zeros(3, 4, dtype=F64)
    fine_paths = brownian_paths([5, 6, 7], (4,), T_END, 1.0)
    walked = sum(increment_normal(x, s, t, fine_paths) * math.sqrt(s - t) for s, t in zip(fine[:-1].tolist(),
                                                                                        fine[1:].tolist()))
    assert torch.allclose(walked, a[-1] - a[0], rtol=0, atol=1e-9)


def test_increments_are_standard_normal_and_independent():
    """20,000 paths: normalised increments over disjoint intervals have mean 0 and variance 1 (each within 4 standard
    errors: 4/sqrt(n) and 4 sqrt(2/n)), pass a Kolmogorov-Smirnov test (p > 1e-3) and are uncorrelated (|r| < 4/sqrt(n))."""
    n = 20_000
    p = brownian_paths(range(n), (1,), 0.0, 1.0)
    intervals = ((0.9, 0.7), (0.7, 0.65), (0.41, 0.4), (0.1, 0.0001))
    z = torch.stack([p.increment(s, t)[:, 0] for s, t in intervals]).numpy()
    fresh = p.randn()[:, 0].numpy()
    for row in (*z, fresh):
        assert abs(row.mean()) < 4 / math.sqrt(n) and abs(row.var() - 1) < 4 * math.sqrt(2 / n)
        assert stats.kstest(row, "norm").pvalue > 1e-3
    corr = np.corrcoef(np.vstack([z, fresh]))
    assert np.abs(corr[np.triu_indices(len(corr), 1)]).max() < 4 / math.sqrt(n)


def test_a_sample_is_the_same_in_a_batch_of_1_and_of_64():
    seeds = [10 ** 12 + 7 * i for i in range(64)]
    times = torch.linspace(1.0, T_END, 37, dtype=F64).tolist()
    batch = _values(brownian_paths(seeds, (2, 3), T_END, 1.0), times)
    for i in (0, 17, 63):
        alone = _values(brownian_paths([seeds[i]], (2, 3), T_END, 1.0), times)
        assert torch.equal(alone[:, 0], batch[:, i])


def test_same_seed_same_samples_bit_for_bit():
    model = gmm2d().model(VPSchedule.linear())
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    for solver, opts in (("euler_maruyama", {}), ("pc", {}), ("reverse_diffusion", {}), ("ddim", {"eta": 1.0})):
        run = lambda seeds: sample(model, x_T, solver, nfe=12, timesteps="uniform", t_end=T_END,  # noqa: E731
                                   generator=brownian_paths(seeds, (2,), T_END, 1.0), **opts)
        a = run(range(16))
        assert torch.equal(a, run(range(16)))
        assert not torch.allclose(a, run(range(1, 17)))
        part = sample(model, x_T[[3, 9]], solver, nfe=12, timesteps="uniform", t_end=T_END,
                      generator=brownian_paths([3, 9], (2,), T_END, 1.0), **opts)
        assert torch.equal(part, a[[3, 9]]), solver


def test_seeded_noise_is_fresh_per_sample_noise_independent_of_the_batch():
    """seeded_noise: per-sample fresh draws (standard normal, uncorrelated from draw to draw), the same for a sample in a
    batch of 1 and of 64, reproducible; a sampler's samples likewise."""
    seeds = list(range(500, 564))
    a, b = seeded_noise(seeds, (3,)), seeded_noise(seeds[7:8], (3,))
    first, second = a.randn(), a.randn()
    assert torch.equal(first[7:8], b.randn()) and torch.equal(second[7:8], b.randn())
    big = seeded_noise(range(20_000), (1,))
    z1, z2 = big.randn()[:, 0].numpy(), big.randn()[:, 0].numpy()
    assert stats.kstest(z1, "norm").pvalue > 1e-3 and abs(np.corrcoef(z1, z2)[0, 1]) < 4 / math.sqrt(20_000)
    model = gmm2d().model(VPSchedule.linear())
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    run = lambda x, s: sample(model, x, "pc", nfe=10, generator=seeded_noise(s, (2,)))  # noqa: E731
    assert torch.equal(run(x_T, seeds)[[3, 40]], run(x_T[[3, 40]], [seeds[3], seeds[40]]))


@pytest.mark.parametrize("make, message", [
    (lambda: sample(gmm2d().model(VPSchedule.linear()), torch.zeros(4, 2), "euler_maruyama", nfe=5,
                    generator=brownian_paths(range(3), (2,), T_END, 1.0)),
     r"^BrownianPaths for 3 samples of shape \(2,\) cannot serve a batch of shape \(4, 2\)"),
    (lambda: sample(gmm2d().model(VPSchedule.linear()), torch.zeros(3, 2), "euler_maruyama", nfe=5,
                    generator=brownian_paths(range(3), (2,), 0.01, 1.0)),
     r"^Brownian path queried at t=0.001, outside its interval \[0.01, 1.0\]"),
    (lambda: brownian_paths(range(3), (2,), 1.0, 0.0), r"^brownian_paths needs finite t0 < t1"),
    (lambda: brownian_paths([], (2,)), r"^brownian_paths needs at least one seed"),
    (lambda: brownian_paths([1], (2,), depth=0), r"^depth must be an integer in \[1, 48\]"),
])
def test_bad_input_is_a_one_line_error(make, message):
    with pytest.raises(ValueError, match=message) as e:
        make()
    assert "\n" not in str(e.value)


# --- orders of Euler-Maruyama -------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def vp_problem(n: int):
    sched = VPSchedule.linear()
    model = gmm2d().model(sched)
    return model, sched.prior_sample((n, 2), torch.Generator().manual_seed(0), dtype=F64)


def strong_slopes(n: int = 1024, batches: int = 8):
    """(fitted strong order on all samples, its standard error from `batches` batches, the curve)."""
    model, x_T = vp_problem(n)
    ref = strong_reference(model, x_T, path_seeds(0, n), 1.0, T_END)
    curve = strong_error_curve("euler_maruyama", model, x_T, STRONG_NFES, reference=ref, timesteps="uniform")
    sq = []
    for nfe in STRONG_NFES:
        x = sample(model, x_T, "euler_maruyama", nfe=nfe, t_end=T_END, timesteps="uniform",
                   generator=brownian_paths(path_seeds(0, n), (2,), T_END, 1.0))
        sq.append((x - ref[0]).pow(2).mean(1))
    sq = torch.stack(sq).numpy()
    slopes = [-np.polyfit(np.log(STRONG_NFES), 0.5 * np.log(sq[:, b::batches].mean(1)), 1)[0] for b in range(batches)]
    return float(np.mean(slopes)), float(np.std(slopes, ddof=1) / math.sqrt(batches)), curve, ref


def weak_slopes(n: int = 20_000, batches: int = 20):
    """(weak order from the coupled differences d(N) = E log p(X_N) - E log p(X_2N) on the same paths, its jackknife
    standard error over `batches` batches). d(N) ~ C N^-p with the weak order p, and needs no exact expectation."""
    model, x_T = vp_problem(n)
    mix, sched = gmm2d(), VPSchedule.linear()
    logp = []
    for nfe in WEAK_NFES:
        x = sample(model, x_T, "euler_maruyama", nfe=nfe, t_end=T_END, timesteps="uniform",
                   generator=brownian_paths(path_seeds(1, n), (2,), T_END, 1.0))
        logp.append(mix.log_prob(x, sched, T_END).numpy())
    diffs = np.diff(np.array(logp), axis=0)  # (levels, n): log p(X_2N) - log p(X_N), per sample

    def slope(mask):
        d = np.abs(diffs[:, mask].mean(1))
        return -np.polyfit(np.log(WEAK_NFES[:-1]), np.log(d), 1)[0]

    groups = np.arange(n) % batches
    full = slope(np.ones(n, bool))
    loo = np.array([slope(groups != b) for b in range(batches)])
    se = math.sqrt((batches - 1) / batches * ((loo - loo.mean()) ** 2).sum())
    return float(full), se, np.abs(diffs.mean(1))


def test_euler_maruyama_strong_order_is_one():
    """Strong order (RMSE vs EM at 4096 steps on the same paths, NFE 16-256, 1,024 paths): in [0.7, 1.5] (the band of
    the declared 1) with a standard error below 0.15, and more than 2 standard errors above 1/2 (additive noise)."""
    order, se, curve, ref = strong_slopes()
    assert get_solver("euler_maruyama").strong_order == 1
    assert se < MAX_SLOPE_SE, se
    assert 0.7 <= order <= 1.5 and order - 2 * se > 0.5, (order, se)
    assert testing.check_strong_order("euler_maruyama", curve=curve).status == "pass"
    # the reference converged: its estimated RMSE (4096 vs 2048 steps) is below half the error at 256 NFE
    assert ref[1] < 0.5 * curve.errors[-1], (ref[1], curve.errors)


def test_euler_maruyama_weak_order_is_one():
    """Weak order (E log p on 20,000 coupled paths, NFE 32-512): in [0.7, 1.5] with a standard error below 0.15."""
    order, se, _ = weak_slopes()
    assert se < MAX_SLOPE_SE, se
    assert 0.7 <= order <= 1.5, (order, se)


def test_strong_order_check_through_solvers_testing():
    model, x_T = vp_problem(256)
    outcome = testing.check_strong_order("euler_maruyama", model, x_T, (16, 32, 64, 128), steps=1024,
                                         timesteps="uniform")
    assert outcome.status == "pass", outcome.detail
    assert testing.check_strong_order("reverse_diffusion").detail == "no strong order declared"


def test_bench_run_rows_carry_the_strong_error(tmp_path):
    """A `bench run` sweep of euler_maruyama on gmm2d: its error_rmse is the strong error, finite, falling with NFE (by
    at least 4x from 8 to 64 NFE), and the fine-step reference converged (its estimated RMSE below the error at 64 NFE
    / 4)."""
    from bench.dist import World
    from bench.sweep import Sweep, run_sweep

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sweep = Sweep(["gmm2d"], ["euler_maruyama"], [8, 16, 32, 64], [0], samples=200, run_id="strong", repeats=1)
        df = run_sweep(sweep, tmp_path, World(), progress=False)
    finally:
        torch.set_num_threads(before)
    assert (df.status == "ok").all(), df.message.tolist()
    err = df.set_index("nfe").error_rmse
    assert err.map(math.isfinite).all() and (df.error_max >= df.error_rmse).all()
    assert list(err.sort_index()) == sorted(err, reverse=True) and err[8] > 4 * err[64], err.to_dict()
    assert (df.reference_rmse < err[64] / 4).all(), (df.reference_rmse.iloc[0], err[64])
    assert df.message.str.startswith("strong error vs Euler-Maruyama at 4096 uniform steps").all()


def main():
    order, se, curve, ref = strong_slopes()
    print(f"euler_maruyama strong order {order:.2f} ± {se:.2f} (SE over 8 batches of 128 paths); "
          f"reference EM 4096 steps, estimated RMSE {ref[1]:.2g}")
    print(curve.table())
    order, se, d = weak_slopes()
    print(f"euler_maruyama weak order {order:.2f} ± {se:.2f} (jackknife SE, 20 batches of 1,000 paths); "
          f"|d(N)| = {', '.join(f'{v:.3g}' for v in d)} for N = {WEAK_NFES[:-1]}")


if __name__ == "__main__":
    main()
