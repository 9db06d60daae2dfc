"""iPNDM and DEIS (Zhang & Chen 2023): Adams-Bashforth steps on the PF-ODE in x/alpha and rho = sigma/alpha.

With y = x/alpha and rho = sigma/alpha = e^{-lambda}, the PF-ODE is dy/drho = eps, so a step s -> t is
  y_t = y_s + int_{rho_s}^{rho_t} eps drho  ~  y_s + (rho_t - rho_s) sum_j w_j eps_j,
the eps_j of the last points (newest first) and weights w_j summing to 1: `noise_step(x, s, t, sum_j w_j eps_j)`.
Multistep weights are the average over the step, against drho, of the Lagrange basis through the points in a
variable u (Adams-Bashforth in u): u = rho (variable-step iPNDM), t (DEIS tAB) or lambda (DEIS log-rho). One
point gives w = (1,): DDIM. Every coefficient is a float64 Python float.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .exponential import History, noise_step, step_order
from .model import Model
from .options import one_of
from .registry import solver

STARTS = ("lower_order", "singlestep")
VARIANTS = ("tab", "logrho")
COEFFICIENTS = ("fixed", "variable")
# Adams-Bashforth on uniform steps, newest first (the published iPNDM)
AB_FIXED = ((1.0,), (1.5, -0.5), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))
PANEL = 1.0  # longest lambda-interval one Gauss-Legendre panel covers
NODES, WEIGHTS = np.polynomial.legendre.leggauss(12)  # per panel: t(lambda) analytic in a strip, error < 1e-15


def lagrange_weights(us, u_of_lambda, s, t) -> tuple[float, ...]:
    """Weights w_j = int l_j(u) drho / (rho_t - rho_s) over the step s -> t, l_j the Lagrange basis through the
    points us (newest first, us[0] at s) in the variable u = u_of_lambda(lambda) (numpy, float64).

    Gauss-Legendre in lambda, where drho = -e^{-lambda} dlambda, on panels of at most PANEL; the newest weight is
    1 minus the others, so that the weights sum to 1 exactly (constant eps: DDIM).
    """
    if len(us) == 1:
        return (1.0,)
    h = t.lam - s.lam
    panels = max(1, math.ceil(abs(h) / PANEL))
    edges = np.linspace(0.0, h, panels + 1)
    half = 0.5 * np.diff(edges)
    v = (edges[:-1, None] + half[:, None] * (NODES[None, :] + 1.0)).ravel()  # lambda - lambda_s at the nodes
    density = (np.exp(-v) * (half[:, None] * WEIGHTS[None, :]).ravel()) / -math.expm1(-h)
    u = u_of_lambda(s.lam + v)
    us = np.asarray(us, dtype=np.float64)
    out = []
    for j in range(1, len(us)):
        basis = np.ones_like(u)
        for m in range(len(us)):
            if m != j:
                basis *= (u - us[m]) / (us[j] - us[m])
        out.append(float(np.sum(density * basis)))
    return (1.0 - math.fsum(out), *out)


def _combine(weights, values):
    out = values[0] * weights[0]
    for w, v in zip(weights[1:], values[1:]):
        out = out.add_(v, alpha=w)
    return out


def _coefficients(model: Model, grid):
    """Coefficients on the grid; alpha > 0 at its start (sample refuses alpha = 0: the solver does not declare
    starts_at_alpha_zero)."""
    return [model.schedule.at(t) for t in grid.tolist()]


def _midpoint(model: Model, s, t):
    sched = model.schedule
    return sched.at(float(sched.t_of_lambda(torch.tensor(0.5 * (s.lam + t.lam), dtype=torch.float64))))


def _run(model: Model, x, grid, order: int, lower_order_final: bool, start: str, nfe: int, weights):
    """The multistep loop: weights(points, s, t) -> w for the history's newest points (Coefficients, newest first).

    start="singlestep" (order >= 3): the first step evaluates eps at its lambda-midpoint m (a DDIM step there) and
    steps with the 2-point polynomial through s and m; m joins the history, so the second step has order 3.
    """
    c = _coefficients(model, grid)
    steps, hist = len(c) - 1, History(order)
    for i in range(steps):
        s, t = c[i], c[i + 1]
        hist.push(s.lam, (s, model.eps(x, s.t)))
        if i == 0 and start == "singlestep" and nfe >= 2:
            m = _midpoint(model, s, t)
            eps_m = model.eps(noise_step(x, s, m, hist.newest()[1]), m.t)
            x = noise_step(x, s, t, _combine(weights((s, m), s, t), [hist.newest()[1], eps_m]))
            hist.push(m.lam, (m, eps_m))  # pushed after s: the newest-first order below is by lambda, not by age
            continue
        k = step_order(order, i, steps, len(hist), lower_order_final)
        points = sorted(hist.values[-k:], key=lambda p: -p[0].lam)  # newest (largest lambda: s) first
        x = noise_step(x, s, t, _combine(weights(tuple(p[0] for p in points), s, t), [p[1] for p in points]))
    return x


def _check(opts: dict, orders: range, extra: dict):
    """order in `orders`, start in STARTS, each of `extra` (option -> valid values); singlestep needs order >= 3."""
    one_of(opts, "order", orders)
    for key, valid in {"start": STARTS, **extra}.items():
        one_of(opts, key, valid)
    if opts["start"] == "singlestep" and opts["order"] < 3:
        raise ValueError(f"start='singlestep' is an order-preserving start for order 3 or more, got order "
                         f"{opts['order']}; use start='lower_order'")


def _steps(nfe: int, options: dict) -> int:
    return nfe - 1 if options["start"] == "singlestep" and nfe >= 2 else nfe


def _ipndm_weights(coefficients: str):
    def weights(points, s, t):
        if coefficients == "fixed":
            return AB_FIXED[len(points) - 1]
        rho = [math.exp(s.lam - p.lam) for p in points]  # rho / rho_s: the weights do not change with the scale
        return lagrange_weights(rho, lambda lam: np.exp(s.lam - lam), s, t)
    return weights


def _check_ipndm(opts):
    _check(opts, range(1, 5), {"coefficients": COEFFICIENTS})
    if opts["start"] == "singlestep" and opts["coefficients"] == "fixed":
        raise ValueError("start='singlestep' puts a midpoint into the history, which fixed (uniform-step) "
                         "coefficients cannot use; give coefficients='variable'")


def _ipndm_order(o):
    """Fixed coefficients: 2 (measured 1.99/2.00 on VP/VE at order 4). Variable: the order, but order 4 warmed up
    with lower orders measures 3.80/3.66 (its 1st- and 2nd-order first steps begin to cap it): declared 3.5."""
    if o["coefficients"] == "fixed":
        return min(o["order"], 2)
    return 3.5 if o["order"] == 4 and o["start"] == "lower_order" else o["order"]


@solver("ipndm", order=_ipndm_order, steps_for_nfe=_steps, default_grid="karras", check=_check_ipndm,
        valid_nfe="any positive integer", description="improved PNDM: Adams-Bashforth in x/alpha and sigma/alpha")
def ipndm(model: Model, x, grid, *, nfe, order: int = 4, coefficients: str = "fixed",
          lower_order_final: bool = True, start: str = "lower_order"):
    """iPNDM (Zhang & Chen 2023, DEIS paper): Adams-Bashforth on dy/drho = eps, y = x/alpha, rho = sigma/alpha; 1 NFE/step.

    coefficients="fixed": the published uniform-step coefficients (3,-1)/2, (23,-16,5)/12, (55,-59,37,-9)/24,
    which are 2nd order on any grid whose rho-steps are not uniform (logsnr, karras): declared order min(order, 2);
    the default: 2-5x more accurate than "variable" at NFE 5-20 on gmm2d and gmm-digits (karras grid).
    "variable": exact integrals of the Lagrange polynomial in rho over the actual step (diff-sampler's iPNDM-v):
    declared order `order` (3.5 for order 4 with the lower-order start). start="lower_order" (the more accurate at
    NFE 5-20) or "singlestep" as in deis (order >= 3, variable coefficients only).
    """
    return _run(model, x, grid, order, lower_order_final, start, nfe, _ipndm_weights(coefficients))


def _deis_weights(model: Model, variant: str):
    def weights(points, s, t):
        if variant == "logrho":
            return lagrange_weights([p.lam - s.lam for p in points], lambda lam: lam - s.lam, s, t)
        to_t = model.schedule.t_of_lambda
        return lagrange_weights([p.t for p in points], lambda lam: to_t(torch.from_numpy(lam)).numpy(), s, t)
    return weights


@solver("deis", order=lambda o: o["order"], steps_for_nfe=_steps, default_grid="karras",
        check=lambda o: _check(o, range(1, 4), {"variant": VARIANTS}), valid_nfe="any positive integer",
        description="DEIS tAB: exponential integrator, eps extrapolated by a polynomial in t")
def deis(model: Model, x, grid, *, nfe, order: int = 3, variant: str = "tab", lower_order_final: bool = True,
         start: str = "lower_order"):
    """DEIS tAB (Zhang & Chen 2023): x_t/alpha_t = x_s/alpha_s + int_s^t P(tau) d(sigma/alpha)(tau), P the
    Lagrange polynomial in t through the last `order` eps; Gauss-Legendre coefficients. Order `order`, 1 NFE/step.

    variant="logrho": P a polynomial in log rho = -lambda, as diffusers' DEISMultistepScheduler (which has no tAB);
    equal to DPM-Solver's multistep noise-prediction update with the full eps'' term. start="lower_order" (the more
    accurate at NFE 5-20) warms up with lower orders; "singlestep" (order 3): the first step also evaluates its
    lambda-midpoint, K = nfe - 1 steps.
    """
    return _run(model, x, grid, order, lower_order_final, start, nfe, _deis_weights(model, variant))
