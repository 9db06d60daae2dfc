"""One registry of solvers, the public `@solver` decorator that fills it, and the `sample` entry point.

A solver is a function `fn(model, x, grid, *, generator=None, **options) -> x` that walks the float64
time grid `grid` (decreasing, K + 1 times) and uses only the forms `Model` provides (`eps`, `x0`,
`score`, `ode_drift`, `sde_drift`) and the schedule's coefficients (`model.schedule.at(t)`: alpha,
sigma, lam, f, g2). Its options are its keyword-only parameters with defaults. Its entry declares its
kind, its convergence order, its default grid and how an NFE budget maps to grid steps.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .grids import GRIDS, check_interval, grid_function, make_grid
from .model import Model, ModelOutputError
from .options import check_type

KINDS = ("ode", "sde")
RESERVED = ("generator", "nfe")  # keyword-only parameters the registry passes, never options


@dataclass(frozen=True, kw_only=True)
class SolverSpec:
    """A registered solver. Build it with the `solver` decorator, not directly."""

    name: str
    fn: Callable
    kind: str  # "ode" (deterministic, PF-ODE) or "sde" (stochastic)
    order: float  # ode: global order; sde: weak order (with the default options)
    default_grid: str
    nfe_per_step: int | Callable[[dict], int] | None = None  # evaluations on every step (maybe by options)
    steps_for_nfe: Callable[[int, dict], int] | None = None  # (budget, resolved options) -> steps; fn gets nfe=
    strong_order: float | None = None  # sde: declared strong order, if any
    valid_nfe: str = "any positive integer"
    options: dict = field(default_factory=dict)  # option name -> default
    check_options: Callable[[dict], None] | None = None
    description: str = ""
    stochastic_if: Callable[[dict], bool] | None = None  # kind "ode" solvers that draw noise for some options
    takes_generator: bool = True
    schedules: tuple[str, ...] | None = None  # schedule kinds it runs on (Schedule.kind); None: any
    order_of: Callable[[dict], float] | None = None  # the declared order as a function of the options, if it varies
    starts_at_alpha_zero: bool = False  # it can start where alpha = 0 (lambda = -inf: FlowSchedule's t = 1)
    default_grids: dict = field(default_factory=dict)  # schedule kind -> its default grid there, where not default_grid

    def grid_for(self, schedule) -> str:
        """The default grid on `schedule` (a Schedule or its kind)."""
        kind = schedule if isinstance(schedule, str) else schedule.kind
        return self.default_grids.get(kind, self.default_grid)

    def can_start(self, schedule, t_start: float | None = None) -> bool:
        """Whether this solver can start at t_start (default: the schedule's T): alpha > 0 there, or it starts at
        alpha = 0 (lambda = -inf, FlowSchedule's t = 1) given a model with x0 there."""
        t_start = schedule.T if t_start is None else t_start
        return self.starts_at_alpha_zero or schedule.at(t_start).alpha != 0.0

    def check_start(self, model, t_start: float) -> None:
        """A ValueError (one line, before any evaluation) if this solver or model cannot start at t_start, where
        alpha = 0 (lambda = -inf, e.g. FlowSchedule's t = 1)."""
        if model.schedule.at(t_start).alpha != 0.0:
            return
        if not self.can_start(model.schedule, t_start):
            able = ", ".join(n for n, s in _REGISTRY.items() if s.starts_at_alpha_zero)
            raise ValueError(f"solver {self.name!r} cannot start at t_start={t_start:g}, where alpha = 0 (lambda = "
                             f"-inf; its steps need alpha > 0 or finite f, g^2): give t_start < {t_start:g} or use a "
                             f"solver that starts there ({able})")
        if not model.gives_x0_at_alpha_zero:
            raise ValueError(f"a model predicting {model.prediction!r} gives no x0 at t_start={t_start:g}, where "
                             f"alpha = 0: give t_start < {t_start:g} or a model predicting x0, v or flow")

    def declared_order(self, options: dict | None = None) -> float:
        """The declared order (ode) or weak order (sde) with these options (defaults filled in)."""
        return self.order if self.order_of is None else float(self.order_of(self.resolve_options(options or {})))

    def supports(self, schedule) -> bool:
        """Whether this solver runs on `schedule` (a Schedule or its kind)."""
        kind = schedule if isinstance(schedule, str) else schedule.kind
        return self.schedules is None or kind in self.schedules

    def check_schedule(self, schedule) -> None:
        if not self.supports(schedule):
            kind = schedule if isinstance(schedule, str) else schedule.kind
            raise ValueError(f"solver {self.name!r} runs on {', '.join(self.schedules)} schedules, not {kind!r}")

    def stochastic(self, options: dict | None = None) -> bool:
        """Whether this solver with these options draws noise: every 'sde' solver, and e.g. ddim with eta > 0."""
        if self.kind == "sde":
            return True
        return self.stochastic_if is not None and bool(self.stochastic_if(self.resolve_options(options or {})))

    @property
    def weak_order(self) -> float | None:
        return self.order if self.kind == "sde" else None

    @property
    def adaptive(self) -> bool:
        return self.nfe_per_step is None and self.steps_for_nfe is None

    def evaluations_per_step(self, options: dict | None = None) -> int | None:
        """Evaluations every step costs with these options; None for adaptive or mixed-cost solvers."""
        per = self.nfe_per_step
        return per(self.resolve_options(options or {})) if callable(per) else per

    def steps(self, nfe: int, options: dict | None = None) -> int:
        """Grid steps for a budget of exactly `nfe` evaluations; a ValueError naming the valid budgets if none."""
        if self.adaptive:
            raise ValueError(f"solver {self.name!r} is adaptive: set its tolerances (rtol, atol), not nfe")
        opts = self.resolve_options(options or {})
        check_nfe(nfe)
        try:
            if self.steps_for_nfe is not None:
                steps = self.steps_for_nfe(nfe, opts)
            else:
                per = self.evaluations_per_step(opts)
                if nfe % per:
                    raise ValueError(f"spends {per} evaluations per step, so needs a budget divisible by {per}, "
                                     f"got {nfe}")
                steps = nfe // per
        except ValueError as e:
            raise ValueError(f"solver {self.name!r} {e}; valid budgets: {self.valid_nfe}") from None
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"solver {self.name!r}: its steps_for_nfe gave {steps!r} steps for a budget of {nfe}; "
                             f"it must give an integer >= 1 or raise ValueError")
        return steps

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
        """The options with defaults filled in; an unknown option, a wrong type or a bad value is a ValueError."""
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            valid = ", ".join(sorted(self.options)) or "none"
            raise ValueError(f"unknown option(s) {', '.join(unknown)} for solver {self.name!r}; valid options: {valid}")
        for name, value in given.items():
            check_type(name, value, self.options[name])
        opts = {**self.options, **given}
        if self.check_options is not None:
            self.check_options(opts)
        return opts


_REGISTRY: dict[str, SolverSpec] = {}


def solver(name: str, *, kind: str = "ode", order: float | Callable[[dict], float] | None = None, weak_order: float | None = None,
           strong_order: float | None = None, nfe_per_step: int | Callable[[dict], int] | None = None,
           steps_for_nfe: Callable[[int, dict], int] | None = None, adaptive: bool = False,
           default_grid: str = "logsnr", valid_nfe: str | None = None, check: Callable[[dict], None] | None = None,
           stochastic_if: Callable[[dict], bool] | None = None, schedules=None, description: str | None = None,
           starts_at_alpha_zero: bool = False, default_grids: dict | None = None):
    """Register `fn(model, x, grid, *, generator=None, **options) -> x` as solver `name`; returns fn unchanged.

    kind: "ode" (deterministic) or "sde" (draws noise through `generator`, see solvers.noise).
    order: the declared global order (ode) or weak order (sde; `weak_order` says the same), and for
      an sde optionally `strong_order`; `bench check` holds each declaration against a measurement.
      A function of the resolved options (e.g. `lambda o: o["order"]`) for solvers whose order is an option.
    The NFE rule, exactly one of:
      nfe_per_step: evaluations every step costs (an int, or a function of the resolved options);
      steps_for_nfe(nfe, options) -> steps, raising ValueError for budgets it cannot spend exactly:
        for solvers whose steps cost different numbers of evaluations; fn then receives `nfe=`;
      adaptive=True: fn chooses its own steps from tolerance options, gets grid = [t_start, t_end]
        and returns (x, accepted times).
    default_grid: a grid name of solvers.GRIDS (or "shift:S"); default_grids: schedule kind -> grid name where
      another grid is the default on that kind (euler: {"flow": "uniform"}).
    valid_nfe: how the valid budgets read in errors.
    Options are fn's keyword-only parameters with defaults (other than generator and nfe); a given
    option must have its default's type, and `check(options)` may raise ValueError for bad values.
    stochastic_if(options): for an "ode" solver that draws noise for some options (ddim's eta > 0).
    schedules: the schedule kinds it runs on (e.g. ("vp",)); others are a ValueError. Default: any.
    starts_at_alpha_zero: it can start where alpha = 0 (lambda = -inf, FlowSchedule's t = 1) given a model with x0
      there (x0, v or flow prediction); `sample` refuses such a start, before any evaluation, for the others.
    """
    if not isinstance(name, str) or not name.strip() or name != name.strip() or "," in name:
        raise ValueError(f"solver name must be a non-empty string without commas or surrounding spaces, got {name!r}")
    if kind not in KINDS:
        raise ValueError(f"solver kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "ode" and (weak_order is not None or strong_order is not None):
        raise ValueError(f"solver {name!r}: weak_order and strong_order are for kind='sde'; an ode solver has order")
    if order is not None and weak_order is not None and order != weak_order:
        raise ValueError(f"solver {name!r}: order={order} and weak_order={weak_order} disagree (for an sde they are "
                         "the same declaration)")
    order = order if order is not None else weak_order
    order_of = order if callable(order) else None
    declared = [("strong_order", strong_order)] + ([] if order_of else [("order", order)])
    for label, value in declared:
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise ValueError(f"solver {name!r}: {label} must be a number > 0, got {value!r}")
    if order is None:
        raise ValueError(f"solver {name!r} needs a declared order (the {'global' if kind == 'ode' else 'weak'} "
                         "convergence order bench check holds it to)")
    rules = [r for r, v in (("nfe_per_step", nfe_per_step), ("steps_for_nfe", steps_for_nfe),
                            ("adaptive=True", adaptive or None)) if v is not None]
    if len(rules) != 1:
        raise ValueError(f"solver {name!r} needs exactly one NFE rule: nfe_per_step, steps_for_nfe or "
                         f"adaptive=True; got {', '.join(rules) or 'none'}")
    if nfe_per_step is not None and not callable(nfe_per_step) and (
            isinstance(nfe_per_step, bool) or not isinstance(nfe_per_step, int) or nfe_per_step < 1):
        raise ValueError(f"solver {name!r}: nfe_per_step must be an integer >= 1 or a function of the options, "
                         f"got {nfe_per_step!r}")
    if steps_for_nfe is not None and not callable(steps_for_nfe):
        raise ValueError(f"solver {name!r}: steps_for_nfe must be a function (nfe, options) -> steps")
    if schedules is not None:
        schedules = (schedules,) if isinstance(schedules, str) else tuple(schedules)
        if not schedules or not all(isinstance(k, str) and k for k in schedules):
            raise ValueError(f"solver {name!r}: schedules must be schedule kinds such as 'vp', 've', got {schedules!r}")
    grids_by_kind = dict(default_grids or {})
    for grid in (default_grid, *grids_by_kind.values()):
        try:
            grid_function(grid)
        except ValueError:
            raise ValueError(f"solver {name!r}: unknown default_grid {grid!r}; valid: {', '.join(GRIDS)}, shift:S "
                             "(S > 0)") from None

    def register(fn: Callable) -> Callable:
        if not callable(fn):
            raise TypeError(f"solver {name!r} must decorate a function, got {type(fn).__name__}")
        if name in _REGISTRY:
            raise ValueError(f"solver {name!r} is already registered (by {_where(_REGISTRY[name].fn)})")
        options, takes_generator = _options_of(name, fn, takes_nfe=steps_for_nfe is not None)
        if (kind == "sde" or stochastic_if is not None) and not takes_generator:
            raise ValueError(f"solver {name!r} draws noise, so {_where(fn)} must take a keyword-only `generator` "
                             "(pass it to solvers.noise.randn_like)")
        if adaptive:
            valid = valid_nfe or "adaptive: set its tolerance options"
        elif valid_nfe is not None:
            valid = valid_nfe
        elif isinstance(nfe_per_step, int):
            valid = "any positive integer" if nfe_per_step == 1 else f"multiples of {nfe_per_step}"
        else:
            valid = "see the solver's documentation"
        doc = (inspect.getdoc(fn) or "").split("\n")[0]
        declared = order
        if order_of is not None:
            declared = order_of(options)
            if isinstance(declared, bool) or not isinstance(declared, (int, float)) or declared <= 0:
                raise ValueError(f"solver {name!r}: order(options) must give a number > 0, got {declared!r}")
        _REGISTRY[name] = SolverSpec(
            name=name, fn=fn, kind=kind, order=declared, order_of=order_of, strong_order=strong_order,
            default_grid=default_grid,
            nfe_per_step=nfe_per_step, steps_for_nfe=steps_for_nfe, valid_nfe=valid, options=options,
            check_options=check, description=description if description is not None else doc,
            stochastic_if=stochastic_if, takes_generator=takes_generator, schedules=schedules,
            starts_at_alpha_zero=bool(starts_at_alpha_zero), default_grids=grids_by_kind)
        return fn

    return register


def _where(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', getattr(fn, '__name__', '?'))}"


def _options_of(name: str, fn: Callable, takes_nfe: bool) -> tuple[dict, bool]:
    """(option -> default, whether fn takes `generator`) from fn's signature; a ValueError if it is not a solver's."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        raise ValueError(f"solver {name!r}: cannot read the signature of {_where(fn)}") from None
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) != 3 or any(p.kind is p.VAR_POSITIONAL for p in params):
        raise ValueError(f"solver {name!r}: {_where(fn)} must take exactly (model, x, grid) positionally, then "
                         f"keyword-only options; got ({', '.join(p.name for p in params)})")
    if any(p.kind is p.VAR_KEYWORD for p in params):
        raise ValueError(f"solver {name!r}: {_where(fn)} takes **kwargs; declare each option as a keyword-only "
                         "parameter with a default, so that unknown options stay errors")
    keyword = {p.name: p for p in params if p.kind is p.KEYWORD_ONLY}
    if takes_nfe and "nfe" not in keyword:
        raise ValueError(f"solver {name!r} gives steps_for_nfe, so {_where(fn)} must take a keyword-only `nfe`")
    if not takes_nfe and "nfe" in keyword:
        raise ValueError(f"solver {name!r}: {_where(fn)} takes `nfe`, which only solvers with steps_for_nfe receive")
    missing = [p.name for p in keyword.values() if p.name not in RESERVED and p.default is p.empty]
    if missing:
        raise ValueError(f"solver {name!r}: option(s) {', '.join(missing)} of {_where(fn)} need a default")
    options = {n: p.default for n, p in keyword.items() if n not in RESERVED}
    return options, "generator" in keyword


def list_solvers(kind: str | None = None) -> list[str]:
    """Every registered solver name (optionally only 'ode' or 'sde' ones), in registration order."""
    return [n for n, s in _REGISTRY.items() if kind is None or s.kind == kind]


def get_solver(name: str) -> SolverSpec:
    if name not in _REGISTRY:
        raise ValueError(f"unknown solver {name!r}; valid: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


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
    spec.check_schedule(sched)
    if timesteps is not None and not isinstance(timesteps, str):
        ends = torch.as_tensor(timesteps, dtype=torch.float64).flatten()
        if len(ends) and any(v is not None and v != float(e) for v, e in ((t_start, ends[0]), (t_end, ends[-1]))):
            raise ValueError(f"t_start={t_start!r}, t_end={t_end!r} conflict with the explicit timesteps, which run "
                             f"from {float(ends[0])!r} to {float(ends[-1])!r}; give the times alone or matching ends")
    t_start = sched.T if t_start is None else t_start
    t_end = sched.default_t_end if t_end is None else t_end
    timesteps = spec.grid_for(sched) if timesteps is None else timesteps
    if spec.adaptive:
        if nfe is not None:
            raise ValueError(f"solver {spec.name!r} is adaptive: set its tolerances (rtol, atol), not nfe")
        if not isinstance(timesteps, str):
            raise ValueError(f"solver {spec.name!r} is adaptive and chooses its own steps; pass no explicit grid")
        check_interval(sched, t_start, t_end)
        spec.check_start(model, float(t_start))
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
        spec.check_start(model, float(grid[0]))

    start = model.nfe
    try:
        with torch.no_grad():
            extra = {"generator": generator} if spec.takes_generator else {}
            if spec.steps_for_nfe is not None:
                extra["nfe"] = budget
            out = spec.fn(model, x_T, grid, **extra, **opts)
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
        elif spec.steps_for_nfe is None and budget % steps == 0:  # same evaluations every step, correctors too
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
