"""Example plugin: the README's "Adding a solver" example, verbatim (tests/test_plugins.py checks they agree)."""
import math

from solvers import solver


@solver("my_dpmpp_2m", order=2, nfe_per_step=1, default_grid="logsnr")
def my_dpmpp_2m(model, x, grid):
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2). Order 2, 1 NFE per step."""
    c = [model.schedule.at(t) for t in grid.tolist()]  # alpha, sigma, lam, f, g2 in float64
    x0_prev = None
    for i in range(len(c) - 1):
        s, t, h = c[i], c[i + 1], c[i + 1].lam - c[i].lam
        x0 = model.x0(x, s.t)
        d = x0 if x0_prev is None else x0 + (x0 - x0_prev) * h / (2 * (s.lam - c[i - 1].lam))
        x = (t.sigma / s.sigma) * x - t.alpha * math.expm1(-h) * d
        x0_prev = x0
    return x
