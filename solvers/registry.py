"""One registry of solvers and the `sample` entry point.

A solver is a function `fn(model, x, grid, nfe, generator, **options) -> x` that walks the float64
time grid `grid` (decreasing, K + 1 times) within a budget of `nfe` evaluations and uses only the forms `Model` provides. Its entry
declares its kind, its convergence order, its default grid and how an NFE budget maps to steps.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .grids import check_interval, make_grid
from .model import Model, ModelOutputError


@dataclass(frozen=True)
class SolverSpec:
    name: str
    fn: Callable
    kind: str  # "ode" (deterministic, PF-ODE) or "sde" (stochastic)
    order: float  # ode: global order; sde: weak order
    default_grid: str
    nfe_per_step: int | None  # fixed evaluations per step (with default options); None for adaptive or mixed
    steps_for_nfe: Callable[[int, dict], int] | None  # (budget, resolved options) -> steps; None for adaptive
    valid_nfe: str = "any positive integer"
    options: dict = field(default_factory=dict)  # option name -> default
    check_options: Callable[[dict], None] | None = None
    description: str = ""
    stochastic_if: Callable[[dict], bool] | None = None  # kind "ode" solvers that draw noise for some options

    def stochastic(self, options: dict | None = None) -> bool:
        """Whether this solver with these options draws noise: every 'sde' solver, and e.g. ddim with eta > 0."""
        if self.kind == "sde":
            return True
        return self.stochastic_if is not None and bool(self.stochastic_if(self.resolve_options(options or {})))

    @property
    def adaptive(self) -> bool:
        return self.steps_for_nfe is None

    def steps(self, nfe: int, options: dict | None = None) -> int:
        """Grid steps for a budget of exactly `nfe` evaluations; a ValueError naming the valid budgets if none."""
        if self.adaptive:
            raise ValueError(f"solver {self.name!r} is adaptive: set its tolerances (rtol, atol), not nfe")
        try:
            return self.steps_for_nfe(check_nfe(nfe), self.resolve_options(options or {}))
        except ValueError as e:
            raise ValueError(f"solver {self.name!r} {e}; valid budgets: {self.valid_nfe}") from None

    def budgets(self, nfes, options: dict | None = None) -> list[int]:
        """The budgets of `nfes` (in their order) that this solver spends exactly with `options`, by `steps`.

        An adaptive solver spends no fixed budget: []. Unknown or invalid options are a ValueError.
        """
        self.resolve_options(options or {})
        if self.adaptive:
            return []
        ok = []
        for n in nfes:
            try:
                self.steps(n, options)
            except ValueError:
                continue
            ok.append(n)
        return ok

    def resolve_options(self, given: dict) -> dict:
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            valid = ", ".join(sorted(self.options)) or "none"
            raise ValueError(f"unknown option(s) {', '.join(unknown)} for solver {self.name!r}; valid options: {valid}")
        opts = {**self.options, **given}
        if self.check_options is not None:
            self.check_options(opts)
        return opts


_REGISTRY: dict[str, SolverSpec] = {}


def register(spec: SolverSpec) -> SolverSpec:
    if spec.kind not in ("ode", "sde"):
        raise ValueError(f"solver kind must be 'ode' or 'sde', got {spec.kind!r}")
    if spec.name in _REGISTRY:
        raise ValueError(f"solver {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def list_solvers(kind: str | None = None) -> list[str]:
    """Every registered solver name (optionally only 'ode' or 'sde' ones), in registration order."""
    return [n for n, s in _REGISTRY.items() if kind is None or s.kind == kind]


def get_solver(name: str) -> SolverSpec:
    if name not in _REGISTRY:
        raise ValueError(f"unknown solver {name!r}; valid: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def steps_every(nfe_per_step: int) -> Callable[[int, dict], int]:
    """NFE rule of a solver that spends exactly `nfe_per_step` evaluations on every step."""

    def steps(nfe: int, options: dict) -> int:
        if nfe % nfe_per_step:
            raise ValueError(f"needs an NFE budget that is a multiple of {nfe_per_step}, got {nfe}")
        return nfe // nfe_per_step

    return steps


def check_nfe(nfe) -> int:
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe <= 0:
        raise ValueError(f"nfe must be a positive integer, got {nfe!r}")
    return nfe


@dataclass
class SampleInfo:
    solver: str
    nfe: int  # evaluations actually made, counted by the model
    steps: int  # grid steps (adaptive solvers: accepted steps)
    grid: torch.Tensor  # float64 times actually stepped through
    options: dict


def sample(model: Model, x_T: torch.Tensor, solver: str, nfe: int | None = None, t_start: float | None = None,
           t_end: float | None = None, timesteps=None, generator=None, denoise_final: bool = False,
           return_info: bool = False, **options):
    """Turn prior noise `x_T` at `t_start` into samples at `t_end` with a registered solver.

    Fixed-step solvers spend exactly `nfe` model evaluations; adaptive solvers take tolerances
    (`rtol`, `atol`) and an evaluation cap (`max_nfe`) instead and report what they used in
    `model.nfe` and in the info. `timesteps` is a grid name or an explicit decreasing tensor of
    times; with a tensor, `t_start`/`t_end` may be left out, and if given must equal its first/last
    time exactly (else ValueError). x_T needs at least one sample (B >= 1).
    With `denoise_final`, the last evaluation returns the Tweedie estimate x0(x, t_end).
    Returns the samples, or (samples, SampleInfo) with `return_info=True`.
    """
    spec = get_solver(solver)
    if not isinstance(model, Model):
        raise TypeError(f"model must be a solvers.Model, got {type(model).__name__}")
    if not isinstance(x_T, torch.Tensor) or not x_T.is_floating_point():
        raise TypeError("x_T must be a floating-point tensor")
    if x_T.ndim == 0 or x_T.shape[0] == 0:
        raise ValueError(f"x_T must be shaped (B, ...) with at least one sample, got shape {tuple(x_T.shape)}")
    opts = spec.resolve_options(options)
    sched = model.schedule
    if timesteps is not None and not isinstance(timesteps, str):
        ends = torch.as_tensor(timesteps, dtype=torch.float64).flatten()
        if len(ends) and any(v is not None and v != float(e) for v, e in ((t_start, ends[0]), (t_end, ends[-1]))):
            raise ValueError(f"t_start={t_start!r}, t_end={t_end!r} conflict with the explicit timesteps, which run "
                             f"from {float(ends[0])!r} to {float(ends[-1])!r}; give the times alone or matching ends")
    t_start = sched.T if t_start is None else t_start
    t_end = sched.default_t_end if t_end is None else t_end
    timesteps = spec.default_grid if timesteps is None else timesteps
    if spec.adaptive:
        if nfe is not None:
            raise ValueError(f"solver {spec.name!r} is adaptive: set its tolerances (rtol, atol), not nfe")
        if not isinstance(timesteps, str):
            raise ValueError(f"solver {spec.name!r} is adaptive and chooses its own steps; pass no explicit grid")
        check_interval(sched, t_start, t_end)
        grid = torch.tensor([float(t_start), float(t_end)], dtype=torch.float64)
    else:
        budget = check_nfe(nfe) - int(bool(denoise_final))
        if budget < 1:
            raise ValueError("denoise_final spends one evaluation of the budget: nfe must be at least 2")
        try:
            steps = spec.steps(budget, opts)
        except ValueError as e:
            raise ValueError(f"{e}{' (plus 1 for denoise_final)' if denoise_final else ''}") from None
        grid = make_grid(sched, timesteps, steps, t_start, t_end)

    start = model.nfe
    try:
        with torch.no_grad():
            out = spec.fn(model, x_T, grid, nfe=None if spec.adaptive else budget, generator=generator, **opts)
            if isinstance(out, tuple):  # adaptive solvers also return the times they accepted
                out, grid = out
            if denoise_final:
                out = model.x0(out, float(grid[-1]))
            model.check_pending()
    except ModelOutputError as e:
        k, steps = (model.nfe if e.nfe is None else e.nfe) - start, len(grid) - 1  # k: failing evaluation, 1-based
        if spec.adaptive:
            where = "adaptive step"
        elif denoise_final and k > budget:
            where = "final denoising evaluation"
        elif spec.nfe_per_step is not None and budget % steps == 0:  # same evaluations every step, correctors too
            where = f"step {-(-k // (budget // steps))} of {steps}"
        else:  # mixed orders (singlestep DPM-Solver): evaluations lie in [t_i, t_{i+1}), never at a step's end
            step = int(torch.searchsorted(-grid, torch.tensor(-e.t, dtype=torch.float64), right=True))
            where = f"step {min(max(step, 1), steps)} of {steps}"
        raise ModelOutputError(f"{spec.name}, {where}: {e}", e.t, e.nfe) from None
    used = model.nfe - start
    if not spec.adaptive and used != nfe:
        raise RuntimeError(f"internal error: {spec.name} used {used} evaluations for a budget of {nfe}")
    if return_info:
        return out, SampleInfo(spec.name, used, len(grid) - 1, grid, opts)
    return out
