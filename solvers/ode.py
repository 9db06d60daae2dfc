"""Classical integrators of the probability-flow ODE: Euler, Heun (EDM), RK45 (scipy), and the
high-accuracy DOP853 reference solution that errors are measured against."""
from __future__ import annotations

import numpy as np
import torch
from scipy.integrate import solve_ivp

from .model import Model
from .options import DEFAULT_MAX_NFE, check_cap, check_positive, positive_int
from .registry import solver


@solver("euler", order=1, nfe_per_step=1, default_grid="logsnr", default_grids={"flow": "uniform"},
        starts_at_alpha_zero=True, description="Euler on the PF-ODE in t")
def euler(model: Model, x, grid):
    """Explicit Euler on the PF-ODE dx/dt = f x - g^2/2 score, in t. Order 1, 1 NFE per step.

    Under FlowSchedule the drift is the velocity (Model.ode_drift), so this is the flow-matching Euler sampler,
    on the uniform grid by default there."""
    times = grid.tolist()
    for t_cur, t_next in zip(times[:-1], times[1:]):
        x = x + (t_next - t_cur) * model.ode_drift(x, t_cur)
    return x


@solver("heun", order=2, nfe_per_step=2, default_grid="karras", valid_nfe="even positive integers",
        description="EDM Heun (Algorithm 1)")
def heun(model: Model, x, grid):
    """EDM's Algorithm 1 (Karras et al. 2022) on the ODE in x/alpha and sigma/alpha. Order 2, 2 NFE per step.

    With y = x/alpha and s = sigma/alpha = e^{-lambda}, the PF-ODE is dy/ds = eps(alpha y, t).
    Every step is corrected, since t_end > 0 (EDM skips the correction only when it reaches 0).
    """
    sched = model.schedule
    times = grid.tolist()
    alpha = sched.alpha(grid).tolist()
    s = torch.exp(-sched.lambda_(grid)).tolist()
    y = x / alpha[0]
    for i in range(len(times) - 1):
        ds = s[i + 1] - s[i]
        d = model.eps(alpha[i] * y, times[i])
        y_next = y + ds * d
        d_next = model.eps(alpha[i + 1] * y_next, times[i + 1])
        y = y + (0.5 * ds) * (d + d_next)
    return alpha[-1] * y


def solve_pf_ode(model: Model, x, t_start: float, t_end: float, method: str, rtol: float, atol: float,
                 max_nfe: int | None = None):
    """Integrate the PF-ODE with scipy.integrate.solve_ivp in float64 on the flattened batch.

    With `max_nfe`, an evaluation past that many raises EvaluationCapError instead of being made.
    """
    shape, dtype, device = x.shape, x.dtype, x.device
    start = model.nfe

    def fun(t, y):
        if max_nfe is not None:
            check_cap(method.lower(), model.nfe - start + 1, max_nfe, float(t))
        xt = torch.from_numpy(y).reshape(shape).to(device=device, dtype=dtype)
        return model.ode_drift(xt, float(t)).double().cpu().numpy().reshape(-1)

    y0 = x.detach().double().cpu().numpy().reshape(-1)
    sol = solve_ivp(fun, (float(t_start), float(t_end)), y0, method=method, rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"{method} failed: {sol.message}")
    return torch.from_numpy(sol.y[:, -1]).reshape(shape).to(device=device, dtype=dtype), sol.t


def _check_rk45(opts):
    check_positive(opts, ("rtol", "atol"))
    positive_int("max_nfe", opts["max_nfe"])


@solver("rk45", order=5, adaptive=True, default_grid="uniform", valid_nfe="adaptive: set rtol/atol",
        check=_check_rk45, starts_at_alpha_zero=True, description="scipy RK45 on the PF-ODE (score_sde)")
def rk45(model: Model, x, grid, *, rtol: float = 1e-5, atol: float = 1e-5, max_nfe: int = DEFAULT_MAX_NFE):
    """Dormand-Prince RK45 through scipy.integrate.solve_ivp, as score_sde's ODE sampler. Order 5, adaptive.

    More than `max_nfe` evaluations raise EvaluationCapError.
    """
    x, times = solve_pf_ode(model, x, float(grid[0]), float(grid[-1]), "RK45", rtol, atol, max_nfe)
    return x, torch.from_numpy(np.asarray(times, dtype=np.float64))


def reference_solution(model: Model, x_T: torch.Tensor, t_start: float | None = None, t_end: float | None = None,
                       rtol: float = 1e-10, atol: float = 1e-10) -> torch.Tensor:
    """High-accuracy PF-ODE solution from x_T: scipy DOP853 in float64. Solver errors are measured against it.

    From alpha = 0 (FlowSchedule's t = 1) the drift is the velocity, which needs a model with x0 there.
    """
    sched = model.schedule
    t_start = sched.T if t_start is None else t_start
    t_end = sched.default_t_end if t_end is None else t_end
    if sched.at(t_start).alpha == 0.0 and not model.gives_x0_at_alpha_zero:
        raise ValueError(f"a model predicting {model.prediction!r} gives no PF-ODE drift at t_start={t_start:g}, where "
                         f"alpha = 0: give t_start < {t_start:g} or a model predicting x0, v or flow")
    with torch.no_grad():
        x, _ = solve_pf_ode(model, x_T.double(), t_start, t_end, "DOP853", rtol, atol)
    return x

