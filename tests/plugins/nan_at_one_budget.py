"""A wrong plugin for `bench check`: a correct first-order solver, except that 37 steps end in NaN."""
import math

from solvers import solver

BAD_STEPS = 37


@solver("nan_at_37", order=1, nfe_per_step=1, default_grid="logsnr")
def nan_at_37(model, x, grid):
    """DDIM in data prediction; its last update divides by zero on a grid of 37 steps (as diffusers#9007 did)."""
    c = [model.schedule.at(t) for t in grid.tolist()]
    for i, (s, t) in enumerate(zip(c[:-1], c[1:])):
        last = i == BAD_STEPS - 1 == len(c) - 2
        ratio = math.nan if last else t.sigma / s.sigma
        x = ratio * x - t.alpha * math.expm1(s.lam - t.lam) * model.x0(x, s.t)
    return x
