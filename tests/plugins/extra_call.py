"""A wrong plugin for `bench check`: a correct first-order solver, except one evaluation too many at 23 steps."""
import math

from solvers import solver

BAD_STEPS = 23


@solver("extra_call_at_23", order=1, nfe_per_step=1, default_grid="logsnr")
def extra_call_at_23(model, x, grid):
    """DDIM in data prediction; on a grid of 23 steps it evaluates the model once more at the end (unused)."""
    c = [model.schedule.at(t) for t in grid.tolist()]
    for s, t in zip(c[:-1], c[1:]):
        x = (t.sigma / s.sigma) * x - t.alpha * math.expm1(s.lam - t.lam) * model.x0(x, s.t)
    if len(c) - 1 == BAD_STEPS:
        model.x0(x, c[-1].t)
    return x
