"""A wrong plugin for `bench check`: declares order 2, but drops DPM-Solver++(2M)'s correction, so it is order 1."""
import math

from solvers import solver


@solver("wrong_order_2m", order=2, nfe_per_step=1, default_grid="logsnr")
def wrong_order_2m(model, x, grid):
    """DPM-Solver++(2M) without its second-order term: DDIM in data prediction, first order in fact."""
    c = [model.schedule.at(t) for t in grid.tolist()]
    for s, t in zip(c[:-1], c[1:]):
        x = (t.sigma / s.sigma) * x - t.alpha * math.expm1(s.lam - t.lam) * model.x0(x, s.t)
    return x
