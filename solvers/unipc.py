"""UniPC (Zhao et al. 2023): the UniP predictor and the UniC corrector in data prediction, with solvers.exponential.

A step s -> t (h = lambda_t - lambda_s) of either is a DDIM step with an effective data prediction,
  x_t = (sigma_t / sigma_s) x_s + alpha_t h phi_1(-h) x0_eff,   x0_eff = m_0 + B(h) / (h phi_1(-h)) sum_k rho_k D_k,
which is the paper's eq. 8 (data-prediction form) written with `data_step`. m_0 = x0 at s; the D_k = (m_k - m_0) / r_k
are differences with points m_k at lambda_s + r_k h: earlier steps' points (r_k < 0) for UniP, those and the new
point at t (r = 1) for UniC. The rho_k solve  sum_k rho_k r_k^(i-1) = g_i = i! h phi_(i+1)(-h) / B(h), i = 1..n
(the paper's Theorem 3.1), with B(h) = h ("bh1") or 1 - e^(-h) ("bh2"); a one-point system takes rho = 1/2, as the
paper's code does (g_1 = 1/2 + O(h): the order is kept). UniC needs x0 at t, the evaluation the next step makes at
the predicted x_t anyway: the corrector costs no evaluation, and the last step is not corrected.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .exponential import PHI, History, data_step, phi_1, step_order
from .model import Model
from .options import check_thresholding, one_of
from .registry import solver
from .thresholding import thresholded

VARIANTS = ("bh1", "bh2")
STARTS = ("lower_order", "singlestep")
ORDERS = (1, 2, 3)




def _b(h: float, variant: str) -> float:
    """B(h): h (bh1) or 1 - e^(-h) = h phi_1(-h) (bh2)."""
    return h if variant == "bh1" else -math.expm1(-h)


def _rhos(rs: list[float], h: float, variant: str) -> list[float]:
    """The rho_k of points at r_k (Vandermonde system against g_i, solved in float64); one point: 1/2."""
    if len(rs) == 1:
        return [0.5]
    n, b = len(rs), _b(h, variant)
    g = [math.factorial(i) * h * PHI[i + 1](-h) / b for i in range(1, n + 1)]
    return np.linalg.solve(np.vander(np.array(rs, dtype=np.float64), n, increasing=True).T, np.array(g)).tolist()


def _update(x, s, t, m0, points, variant: str):
    """x at t from x at s: a DDIM step with x0_eff built from `points`, (lambda, x0) pairs other than (lambda_s, m0)."""
    h = t.lam - s.lam
    if not points:
        return data_step(x, s, t, m0)
    rs = [(lam - s.lam) / h for lam, _ in points]
    scale = _b(h, variant) / (h * phi_1(-h))  # 1 for bh2
    x0 = m0.clone()
    for rho, r, (_, m) in zip(_rhos(rs, h, variant), rs, points):
        x0.add_(m - m0, alpha=scale * rho / r)
    return data_step(x, s, t, x0)


def _midpoint_step(model: Model, x, s, t, m0, variant: str, x0_fn):
    """The singlestep start: UniP-2 with x0 at the lambda-midpoint (after a DDIM step there); for bh2 DPM-Solver++(2S).

    Returns x_t, its points for UniC and the midpoint's (lambda, x0). From lambda = -inf, where a lambda-midpoint
    does not exist, the point is the t-midpoint and the step a DDIM step with x0 there."""
    sched = model.schedule
    if math.isfinite(s.lam):
        mid = sched.at(float(sched.t_of_lambda(torch.tensor(0.5 * (s.lam + t.lam), dtype=torch.float64))))
    else:
        mid = sched.at(0.5 * (s.t + t.t))
    m_mid = x0_fn(data_step(x, s, mid, m0), mid.t)
    if not math.isfinite(s.lam):
        return data_step(x, s, t, m_mid), [], (mid.lam, m_mid)
    points = [(mid.lam, m_mid)]
    return _update(x, s, t, m0, points, variant), points, (mid.lam, m_mid)


def _check(opts):
    check_thresholding(opts)
    for key, valid in (("variant", VARIANTS), ("order", ORDERS), ("start", STARTS)):
        one_of(opts, key, valid)


def _singlestep(options: dict) -> bool:
    return options["start"] == "singlestep" and options["order"] >= 3


def _steps(nfe: int, options: dict) -> int:
    return nfe - 1 if _singlestep(options) and nfe >= 2 else nfe


def _order(options: dict) -> int:
    return options["order"] + int(options["corrector"])


@solver("unipc", order=_order, steps_for_nfe=_steps, default_grid="logsnr", check=_check, starts_at_alpha_zero=True,
        valid_nfe="any positive integer", description="UniPC: UniP predictor + UniC corrector, data prediction")
def unipc(model: Model, x, grid, *, nfe, variant: str = "bh2", order: int = 2, corrector: bool = True,
          lower_order_final: bool = True, start: str = "lower_order", thresholding: str = "none",
          threshold_ratio: float = 0.995, threshold_max: float = 1.0):
    """UniPC-p (Zhao et al. 2023, Algorithms 2-3, B(h) variants); order p, p + 1 with UniC; 1 NFE per step.

    order 2 by default (diffusers' default too): UniPC-3 (order 4) is no more accurate at NFE 5-20 on gmm2d and
    still pre-asymptotic at NFE 160-640 there (measured 3.69, 3.96 at 1280-2560); see tests/test_unipc.py.
    start (order 3 only): "lower_order" (the more accurate at NFE 5-20): UniP-1, UniP-2, then UniP-3 steps;
    "singlestep": the first step is a UniP-2 step through an evaluation at its lambda-midpoint, which joins the
    history (DPM-Solver++(2S) for bh2), so that the second step is already UniP-3; one step fewer: K = nfe - 1.
    thresholding, threshold_ratio, threshold_max: x0 thresholding (solvers.thresholding).
    """
    x0_fn = thresholded(model, thresholding, threshold_ratio, threshold_max)
    c = [model.schedule.at(t) for t in grid.tolist()]
    steps, hist = len(c) - 1, History(order)
    last = None  # the last step's (x_s, s, t, m_s, points): what UniC corrects with the next evaluation
    for i in range(steps):
        s, t = c[i], c[i + 1]
        m = x0_fn(x, s.t)
        if corrector and last is not None and math.isfinite(last[1].lam):  # none from lambda = -inf (h = inf)
            x_s, s0, t0, m0, points = last
            x = _update(x_s, s0, t0, m0, points + [(s.lam, m)], variant)
        hist.push(s.lam, m)
        if i == 0 and nfe >= 2 and _singlestep({"start": start, "order": order}):
            x_t, points, mid = _midpoint_step(model, x, s, t, m, variant, x0_fn)
            hist.push(*mid)
        else:
            p = step_order(order, i, steps, len(hist), lower_order_final)
            points = list(zip(hist.lams[-p:-1], hist.values[-p:-1]))
            x_t = _update(x, s, t, m, points, variant)
        last, x = (x, s, t, m, points), x_t
    return x
