"""diffusers' schedulers as contenders (`--plugins diffusers`): solvers named `diffusers.<name>` on VP models.

The wrapped chain. diffusers' schedulers step a discrete chain of N = 1000 timesteps; a continuous VP schedule
becomes one as DPM-Solver wraps a discrete one, in reverse: timestep n <-> t_n = t_end + (t_start - t_end) n / (N - 1),
which on the default interval [1e-3, 1] is DPM-Solver's t_n = (n + 1) / N, and alphas_cumprod[n] = alpha(t_n)^2
(float64, from `model.schedule.log_alpha`), passed as `trained_betas` (diffusers keeps them in float32). The network
is called through `model.eps(x, t)` at the t of each (possibly fractional) timestep, so the Model counts every call.

The grid. diffusers picks its own timesteps: each contender runs with the scheduler's default spacing ("linspace",
uniform in t; DDIM's default "leading" does not start at timestep N - 1, so DDIM runs "trailing"), from timestep
N - 1 (t_start, where x_T lives) to timestep 0 (t_end): the final sigma is sigma_min (`final_sigmas_type`,
`set_alpha_to_one=False`), and where a scheduler's last step goes to sigma = 0 whatever its options (Euler, Euler
ancestral, Heun) that step, a denoising to t = 0, is not taken: the samples stop at t_end like ours. Only the grid
named "uniform" (the default) is accepted. Each returns (x, the times visited: every evaluated time, then t_end).

Scalings. DDIM, DPM-Solver, UniPC and DEIS step x itself (init_noise_sigma = 1). Euler, Euler ancestral and Heun
step y = x / alpha in sigma = sigma/alpha: y_T = x_T sqrt(1 + sigma_max^2) exactly (diffusers' init_noise_sigma is
sigma_max, a 2e-5 relative approximation on score_sde's VP), the network gets scale_model_input(y) = x, and the
result is alpha(t_end) y. The other options are diffusers' defaults, except clip_sample=False (DDIM clamps x0 to
[-1, 1] by default, an assumption about pixel data) and prediction_type="epsilon" (the Model converts).

Budgets. N timesteps allow at most N - 1 = 999 steps. Every evaluation is a step for DDIM, the DPM-Solvers, UniPC
and DEIS (K = nfe timesteps), Euler and Euler ancestral (K = nfe + 1, the step from the last to sigma = 0 not taken);
Heun makes 2K - 1 evaluations for K timesteps, the last an Euler step to sigma = 0, so here 2(K - 1) = nfe, even.
"""
from __future__ import annotations

import importlib.util
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from bench.counterparts import COUNTERPARTS
from solvers import SeededNoise, per_sample_generators, solver

N = 1000  # timesteps of the wrapped discrete chain
MAX_STEPS = N - 1

if importlib.util.find_spec("diffusers") is None:
    raise ImportError("the diffusers contenders need the diffusers package: pip install diffusers")


def _diffusers():
    import diffusers  # slow (a few seconds): imported on first use, not when the plugin registers

    return diffusers


@dataclass(frozen=True)
class Scheduler:
    """How one diffusers scheduler is run as a contender."""

    name: str  # registered as diffusers.<name>
    cls: str  # diffusers class name
    order: float  # declared global order (weak order for kind "sde"), as diffusers runs it here
    doc: str  # one-line docstring: the algorithm and where it comes from
    config: dict = field(default_factory=dict)  # options other than diffusers' defaults
    stepping: str = "x"  # "x": steps x, K = nfe; "sigma": steps x/alpha, K = nfe + 1; "heun": x/alpha, K = nfe/2 + 1
    kind: str = "ode"
    note: str = ""  # how it differs from its counterpart as run here (in its description)

    def timesteps(self, nfe: int) -> int:
        """K, the num_inference_steps given to set_timesteps for a budget of `nfe` evaluations."""
        return {"x": nfe, "sigma": nfe + 1, "heun": nfe // 2 + 1}[self.stepping]

    def steps_for_nfe(self, nfe: int, options: dict) -> int:
        """Grid steps for `nfe` (ValueError for budgets it cannot spend exactly)."""
        if self.stepping == "heun" and nfe % 2:
            raise ValueError(f"needs an even budget (2 NFE per step), got {nfe}")
        steps = nfe // 2 if self.stepping == "heun" else nfe
        if steps > MAX_STEPS:
            raise ValueError(f"takes at most {MAX_STEPS} steps, got {nfe}")
        if self.config.get("timestep_spacing") == "trailing":
            got = _trailing_count(self.timesteps(nfe))
            if got != self.timesteps(nfe):
                raise ValueError(f"cannot spend {nfe} ({got} timesteps from diffusers)")
        return steps

    @property
    def valid_nfe(self) -> str:
        """The valid budgets, in words (errors end with them: keep them after the reason)."""
        chain = f"(steps of the {N}-timestep chain)"
        if self.stepping == "heun":
            return f"even, 2 to {2 * MAX_STEPS} (2 per step, at most {MAX_STEPS} steps of the {N}-timestep chain)"
        if self.config.get("timestep_spacing") == "trailing":
            bad = [k for k in range(1, MAX_STEPS + 1) if _trailing_count(k) != k]
            return (f"1 to {MAX_STEPS} {chain} except {', '.join(map(str, bad[:4]))}, ... ({len(bad)} budgets at which "
                    "diffusers' trailing spacing makes one timestep too many, at -1)")
        return f"1 to {MAX_STEPS} {chain}"


def _trailing_count(k: int) -> int:
    """How many timesteps diffusers' "trailing" spacing makes for k steps (k + 1 for some k: float rounding)."""
    return len(np.arange(N, 0, -N / k))


def _chain(schedule, t_start: float, t_end: float) -> torch.Tensor:
    """`trained_betas` of the wrapped chain: 1 - alphas_cumprod[n] / alphas_cumprod[n - 1] at t_n, in float64."""
    log_alpha = schedule.log_alpha(_time(torch.arange(N, dtype=torch.float64), t_start, t_end))
    return -torch.expm1(2.0 * torch.diff(log_alpha, prepend=torch.zeros(1, dtype=torch.float64)))


def _time(timestep, t_start: float, t_end: float):
    """t of a (fractional) timestep: t_end + (t_start - t_end) n / (N - 1), the ends exact."""
    if isinstance(timestep, torch.Tensor):
        t = t_end + (t_start - t_end) * timestep.double() / (N - 1)
        t[timestep == 0], t[timestep == N - 1] = t_end, t_start
        return t
    n = float(timestep)
    return t_end if n == 0 else t_start if n == N - 1 else t_end + (t_start - t_end) * n / (N - 1)


def _check_grid(name: str, grid: torch.Tensor) -> None:
    uniform = torch.linspace(float(grid[0]), float(grid[-1]), len(grid), dtype=torch.float64)
    if not torch.allclose(grid, uniform, rtol=0.0, atol=1e-12):
        raise ValueError(f"solver {name!r} steps on diffusers' own timesteps (uniform in t); give timesteps='uniform' "
                         "(its default) or leave it out, and choose the interval with t_start/t_end")


def _generators(generator, batch: int):
    """The generator in the form diffusers' randn_tensor takes: None, one torch.Generator or a list, one per sample."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, SeededNoise):  # Brownian paths or seeded noise: diffusers draws through generators, so
        generator = per_sample_generators(generator.seeds)  # the same seeds, but not the path (no strong error)
    gens = list(generator)
    if len(gens) != batch:
        raise ValueError(f"got {len(gens)} per-sample generators for a batch of {batch}")
    return gens


def _run(spec: Scheduler, model, x, grid, nfe: int, generator=None):
    """Sample with diffusers' scheduler `spec.cls` from x_T at grid[0] to grid[-1]; returns (x, times visited)."""
    _check_grid(f"diffusers.{spec.name}", grid)
    t_start, t_end = float(grid[0]), float(grid[-1])
    k = spec.timesteps(nfe)
    config = dict(spec.config)
    if spec.cls == "DPMSolverSinglestepScheduler":  # what diffusers switches on itself (with a warning) when K % order
        config.setdefault("lower_order_final", k % config["solver_order"] != 0)
    with warnings.catch_warnings():  # algorithm_type="dpmsolver" is marked deprecated (removal planned for 1.0)
        warnings.filterwarnings("ignore", message=".*algorithm_type.*dpmsolver.*", category=FutureWarning)
        sched = getattr(_diffusers(), spec.cls)(num_train_timesteps=N, trained_betas=_chain(model.schedule, t_start,
                                                t_end).numpy(), prediction_type="epsilon", **config)
    sched.set_timesteps(k)
    ts = sched.timesteps
    expected = 2 * k - 1 if spec.stepping == "heun" else k
    if len(ts) != expected or float(ts[0]) != N - 1 or (spec.stepping != "x" and float(ts[-1]) != 0):
        raise RuntimeError(f"diffusers' {spec.cls} made timesteps {ts.tolist()[:3]}...{ts.tolist()[-2:]} "
                           f"({len(ts)}) for {k} steps; expected {expected} from {N - 1}"
                           + ("" if spec.stepping == "x" else " to 0"))
    y = x
    if spec.stepping != "x":  # sigma-space schedulers step y = x / alpha
        y = x * math.sqrt(1.0 + float(sched.sigmas[0]) ** 2)
    extra = {"generator": _generators(generator, x.shape[0])} if spec.kind == "sde" else {}
    for i in range(nfe):
        model_in = sched.scale_model_input(y, ts[i])
        eps = model.eps(model_in, _time(ts[i], t_start, t_end))
        y = sched.step(eps, ts[i], y, return_dict=False, **extra)[0]
    if spec.stepping != "x":
        y = y / math.sqrt(1.0 + float(sched.sigmas[nfe]) ** 2)  # at sigma_min: timestep 0
    visited = ts[:1].tolist() + ts[1::2].tolist() if spec.stepping == "heun" else ts[:nfe].tolist()
    times = [_time(v, t_start, t_end) for v in visited]
    if times[-1] != t_end:
        times.append(t_end)
    return y.to(x.dtype), torch.tensor(times, dtype=torch.float64)


SCHEDULERS = (
    Scheduler("ddim", "DDIMScheduler", 1, "DDIM (Song et al. 2021, eq. 12), eta = 0; order 1, 1 NFE per step",
              {"timestep_spacing": "trailing", "set_alpha_to_one": False, "clip_sample": False},
              note="trailing spacing; steps to timestep - N // K, which is not the next timestep when K does not "
                   "divide N"),
    Scheduler("euler", "EulerDiscreteScheduler", 1,
              "Euler in x/alpha and sigma/alpha (Karras et al. 2022, the DDIM ODE); order 1, 1 NFE per step",
              stepping="sigma"),
    Scheduler("euler_ancestral", "EulerAncestralDiscreteScheduler", 1,
              "Euler ancestral (k-diffusion), DDPM-like noise at every step; weak order 1, 1 NFE per step",
              stepping="sigma", kind="sde"),
    Scheduler("heun", "HeunDiscreteScheduler", 2,
              "Heun in x/alpha and sigma/alpha (Karras et al. 2022, Algorithm 1); order 2, 2 NFE per step",
              stepping="heun", note="2K - 1 evaluations for K timesteps in diffusers; the last, an Euler step to "
                                    "sigma = 0, not taken"),
    Scheduler("dpm_solver_2", "DPMSolverSinglestepScheduler", 2,
              "singlestep DPM-Solver-2 (Lu et al. 2022), noise prediction; order 2, 2 NFE per step",
              {"solver_order": 2, "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"},
              note="intermediate points on the timestep grid; a 1st-order last step when K is odd"),
    Scheduler("dpm_solver_3", "DPMSolverSinglestepScheduler", 2,
              "singlestep DPM-Solver-3 (Lu et al. 2022), noise prediction, 'midpoint' form; order 2 here, 3 NFE/step",
              {"solver_order": 3, "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"},
              note="the 'midpoint' 3rd-order update is 3rd order only with its last intermediate point at r = 2/3 "
                   "in lambda; diffusers puts it on the next timestep"),
    Scheduler("dpmpp_2s", "DPMSolverSinglestepScheduler", 2,
              "singlestep DPM-Solver++(2S) (Lu et al. 2022b), data prediction; order 2, 2 NFE per step",
              {"solver_order": 2, "algorithm_type": "dpmsolver++", "final_sigmas_type": "sigma_min"}),
    Scheduler("dpmpp_2m", "DPMSolverMultistepScheduler", 2,
              "multistep DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2); order 2, 1 NFE per step",
              {"solver_order": 2, "algorithm_type": "dpmsolver++", "final_sigmas_type": "sigma_min"}),
    Scheduler("dpmpp_3m", "DPMSolverMultistepScheduler", 2,
              "multistep DPM-Solver++(3M) (Lu et al. 2022b) with DPM-Solver's halved x0'' term: global order 2, "
              "1 NFE/step",
              {"solver_order": 3, "algorithm_type": "dpmsolver++", "final_sigmas_type": "sigma_min"},
              note="its 2nd-derivative term is half of eq. 10's (ours: dpmpp_3m curvature='half', equal to 1.1e-5), "
                   "exact for linear x0 only: it measures 2.1, the warm-up is not what caps it"),
    Scheduler("unipc", "UniPCMultistepScheduler", 2,
              "UniPC-2 (bh2) with the UniC corrector (Zhao et al. 2023); order 2 here, 1 NFE per step",
              {"final_sigmas_type": "sigma_min"},
              note="its last step is 1st order at every K (lower_order_final; documented as below 15 steps only)"),
    Scheduler("deis", "DEISMultistepScheduler", 2,
              "DEIS-2, log-rho (Zhang & Chen 2023; eps a polynomial in lambda) after a 1st-order warm-up; order 2, "
              "1 NFE per step",
              note="log-rho, not the paper's tAB (ours: deis variant='logrho', order=2, equal to 2.3e-6 outside "
                   "10-14 steps, where diffusers' lower_order_final still lowers the last step; our deis defaults to "
                   "tAB, order 3)"),
)


def _register(spec: Scheduler) -> None:
    name = f"diffusers.{spec.name}"

    def run(model, x, grid, *, generator=None, nfe):
        return _run(spec, model, x, grid, nfe, generator)

    run.__name__ = run.__qualname__ = name.replace(".", "_")
    run.__doc__ = f"diffusers' {spec.cls}: {spec.doc}."
    ours = COUNTERPARTS.get(name)
    description = (f"diffusers {spec.cls}" + (f" (ours: {ours})" if ours else "")
                   + (f"; {spec.note}" if spec.note else ""))
    kind = {"kind": spec.kind, "order" if spec.kind == "ode" else "weak_order": spec.order}
    solver(name, **kind, steps_for_nfe=spec.steps_for_nfe, default_grid="uniform", valid_nfe=spec.valid_nfe,
           schedules=("vp",), description=description)(run)


for _spec in SCHEDULERS:
    _register(_spec)
