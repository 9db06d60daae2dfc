"""DPM-Solver++ (Lu et al. 2022b): the DPM-Solver updates in data prediction x0, written with solvers.exponential.

Every update is `data_step` from grid[i] to grid[i+1]: 2S evaluates x0 at the lambda-midpoint of the step,
2M extrapolates x0 linearly to it (the paper's Algorithms 1 and 2), 3M expands x0 to second order.
"""
from __future__ import annotations

import math

import torch

from .exponential import History, data_step, multistep_update, step_order
from .model import Model
from .options import check_thresholding, one_of
from .registry import solver
from .thresholding import thresholded

STARTS = ("lower_order", "singlestep")
CURVATURES = ("taylor", "half")


def _coefficients(model: Model, grid):
    return [model.schedule.at(t) for t in grid.tolist()]


def _midpoint(model: Model, s, t):
    """Coefficients at lambda_s + h/2; from lambda_s = -inf (alpha_s = 0), at lambda_t - log 2 instead.

    From alpha_s = 0 the step's exact solution integrates x0 in u = e^lambda = alpha/sigma over [0, u_t]
    (x_t = (sigma_t/sigma_s) x_s + sigma_t int x0 du), and x0 at the midpoint in u, u_t / 2, makes that a
    second-order midpoint rule: the same 2 evaluations, order 2.
    """
    sched = model.schedule
    lam = 0.5 * (s.lam + t.lam) if math.isfinite(s.lam) else t.lam - math.log(2.0)
    return sched.at(float(sched.t_of_lambda(torch.tensor(lam, dtype=torch.float64))))


def _step_2s(model: Model, x, s, t, x0_s, x0_fn):
    """One DPM-Solver++(2S) step with r = 1/2: a DDIM step to the lambda-midpoint, then s -> t with x0 there.

    x0_fn: model.x0 or its thresholded form. Returns x_t, the midpoint's coefficients and x0 there."""
    m = _midpoint(model, s, t)
    x0_m = x0_fn(data_step(x, s, m, x0_s), m.t)
    return data_step(x, s, t, x0_m), m, x0_m


def _two_s_steps(nfe: int, options: dict) -> int:
    return nfe // 2 + nfe % 2


@solver("dpmpp_2s", order=2, steps_for_nfe=_two_s_steps, default_grid="logsnr", starts_at_alpha_zero=True,
        default_grids={"flow": "uniform"}, check=check_thresholding,
        valid_nfe="any positive integer (an odd budget ends with one first-order step)",
        description="singlestep DPM-Solver++(2S), data prediction, midpoint r = 1/2")
def dpmpp_2s(model: Model, x, grid, *, nfe, thresholding: str = "none", threshold_ratio: float = 0.995,
             threshold_max: float = 1.0):
    """DPM-Solver++(2S) (Lu et al. 2022b, Algorithm 1, r = 1/2); order 2, 2 NFE per step, an odd budget's last 1.

    thresholding, threshold_ratio, threshold_max: x0 thresholding (solvers.thresholding), as in every solver here."""
    x0_fn = thresholded(model, thresholding, threshold_ratio, threshold_max)
    c = _coefficients(model, grid)
    for i in range(len(c) - 1):
        x0 = x0_fn(x, c[i].t)
        last_odd = nfe % 2 == 1 and i == len(c) - 2
        x = data_step(x, c[i], c[i + 1], x0) if last_odd else _step_2s(model, x, c[i], c[i + 1], x0, x0_fn)[0]
    return x


@solver("dpmpp_2m", order=2, nfe_per_step=1, default_grid="logsnr", starts_at_alpha_zero=True,
        check=check_thresholding, description="multistep DPM-Solver++(2M), data prediction")
def dpmpp_2m(model: Model, x, grid, *, lower_order_final: bool = True, thresholding: str = "none",
             threshold_ratio: float = 0.995, threshold_max: float = 1.0):
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2), first step first-order; order 2, 1 NFE per step."""
    x0_fn = thresholded(model, thresholding, threshold_ratio, threshold_max)
    c = _coefficients(model, grid)
    steps, hist = len(c) - 1, History(2)
    for i in range(steps):
        hist.push(c[i].lam, x0_fn(x, c[i].t))
        x = multistep_update(data_step, x, c[i], c[i + 1], hist, step_order(2, i, steps, len(hist), lower_order_final))
    return x


def _check_3m(opts):
    check_thresholding(opts)
    one_of(opts, "start", STARTS)
    one_of(opts, "curvature", CURVATURES)


def _three_m_steps(nfe: int, options: dict) -> int:
    return nfe - 1 if options["start"] == "singlestep" and nfe >= 2 else nfe


@solver("dpmpp_3m", order=3, steps_for_nfe=_three_m_steps, default_grid="logsnr", check=_check_3m,
        starts_at_alpha_zero=True,
        valid_nfe="any positive integer", description="multistep DPM-Solver++(3M), data prediction")
def dpmpp_3m(model: Model, x, grid, *, nfe, lower_order_final: bool = True, start: str = "lower_order",
             curvature: str = "taylor", thresholding: str = "none", threshold_ratio: float = 0.995,
             threshold_max: float = 1.0):
    """DPM-Solver++(3M) (Lu et al. 2022b, eq. 10 to x0''); order 3 (measured 2.9-3.1), 1 NFE per step.

    start="lower_order" (the more accurate at NFE 5-20): 1st- then 2nd-order steps, K = nfe steps.
    start="singlestep": the first step is a 2S step whose midpoint x0 joins the history, so that the second step
    is already 3rd order; one evaluation more: K = nfe - 1 steps.
    curvature="taylor": the x0'' term h^3 phi_3(-h) x0''; "half": that term halved, as DPM-Solver's code,
    diffusers and k-diffusion write it: exact for linear x0 only, global order 2 (measured 2.1).
    """
    x0_fn = thresholded(model, thresholding, threshold_ratio, threshold_max)
    scale = 1.0 if curvature == "taylor" else 0.5
    c = _coefficients(model, grid)
    steps, hist = len(c) - 1, History(3)
    for i in range(steps):
        s, t = c[i], c[i + 1]
        hist.push(s.lam, x0_fn(x, s.t))
        if i == 0 and start == "singlestep" and nfe >= 2:
            x, m, x0_m = _step_2s(model, x, s, t, hist.newest(), x0_fn)
            hist.push(m.lam, x0_m)
            continue
        x = multistep_update(data_step, x, s, t, hist, step_order(3, i, steps, len(hist), lower_order_final), scale)
    return x
