"""Example plugin: DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2) as a solver author writes it."""
import math

from solvers import solver


@solver("example_dpmpp_2m", order=2, nfe_per_step=1, default_grid="logsnr")
def dpmpp_2m(model, x, grid):
    """DPM-Solver++(2M) in data prediction: order 2, 1 NFE per step (1st-order first step)."""
    coef = [model.schedule.at(t) for t in grid.tolist()]
    x0_prev = None
    for i in range(len(coef) - 1):
        s, t = coef[i], coef[i + 1]
        h = t.lam - s.lam
        x0 = model.x0(x, s.t)
        d = x0
        if x0_prev is not None:
            r = (s.lam - coef[i - 1].lam) / h
            d = x0 + (x0 - x0_prev) / (2 * r)
        x = (t.sigma / s.sigma) * x - t.alpha * math.expm1(-h) * d
        x0_prev = x0
    return x
