"""DDIM and the DPM-Solver family (Lu et al. 2022, NeurIPS), written in lambda = log(alpha/sigma).

With h = lambda_t - lambda_s, the exact PF-ODE solution is
  x_t = (alpha_t / alpha_s) x_s - alpha_t * int_{lambda_s}^{lambda_t} e^{-lambda} eps(x_lambda) dlambda,
and the solvers Taylor-expand eps in lambda: every update is solvers.exponential.noise_step, with float64 `expm1` and
phi-function coefficients.
"""
from __future__ import annotations

import math

import torch

from .exponential import History, data_step, multistep_update, noise_step, step_order
from .model import Model
from .noise import increment_normal
from .options import (
    DEFAULT_MAX_NFE,
    check_cap,
    check_positive,
    check_thresholding,
    non_negative,
    positive,
    positive_int,
)
from .registry import solver
from .schedules import Coefficients
from .thresholding import thresholded

ADAPTIVE_DTYPES = (torch.float32, torch.float64)
H_INIT_MIN = 1e-6  # smallest first step in lambda; smaller ones cannot move t in float64 near t_end


class _Times:
    """log alpha, sigma and lambda at given times, as float64 Python floats."""

    def __init__(self, schedule, t):
        t = torch.as_tensor(t, dtype=torch.float64)
        self.t = t.tolist()
        self.log_alpha = schedule.log_alpha(t).tolist()
        self.sigma = schedule.sigma(t).tolist()
        self.lam = schedule.lambda_(t).tolist()


# --- single updates s -> t (eps_s may be given to reuse an evaluation) --------------------


def _at_lambda(schedule, lam: float) -> Coefficients:
    return schedule.at(float(schedule.t_of_lambda(torch.tensor(lam, dtype=torch.float64))))


def first_update(model: Model, x, s, t, eps_s=None):
    """DPM-Solver-1 = DDIM (eta=0): x_t = (alpha_t/alpha_s) x_s - sigma_t expm1(h) eps_s. Order 1, 1 NFE."""
    cs, ct = model.schedule.at(s), model.schedule.at(t)
    return noise_step(x, cs, ct, model.eps(x, s) if eps_s is None else eps_s)


def second_update(model: Model, x, s, t, r1=0.5, eps_s=None, return_mid=False):
    """DPM-Solver-2 (Algorithm 1 of the paper) with midpoint at lambda_s + r1 h. Order 2, 2 NFE.

    Its second-order term is expm1(h) (eps_1 - eps_s) / (2 r1), the paper's DPM-Solver-2 (not the phi_2 form)."""
    sched = model.schedule
    cs, ct = sched.at(s), sched.at(t)
    c1 = _at_lambda(sched, cs.lam + r1 * (ct.lam - cs.lam))
    if eps_s is None:
        eps_s = model.eps(x, s)
    eps_1 = model.eps(noise_step(x, cs, c1, eps_s), c1.t)
    x_t = noise_step(x, cs, ct, torch.lerp(eps_s, eps_1, 0.5 / r1))
    return (x_t, eps_s, eps_1) if return_mid else x_t


def third_update(model: Model, x, s, t, r1=1.0 / 3.0, r2=2.0 / 3.0, eps_s=None, eps_1=None):
    """DPM-Solver-3 (Algorithm 2 of the paper), intermediate points at r1 h and r2 h. Order 3, 3 NFE.

    Each point is a noise_step with the derivative eps' estimated by the difference from eps_s."""
    sched = model.schedule
    cs, ct = sched.at(s), sched.at(t)
    h = ct.lam - cs.lam
    c1, c2 = _at_lambda(sched, cs.lam + r1 * h), _at_lambda(sched, cs.lam + r2 * h)
    if eps_s is None:
        eps_s = model.eps(x, s)
    if eps_1 is None:
        eps_1 = model.eps(noise_step(x, cs, c1, eps_s), c1.t)
    eps_2 = model.eps(noise_step(x, cs, c2, eps_s, ((eps_1 - eps_s) / (r1 * h),)), c2.t)
    return noise_step(x, cs, ct, eps_s, ((eps_2 - eps_s) / (r2 * h),))


# --- DDIM ---------------------------------------------------------------------------------


def _check_eta(opts):
    non_negative("eta", opts["eta"])
    check_thresholding(opts)


@solver("ddim", order=1, nfe_per_step=1, default_grid="logsnr", check=_check_eta,
        stochastic_if=lambda opts: opts["eta"] > 0, starts_at_alpha_zero=True, default_grids={"flow": "uniform"},
        description="DDIM; eta=0 deterministic, eta=1 DDPM ancestral")
def ddim(model: Model, x, grid, *, generator=None, eta: float = 0.0, thresholding: str = "none",
         threshold_ratio: float = 0.995, threshold_max: float = 1.0):
    """DDIM (Song et al. 2021, eq. 12). eta=0: deterministic, order 1; eta=1: DDPM ancestral. 1 NFE/step.

    Written in x0, alpha, sigma: x_t = alpha_t x0 + sqrt(sigma_t^2 - c^2) eps + c z with eps = (x_s - alpha_s x0) /
    sigma_s and c = eta sigma_t sqrt(1 - e^{-2h}), which is DDIM's sigma_t for VP and extends to any schedule
    (eta = 1: the exact posterior std of q(x_t | x_s, x0), e.g. sigma_t sqrt(sigma_s^2 - sigma_t^2) / sigma_s
    for VE). For eta > 1, c is capped at sigma_t. Starts where alpha_s = 0 (FlowSchedule's t = 1: eps = x_s / sigma_s,
    h = inf). The noise c z is the Brownian increment over the step, z = increment_normal(x, s, t) (c = g sqrt(|dt|)
    to leading order): with solvers.brownian_paths, eta = 1 follows the reverse SDE on each sample's path.
    thresholding, threshold_ratio, threshold_max: x0 thresholding (solvers.thresholding).
    """
    x0_fn = thresholded(model, thresholding, threshold_ratio, threshold_max)
    c = [model.schedule.at(t) for t in grid.tolist()]
    for s, t in zip(c[:-1], c[1:]):
        x0 = x0_fn(x, s.t)
        if eta == 0:
            x = data_step(x, s, t, x0)
            continue
        # x_t = (k / sigma_s) x_s + (alpha_t - k alpha_s / sigma_s) x0 + noise z, k = sqrt(sigma_t^2 - noise^2): with
        # r = noise / sigma_t, the x0 coefficient alpha_t (1 - e^{-h} sqrt(1 - r^2)) in a form without cancellation.
        h = t.lam - s.lam
        r = min(eta * math.sqrt(-math.expm1(-2.0 * h)), 1.0)
        root = math.sqrt(1.0 - r * r)
        b = t.alpha * (-math.expm1(-h) + math.exp(-h) * r * r / (1.0 + root))
        z = increment_normal(x, s.t, t.t, generator)
        x = torch.add((t.sigma / s.sigma * root) * x, x0, alpha=b).add_(z, alpha=r * t.sigma)
    return x


# --- singlestep DPM-Solver ----------------------------------------------------------------


def singlestep_orders(order: int, nfe: int) -> list[int]:
    """The order of each step for a budget of `nfe` evaluations, as the reference DPM-Solver splits it."""
    if order == 3:
        k = nfe // 3 + 1
        tail = {0: [2, 1], 1: [1], 2: [2]}[nfe % 3]
        return [3] * (k - len(tail)) + tail
    if order == 2:
        return [2] * (nfe // 2) + [1] * (nfe % 2)
    return [1] * nfe


def _singlestep(order: int):
    updates = {1: first_update, 2: second_update, 3: third_update}

    def solve(model: Model, x, grid, *, nfe):
        times = grid.tolist()
        for i, o in enumerate(singlestep_orders(order, nfe)):
            x = updates[o](model, x, times[i], times[i + 1])
        return x

    rule = {"steps_for_nfe": lambda nfe, options: len(singlestep_orders(order, nfe)),
            "valid_nfe": "any positive integer (the last steps take lower orders to spend it exactly)"}
    if order == 1:  # every step costs one evaluation: no budget to split
        by_budget = solve

        def solve(model: Model, x, grid):
            return by_budget(model, x, grid, nfe=len(grid) - 1)

        rule = {"nfe_per_step": 1}
    solve.__name__ = solve.__qualname__ = f"dpm_solver_{order}"
    solve.__doc__ = f"Singlestep DPM-Solver-{order} (Lu et al. 2022); order {order}, {order} NFE per full step."
    return solver(f"dpm_solver_{order}", order=order, default_grid="logsnr",
                  description=f"singlestep DPM-Solver-{order}", **rule)(solve)


for _o in (1, 2, 3):
    _singlestep(_o)


# --- multistep DPM-Solver -----------------------------------------------------------------


def _multistep(order: int):
    def solve(model: Model, x, grid, *, lower_order_final: bool = True):
        c = [model.schedule.at(t) for t in grid.tolist()]
        steps, hist = len(c) - 1, History(order)
        for i in range(steps):
            hist.push(c[i].lam, model.eps(x, c[i].t))
            o = step_order(order, i, steps, len(hist), lower_order_final)
            x = multistep_update(noise_step, x, c[i], c[i + 1], hist, o, curvature=0.5)
        return x

    solve.__name__ = solve.__qualname__ = f"dpm_solver_{order}m"
    solve.__doc__ = (f"Multistep DPM-Solver-{order} (Lu et al. 2022, App. B), warming up with lower orders; "
                     f"global order 2, 1 NFE per step.")
    # Its 3rd-order update halves the eps'' term of the Taylor expansion (curvature=0.5, as DPM-Solver's code):
    # exact only for eps linear in lambda, so the global order is 2 for 3m too (measured 2.1; 2.9 with it doubled).
    return solver(f"dpm_solver_{order}m", order=2, nfe_per_step=1, default_grid="logsnr",
                  description=f"multistep DPM-Solver-{order}" + (
                      " (its halved 2nd-derivative term gives global order 2)" if order == 3 else ""))(solve)


for _o in (2, 3):
    _multistep(_o)


# --- adaptive DPM-Solver-12 / -23 ---------------------------------------------------------


def _check_adaptive(opts):
    if opts["order"] not in (2, 3):
        raise ValueError(f"order must be 2 (DPM-Solver-12) or 3 (DPM-Solver-23), got {opts['order']!r}")
    check_positive(opts, ("rtol", "atol"))
    if not H_INIT_MIN <= positive("h_init", opts["h_init"]):
        raise ValueError(f"h_init must be a number >= {H_INIT_MIN:g} (a step in lambda), got {opts['h_init']!r}")
    if not positive("theta", opts["theta"]) <= 1:
        raise ValueError(f"theta must be a number in (0, 1] (a safety factor), got {opts['theta']!r}")
    positive_int("max_nfe", opts["max_nfe"])


@solver("dpm_solver_adaptive", order=3, adaptive=True, default_grid="logsnr", valid_nfe="adaptive: set rtol/atol",
        check=_check_adaptive, description="adaptive DPM-Solver-12/23 with error control")
def dpm_solver_adaptive(model: Model, x, grid, *, order: int = 3, rtol: float = 0.05, atol: float = 0.0078,
                        h_init: float = 0.05, theta: float = 0.9, max_nfe: int = DEFAULT_MAX_NFE):
    """Adaptive DPM-Solver-12 / -23 (Lu et al. 2022, Algorithm 4): embedded pair with step control in lambda.

    A step of size h is accepted when E = max over samples of RMS((x_high - x_low) / delta) <= 1 with
    delta = max(atol, rtol * max(|x_low|, |x|)); the next h = theta h E^(-1/order). The evaluation at
    the step start is reused across rejections. Returns the samples and the accepted times.
    x must be float32 or float64. A step that would use more than `max_nfe` evaluations in all
    raises EvaluationCapError; a step too small to move t raises RuntimeError.
    """
    if x.dtype not in ADAPTIVE_DTYPES:
        raise ValueError(f"dpm_solver_adaptive needs x_T in float32 or float64 (its error control underflows in "
                         f"lower precision), got {x.dtype}")
    sched = model.schedule
    t_s, t_end = float(grid[0]), float(grid[-1])
    lam_s, lam_end = sched.at(t_s).lam, sched.at(t_end).lam
    accepted, h, eps_s, start = [t_s], h_init, None, model.nfe
    while lam_s < lam_end:
        last = h >= lam_end - lam_s
        h = min(h, lam_end - lam_s)
        t = t_end if last else float(sched.t_of_lambda(torch.tensor(lam_s + h, dtype=torch.float64)))
        if not t < t_s:
            raise RuntimeError(f"dpm_solver_adaptive: the step size underflowed (h={h:.3g} in lambda does not move "
                               f"t={t_s:.6g}); loosen rtol/atol")
        check_cap("dpm_solver_adaptive", model.nfe - start + order - (eps_s is not None), max_nfe, t_s)
        if eps_s is None:
            eps_s = model.eps(x, t_s)
        if order == 2:
            x_low = first_update(model, x, t_s, t, eps_s=eps_s)
            x_high = second_update(model, x, t_s, t, r1=0.5, eps_s=eps_s)
        else:
            x_low, _, eps_1 = second_update(model, x, t_s, t, r1=1.0 / 3.0, eps_s=eps_s, return_mid=True)
            x_high = third_update(model, x, t_s, t, eps_s=eps_s, eps_1=eps_1)
        delta = torch.maximum(torch.full_like(x, atol), rtol * torch.maximum(x_low.abs(), x.abs()))
        err = float(((x_high - x_low) / delta).flatten(1).pow(2).mean(1).sqrt().max())
        if err <= 1.0:
            x, t_s, lam_s, eps_s = x_high, t, lam_s + h, None
            accepted.append(t)
            if last:
                break
        # a non-finite error (overflow) is a rejection that shrinks the step tenfold
        h = theta * h * max(err, 1e-10) ** (-1.0 / order) if math.isfinite(err) else 0.1 * h
    return x, torch.tensor(accepted, dtype=torch.float64)

