"""Today's stochastic samplers: EDM's churn (Algorithm 2), DPM-Solver++(2M/3M) SDE, Restart sampling, Euler ancestral.

All work on any schedule through Coefficients from `model.schedule.at(t)`. The DPM-Solver++ SDE updates are the
exact solution of the reverse SDE's linear part in lambda (Lu et al. 2022b, SDE-DPM-Solver++; k-diffusion's
eta-family): with h = lambda_t - lambda_s and H = (1 + eta) h,
  x_t = (sigma_t / sigma_s) e^{-eta h} x_s + alpha_t sum_k h^k H phi_{k+1}(-H) x0^{(k)}(lambda_s)
        + sigma_t sqrt(1 - e^{-2 eta h}) z,
which is `data_step` at eta = 0 and the SDE-DPM-Solver++ of the paper at eta = 1.
"""
from __future__ import annotations

import math

import torch

from .exponential import PHI, History, step_order
from .grids import make_grid
from .model import Model
from .noise import increment_normal, randn_like
from .options import check_thresholding, non_negative, one_of, positive_int
from .registry import get_solver, list_solvers, solver
from .schedules import Coefficients
from .sde import forward_step
from .thresholding import thresholded

SOLVER_TYPES = ("midpoint", "heun")
RESTART_S = (0.1, 1.0)  # default restart interval in sigma/alpha (gmm2d-scale data: modes 0.25 wide, 2 apart)


def _coefficients(model: Model, grid) -> list[Coefficients]:
    return [model.schedule.at(t) for t in grid.tolist()]


def _t_at_s(schedule, s: float) -> float:
    """The time where sigma/alpha = s, i.e. lambda = -log s."""
    return float(schedule.t_of_lambda(torch.tensor(-math.log(s), dtype=torch.float64)))


# --- DPM-Solver++ SDE ---------------------------------------------------------------------


def sde_data_step(x, s: Coefficients, t: Coefficients, x0, derivatives=(), eta: float = 1.0, generator=None):
    """One SDE-DPM-Solver++ step s -> t (module docstring): data_step with the noise share eta; x0 may be extrapolated.

    Its noise is the reverse SDE's Brownian increment over the step (solvers.noise.increment_normal). From alpha_s = 0
    (lambda_s = -inf) it is x_t = alpha_t x0 + sigma_t z for eta > 0 (DDIM's step for eta = 0).
    """
    h = t.lam - s.lam
    eh = eta * h if eta else 0.0  # 0 * inf is nan: eta = 0 from lambda = -inf keeps x's share sigma_t / sigma_s
    big = h + eh
    out = x.mul(t.sigma / s.sigma * math.exp(-eh)).add_(x0, alpha=t.alpha * -math.expm1(-big))
    for k, d in enumerate(derivatives, start=1):
        out = out.add_(d, alpha=t.alpha * h**k * big * PHI[k + 1](-big))
    if eta:
        out = out.add_(increment_normal(x, s.t, t.t, generator), alpha=t.sigma * math.sqrt(-math.expm1(-2.0 * eh)))
    return out


def _check_eta(opts):
    non_negative("eta", opts["eta"])
    check_thresholding(opts)


def _check_2m_sde(opts):
    _check_eta(opts)
    one_of(opts, "solver_type", SOLVER_TYPES)


@solver("dpmpp_2m_sde", kind="sde", weak_order=2, strong_order=1, nfe_per_step=1, default_grid="logsnr",
        check=_check_2m_sde, starts_at_alpha_zero=True,
        description="DPM-Solver++(2M) SDE, data prediction, eta-family")
def dpmpp_2m_sde(model: Model, x, grid, *, generator=None, eta: float = 1.0, solver_type: str = "midpoint",
                 lower_order_final: bool = True, thresholding: str = "none", threshold_ratio: float = 0.995,
                 threshold_max: float = 1.0):
    """DPM-Solver++(2M) SDE (Lu et al. 2022b; k-diffusion's sample_dpmpp_2m_sde). Weak order 2 (paired on Brownian
    paths, gmm2d, eta = 1: 2.4 over NFE 8-64), strong order 1 (additive noise; measured 0.81); 1 NFE per step.

    x0' is the backward difference of the last two data predictions; solver_type "midpoint" puts x0 + (h/2) x0' in
    the x0 term (eta = 0: dpmpp_2m exactly), "heun" adds the exact Taylor term h H phi_2(-H) x0'. The first step, and
    with lower_order_final the last one below 10 steps, are first order (as dpmpp_2m). thresholding, threshold_ratio,
    threshold_max: x0 thresholding (solvers.thresholding).
    """
    x0_fn = thresholded(model, thresholding, threshold_ratio, threshold_max)
    c = _coefficients(model, grid)
    steps, hist = len(c) - 1, History(2)
    for i in range(steps):
        s, t = c[i], c[i + 1]
        hist.push(s.lam, x0_fn(x, s.t))
        if step_order(2, i, steps, len(hist), lower_order_final) == 1:
            x = sde_data_step(x, s, t, hist.newest(), (), eta, generator)
        elif solver_type == "midpoint":
            (l0, l1), (m0, m1) = hist.lams, hist.values
            x = sde_data_step(x, s, t, torch.lerp(m0, m1, 1.0 + 0.5 * (t.lam - s.lam) / (l1 - l0)), (), eta, generator)
        else:
            x = sde_data_step(x, s, t, hist.newest(), hist.derivatives(2), eta, generator)
    return x


@solver("dpmpp_3m_sde", kind="sde", weak_order=2, strong_order=1, nfe_per_step=1, default_grid="logsnr",
        check=_check_eta, starts_at_alpha_zero=True,
        description="DPM-Solver++(3M) SDE, data prediction, halved x0'' term (k-diffusion)")
def dpmpp_3m_sde(model: Model, x, grid, *, generator=None, eta: float = 1.0, lower_order_final: bool = True,
                 thresholding: str = "none", threshold_ratio: float = 0.995, threshold_max: float = 1.0):
    """DPM-Solver++(3M) SDE (k-diffusion's sample_dpmpp_3m_sde). Weak order 2 (its halved x0''
    term: order 2 as dpmpp_3m(curvature="half")), strong order 1 (measured 0.85 on gmm2d); 1 NFE per step.

    x0' and x0'' of the parabola through the last three data predictions; the x0'' term is halved, as k-diffusion
    writes it: eta = 0 is dpmpp_3m(curvature="half") exactly. Warms up with 1st- and 2nd-order (heun-type) steps.
    thresholding, threshold_ratio, threshold_max: x0 thresholding (solvers.thresholding).
    """
    x0_fn = thresholded(model, thresholding, threshold_ratio, threshold_max)
    c = _coefficients(model, grid)
    steps, hist = len(c) - 1, History(3)
    for i in range(steps):
        s, t = c[i], c[i + 1]
        hist.push(s.lam, x0_fn(x, s.t))
        o = step_order(3, i, steps, len(hist), lower_order_final)
        if o == 2:  # dpmpp_3m's 2nd-order step: x0 extrapolated to the lambda-midpoint
            (l0, l1), (m0, m1) = hist.lams[-2:], hist.values[-2:]
            x = sde_data_step(x, s, t, torch.lerp(m0, m1, 1.0 + 0.5 * (t.lam - s.lam) / (l1 - l0)), (), eta, generator)
            continue
        d = hist.derivatives(o)
        x = sde_data_step(x, s, t, hist.newest(), d[:1] + tuple(0.5 * v for v in d[1:]), eta, generator)
    return x


# --- EDM Algorithm 2 ------------------------------------------------------------------------


def _check_edm(opts):
    for name in ("s_churn", "s_tmin", "s_noise"):
        non_negative(name, opts[name])
    if not opts["s_tmax"] >= opts["s_tmin"]:
        raise ValueError(f"s_tmax must be >= s_tmin (a range of sigma/alpha), got {opts['s_tmax']!r} < "
                         f"{opts['s_tmin']!r}")


@solver("edm_sde", kind="sde", order=lambda o: 2 if o["s_churn"] == 0 else 1, nfe_per_step=2, default_grid="karras",
        check=_check_edm,
        valid_nfe="even positive integers", description="EDM stochastic sampler (Algorithm 2): churn, then Heun")
def edm_sde(model: Model, x, grid, *, generator=None, s_churn: float = 0.0, s_tmin: float = 0.0,
            s_tmax: float = math.inf, s_noise: float = 1.0):
    """EDM's Algorithm 2 (Karras et al. 2022): raise the noise level, then a Heun step. 2 NFE per step.

    Weak order 1 with churn (its noise enters as in Euler-Maruyama), 2 without (it is heun then).

    On y = x/alpha and s = sigma/alpha (EDM's sigma; `heun`'s variables): where s_tmin <= s_i <= s_tmax,
    s_hat = (1 + gamma) s_i with gamma = min(s_churn / N, sqrt(2) - 1), capped at s(T) where the schedule ends,
    and y_hat = y + s_noise sqrt(s_hat^2 - s_i^2) z; then heun's step from s_hat to s_{i+1}. Defaults as EDM's
    generate.py (s_churn 0, s_tmin 0, s_tmax inf, s_noise 1; its ImageNet-64 setting: 40, 0.05, 50, 1.003).
    s_churn = 0 is `heun` and draws nothing. The churn noise is a forward jump from t_i up to t_hat, not a Brownian
    increment of the step t_i -> t_{i+1}: randn_like.
    """
    sched = model.schedule
    times = grid.tolist()
    alpha = sched.alpha(grid).tolist()
    s = torch.exp(-sched.lambda_(grid)).tolist()
    n = len(times) - 1
    gamma_max = min(s_churn / n, math.sqrt(2.0) - 1.0)
    s_top = math.exp(-sched.at(sched.T).lam)  # the schedule ends at T: s_hat goes no higher
    churn = [i for i in range(n) if gamma_max > 0 and s_tmin <= s[i] <= s_tmax and s[i] < s_top]
    t_hat, a_hat, s_hat, jump = times[:n], alpha[:n], s[:n], [0.0] * n  # no churn: the grid's own
    if churn:  # the raised levels, their times and alphas, for every churned step at once (float64)
        raised = torch.tensor([min((1.0 + gamma_max) * s[i], s_top) for i in churn], dtype=torch.float64)
        t_raised = sched.t_of_lambda(-torch.log(raised))
        for i, t_i, a_i, s_i in zip(churn, t_raised.tolist(), sched.alpha(t_raised).tolist(), raised.tolist()):
            t_hat[i], a_hat[i], s_hat[i] = t_i, a_i, s_i
            jump[i] = s_noise * math.sqrt(s_i * s_i - s[i] * s[i])
    y = x / alpha[0]
    for i in range(n):
        if jump[i]:
            y = y + jump[i] * randn_like(y, generator)
        ds = s[i + 1] - s_hat[i]
        d = model.eps(a_hat[i] * y, t_hat[i])
        y_next = y + ds * d
        d_next = model.eps(alpha[i + 1] * y_next, times[i + 1])
        y = y + (0.5 * ds) * (d + d_next)
    return alpha[-1] * y


# --- Restart --------------------------------------------------------------------------------


def _per_step(spec) -> int | None:
    """Evaluations every step of a fixed-step ODE solver costs with its defaults; None if its steps differ in cost."""
    per = spec.evaluations_per_step()
    if per is None and not spec.adaptive and all(spec.steps(b) == b for b in range(1, 25)):
        per = 1
    return per


def restart_solvers() -> list[str]:
    """The ODE solvers restart can use: fixed-step, every step the same number of evaluations with their defaults."""
    return [n for n in list_solvers("ode") if not get_solver(n).adaptive and _per_step(get_solver(n)) is not None]


def _check_restart(opts):
    if opts["main_solver"] not in restart_solvers():
        valid = ", ".join(restart_solvers())
        raise ValueError(f"unknown main solver {opts['main_solver']!r} for restart; valid: {valid}")
    positive_int("restart_steps", opts["restart_steps"])
    n = opts["steps_per_restart"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"steps_per_restart must be an integer >= 1, or 0 for a quarter of the budget, got {n!r}")
    for name in ("t_min", "t_max"):
        v = opts[name]
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            raise ValueError(f"{name} must be a finite time or None, got {v!r}")
    if opts["t_min"] is not None and opts["t_max"] is not None and not opts["t_min"] < opts["t_max"]:
        raise ValueError(f"restart interval needs t_min < t_max, got [{opts['t_min']!r}, {opts['t_max']!r}]")


def _split(nfe: int, opts: dict) -> tuple[int, int, int]:
    """(evaluations per main-solver step, main-pass steps, steps per restart) for a budget of nfe evaluations."""
    per, k = _per_step(get_solver(opts["main_solver"])), opts["restart_steps"]
    if nfe % per:
        raise ValueError(f"spends {per} evaluations per step of its main solver {opts['main_solver']!r}, so needs a "
                         f"budget divisible by {per}, got {nfe}")
    steps = nfe // per
    n_r = opts["steps_per_restart"] or max(1, steps // (4 * k))
    if steps - k * n_r < 1:
        raise ValueError(f"needs {k} x {n_r} steps for its restarts plus at least one main step, {per} evaluations "
                         f"each: a budget of at least {per * (k * n_r + 1)}, got {nfe}")
    return per, steps - k * n_r, n_r


def _restart_steps(nfe: int, opts: dict) -> int:
    return _split(nfe, opts)[1]


@solver("restart", kind="sde", order=lambda o: get_solver(o["main_solver"]).declared_order(),
        steps_for_nfe=_restart_steps, default_grid="karras", check=_check_restart,
        valid_nfe="multiples of the main solver's NFE per step covering the restarts and one main step "
                  "(defaults: even budgets >= 4)",
        description="Restart sampling: ODE pass with forward jumps back over [t_min, t_max]")
def restart(model: Model, x, grid, *, nfe, generator=None, main_solver: str = "heun", t_min: float | None = None,
            t_max: float | None = None, restart_steps: int = 1, steps_per_restart: int = 0):
    """Restart sampling (Xu et al. 2023, Algorithm 1): an ODE pass restarted restart_steps times over [t_min, t_max].

    `main_solver` (any of `restart_solvers()`, default heun) runs the grid; at the first grid time t_lo <= t_min the
    sample jumps forward to t_max by the exact forward transition (x = a x + sqrt(v) z, fresh noise: randn_like) and
    the main solver takes steps_per_restart steps on its default grid back to t_lo; restart_steps times; then the grid
    goes on. Budget, in main-solver steps S = nfe / (its NFE per step): restart_steps x steps_per_restart for the
    restarts (steps_per_restart = 0, the default: max(1, S // (4 restart_steps)), about a quarter), the rest for the
    main pass (its grid's steps). t_min, t_max: times in [t_end, t_start]; None: where sigma/alpha = 0.1 and 1.0
    (clipped to the grid). Weak order: the main solver's order (heun: 2; the jumps are exact). The main pass is split
    at t_lo, so a multistep main solver warms up again after it.
    """
    sched, spec = model.schedule, get_solver(main_solver)
    t_start, t_end = float(grid[0]), float(grid[-1])
    lo = max(_t_at_s(sched, RESTART_S[0]), t_end) if t_min is None else t_min
    hi = min(_t_at_s(sched, RESTART_S[1]), t_start) if t_max is None else t_max
    if not t_end <= lo < hi <= t_start:
        raise ValueError(f"restart interval [t_min, t_max] = [{lo:g}, {hi:g}] must lie in [t_end, t_start] = "
                         f"[{t_end:g}, {t_start:g}] with t_min < t_max")
    per, _, n_r = _split(nfe, {"main_solver": main_solver, "restart_steps": restart_steps,
                               "steps_per_restart": steps_per_restart})
    extra = {"generator": None} if spec.takes_generator else {}

    def ode(x, times):
        if spec.steps_for_nfe is not None:
            return spec.fn(model, x, times, nfe=per * (len(times) - 1), **extra)
        return spec.fn(model, x, times, **extra)

    j = next(i for i, u in enumerate(grid.tolist()) if i > 0 and u <= lo)  # exists: grid[-1] = t_end <= lo
    x = ode(x, grid[: j + 1])
    t_lo = float(grid[j])
    a, v = forward_step(sched, hi, t_lo)
    back = make_grid(sched, spec.grid_for(sched), n_r, hi, t_lo)
    for _ in range(restart_steps):
        x = ode(torch.add(a * x, randn_like(x, generator), alpha=math.sqrt(v)), back)
    return ode(x, grid[j:]) if j < len(grid) - 1 else x


# --- Euler ancestral ------------------------------------------------------------------------


@solver("euler_ancestral", kind="sde", weak_order=1, nfe_per_step=1, default_grid="logsnr", starts_at_alpha_zero=True,
        default_grids={"flow": "uniform"}, description="Euler ancestral = ddim(eta=1), DDPM ancestral sampling")
def euler_ancestral(model: Model, x, grid, *, generator=None):
    """Euler ancestral (k-diffusion's sample_euler_ancestral, diffusers' EulerAncestralDiscreteScheduler): the same
    algorithm as ddim(eta=1), whose function it calls (DDPM ancestral sampling). Weak order 1; 1 NFE per step."""
    from .dpm import ddim

    return ddim(model, x, grid, generator=generator, eta=1.0)
