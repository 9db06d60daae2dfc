"""Stochastic samplers of the reverse-time SDE (Song et al. 2021, score_sde): Euler-Maruyama, reverse diffusion, PC.

The reverse-time SDE (score_sde eq. 6), integrated in t from t_start down to t_end:
  dx = [f(t) x - g(t)^2 score(x, t)] dt + g(t) dw.
The noise of a predictor step t_cur -> t_next is the Brownian increment over the step,
`solvers.noise.increment_normal(x, t_cur, t_next, generator)`: with `solvers.brownian_paths` every sample
follows its own path W(t) whatever the grid (strong errors against a fine-step solution on that path);
the Langevin corrector's noise is not a Brownian increment of this SDE (an MCMC move at fixed t) and is
a fresh draw (`randn_like`). With one generator or path per sample, a sample does not depend on the
batch it is drawn in. All solvers add noise on the last
step too, so they target p_{t_end}; `sample(..., denoise_final=True)` returns x0(x, t_end) instead.
"""
from __future__ import annotations

import math

import torch

from .model import Model
from .noise import increment_normal, randn_like
from .options import positive
from .registry import solver

PREDICTORS = ("reverse_diffusion", "euler_maruyama")
STEP_SIZES = ("sigma", "batch")


def forward_step(schedule, t_hi: float, t_lo: float) -> tuple[float, float]:
    """The exact forward transition x_hi = a x_lo + sqrt(v) z between two times, as (a, v) in float64.

    a = alpha_hi / alpha_lo and v = sigma_hi^2 - a^2 sigma_lo^2 = -sigma_hi^2 expm1(2 (lambda_hi - lambda_lo)):
    for VP, a^2 = 1 - beta_i and v = beta_i; for VE, a = 1 and v = sigma_hi^2 - sigma_lo^2.
    """
    hi, lo = schedule.at(t_hi), schedule.at(t_lo)
    return math.exp(hi.log_alpha - lo.log_alpha), -hi.sigma * hi.sigma * math.expm1(2.0 * (hi.lam - lo.lam))


def em_step(model: Model, x, t_cur: float, t_next: float, generator=None):
    """One Euler-Maruyama step of the reverse SDE: x + dt * drift + g(t) sqrt(|dt|) z, with dt < 0. 1 NFE."""
    dt = t_next - t_cur
    g = math.sqrt(model.schedule.at(t_cur).g2)
    z = increment_normal(x, t_cur, t_next, generator)
    return x + dt * model.sde_drift(x, t_cur) + (g * math.sqrt(-dt)) * z


def reverse_diffusion_step(model: Model, x, t_cur: float, t_next: float, generator=None):
    """score_sde's reverse-diffusion predictor with the exact forward step (a, v) from t_next to t_cur. 1 NFE.

    The forward step x_cur = x_next + (a - 1) x_next + sqrt(v) z is reversed as
    x_next = x - (a - 1) x + v score(x, t_cur) + sqrt(v) z; a and v stay valid on any grid. z is the Brownian
    increment over the step (sqrt(v) = g sqrt(|dt|) to leading order).
    """
    a, v = forward_step(model.schedule, t_cur, t_next)
    z = increment_normal(x, t_cur, t_next, generator)
    return (2.0 - a) * x + v * model.score(x, t_cur) + math.sqrt(v) * z


def langevin_step(model: Model, x, t: float, snr: float, alpha: float, step_size: str = "sigma", generator=None):
    """One Langevin corrector step at time t (score_sde Algorithms 4-5): x + eps score + sqrt(2 eps) z. 1 NFE.

    score_sde's step is eps = 2 alpha (snr ||z|| / ||score||)^2 with both norms averaged over the batch
    (`step_size="batch"`): a sample then depends on the batch it is in. The default `"sigma"` puts in
    the values these norms take when noise dominates, ||z|| = sqrt(D) and ||score|| = sqrt(D) / sigma_t,
    so eps = 2 alpha (snr sigma_t)^2 depends on t alone and every sample is independent of its batch.
    Per-sample norms ||z_i||, ||score_i|| would also be batch-independent, but in low dimension
    ||score_i|| comes near 0 with real probability (in 2-D, 1/||score_i||^2 has no mean): the steps
    blow up and pc diverges on a 2-D mixture, so they are not offered.
    """
    score = model.score(x, t)
    z = randn_like(x, generator)
    if step_size == "batch":
        ratio = snr * float(_norms(z).mean()) / float(_norms(score).mean())
    else:
        ratio = snr * model.schedule.at(t).sigma
    step = 2.0 * alpha * ratio * ratio
    return x + step * score + math.sqrt(2.0 * step) * z


def _norms(v: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(v.flatten(1), dim=1)


@solver("euler_maruyama", kind="sde", weak_order=1, strong_order=1, nfe_per_step=1, default_grid="uniform",
        description="Euler-Maruyama on the reverse-time SDE")
def euler_maruyama(model: Model, x, grid, *, generator=None):
    """Euler-Maruyama on the reverse-time SDE (Song et al. 2021, eq. 6). Weak order 1; 1 NFE per step.

    Strong order 1, not 1/2: the noise is additive (g depends on t alone), so Euler-Maruyama is Milstein here.
    """
    times = grid.tolist()
    for t_cur, t_next in zip(times[:-1], times[1:]):
        x = em_step(model, x, t_cur, t_next, generator)
    return x


@solver("reverse_diffusion", kind="sde", weak_order=1, nfe_per_step=1, default_grid="uniform",
        description="score_sde reverse-diffusion predictor, exact forward step")
def reverse_diffusion(model: Model, x, grid, *, generator=None):
    """score_sde's reverse-diffusion predictor (Song et al. 2021, App. E, eq. 46 for VP). Weak order 1; 1 NFE per step.

    Each step uses the forward process's exact transition between grid points (VP: beta_i =
    1 - alpha^2(t_{i-1}) / alpha^2(t_i); VE: sigma^2(t_i) - sigma^2(t_{i-1})), so coarse grids stay defined.
    """
    times = grid.tolist()
    for t_cur, t_next in zip(times[:-1], times[1:]):
        x = reverse_diffusion_step(model, x, t_cur, t_next, generator)
    return x


def _check_pc(opts):
    if opts["predictor"] not in PREDICTORS:
        raise ValueError(f"unknown predictor {opts['predictor']!r}; valid: {', '.join(PREDICTORS)}")
    n = opts["corrector_steps"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"corrector_steps must be an integer >= 0, got {n!r}")
    if opts["step_size"] not in STEP_SIZES:
        raise ValueError(f"unknown step_size {opts['step_size']!r}; valid: {', '.join(STEP_SIZES)}")
    positive("snr", opts["snr"])


@solver("pc", kind="sde", weak_order=1, nfe_per_step=lambda opts: 1 + opts["corrector_steps"], default_grid="uniform",
        valid_nfe="multiples of 1 + corrector_steps (even with the default corrector_steps=1)", check=_check_pc,
        description="predictor-corrector with Langevin corrector (score_sde)")
def pc(model: Model, x, grid, *, generator=None, predictor: str = "reverse_diffusion", corrector_steps: int = 1,
       snr: float = 0.16, step_size: str = "sigma"):
    """Predictor-corrector sampling (Song et al. 2021, Algorithms 2-5): a predictor step, then Langevin steps.

    The corrector at t_{i+1} uses alpha = a^2 of the step just taken, i.e. 1 - beta_i for VP and 1 for VE
    (sub-VP takes the same general form). Weak order 1; 1 + corrector_steps NFE per step, every
    corrector evaluation counted. `step_size`: "sigma" (batch-independent, default) or "batch"
    (score_sde's batch-mean norms); see `langevin_step`.
    """
    step = {"reverse_diffusion": reverse_diffusion_step, "euler_maruyama": em_step}[predictor]
    times = grid.tolist()
    for t_cur, t_next in zip(times[:-1], times[1:]):
        x = step(model, x, t_cur, t_next, generator)
        alpha = forward_step(model.schedule, t_cur, t_next)[0] ** 2
        for _ in range(corrector_steps):
            x = langevin_step(model, x, t_next, snr, alpha, step_size, generator)
    return x
