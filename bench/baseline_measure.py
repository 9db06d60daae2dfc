"""Measurement of the solver accuracy baselines: every registered solver on the exact mixtures, from fixed seeds.

Everything is float64 on one CPU thread, so a rerun on the same machine gives the same numbers bit for bit.
For gmm2d and gmm-digits under VP and VE (and on request flow, where models predict the velocity and the solvers
that cannot start at t = 1 have no rows), every solver in `solvers.list_solvers()`, at every budget of
NFES the solver spends exactly (adaptive solvers: one row at default tolerances):
- deterministic solvers: RMSE and max error against the DOP853 reference from the same x_T;
- stochastic solvers (and `STOCHASTIC_VARIANTS`, e.g. ddim with eta=1): the bias of E[log p_t_end(x)]
  and of E|x|^2 against exact samples of the marginal at t_end, with standard errors; and the strong error
  (rmse, max_error) against Euler-Maruyama at 4096 steps on the same Brownian path per sample
  (`solvers.brownian_paths`, which also gives every stochastic sample its noise), from the same x_T;
- the convergence order of each fixed-step deterministic solver (issue 2): `bench.orders.fit` of log RMSE
  against log NFE at NFE 40..640 on the 2-D mixture, VP, logsnr grid, t 1 -> 1e-3.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import pandas as pd
import torch

from reference_models import load
from reference_models.registry import make_schedule, prediction_for
from reference_models.threads import torch_threads
from solvers import brownian_paths, get_solver, list_solvers, reference_solution, sample
from solvers.curves import STRONG_STEPS, strong_reference

from .baseline_store import BIAS_METRICS, ERROR_METRICS, table
from .metrics import path_errors
from .references import EXACT_TOL as EXACT_REFERENCE_TOL
from .orders import fit

MODELS = ("gmm2d", "gmm-digits")
SCHEDULES = ("vp", "ve", "flow")  # the stored baselines, and what `bench baseline --schedules` accepts
NFES = (5, 10, 20, 50, 100)
ODE_SAMPLES = {"gmm2d": 256, "gmm-digits": 32}  # x_T per (model, schedule) for path errors
SDE_SAMPLES = {"gmm2d": 1000, "gmm-digits": 200}  # stochastic samples, one Brownian path each
EXACT_SAMPLES = {"gmm2d": 20_000, "gmm-digits": 5_000}  # exact draws of the marginal at t_end
SEED = 0
# Options that make a deterministic solver stochastic: measured as an extra, stochastic row set.
STOCHASTIC_VARIANTS = {"ddim": {"eta": 1.0}}
ORDER_MODEL, ORDER_SCHEDULE, ORDER_GRID = "gmm2d", "vp", "logsnr"
ORDER_NFES = (40, 80, 160, 320, 640)
ORDER_SAMPLES = 64
REFERENCE = f"DOP853 float64 rtol=atol={EXACT_REFERENCE_TOL:g}"


def single_thread():
    """Run torch on one CPU thread: reductions then sum in one order, and small tensors avoid OpenMP contention."""
    return torch_threads(1)


def format_options(options: dict) -> str:
    return ",".join(f"{k}={v!r}" for k, v in sorted(options.items()))


@dataclass(frozen=True)
class Cell:
    """One measurement: a solver (with options) at one budget on one (model, schedule)."""

    model: str
    schedule: str
    solver: str
    options: tuple  # sorted (name, value) pairs
    nfe: int | None  # None: adaptive, at default tolerances
    stochastic: bool


def baselined(name: str, schedule: str) -> bool:
    """Whether solver `name` has baselines on `schedule` (a kind: vp, ve, flow): it runs there from the schedule's T."""
    spec = get_solver(name)
    return spec.supports(schedule) and spec.can_start(make_schedule(schedule))


def cells(models=MODELS, schedules=SCHEDULES, solvers=None, nfes=NFES) -> list[Cell]:
    """Every cell of the baseline: each solver's default options, plus its stochastic variant if any."""
    out = []
    for model, schedule, name in itertools.product(models, schedules, list_solvers() if solvers is None else solvers):
        if not baselined(name, schedule):
            continue
        spec = get_solver(name)
        for opts in [{}] + ([STOCHASTIC_VARIANTS[name]] if name in STOCHASTIC_VARIANTS else []):
            budgets = [None] if spec.adaptive else spec.budgets(nfes, opts)
            out += [Cell(model, schedule, name, tuple(sorted(opts.items())), n, spec.stochastic(opts)) for n in budgets]
    return out


class Problem:
    """One (model, schedule): fixed-seed x_T, its reference solution and exact marginal samples, built lazily."""

    def __init__(self, model: str, schedule: str):
        self.name, self.schedule_name = model, schedule
        self.ref_model = load(model, schedule=schedule, prediction=prediction_for(schedule))
        if self.ref_model.mixture is None:
            raise ValueError(f"baselines need an exact model (closed-form marginals); {model!r} is not one")
        self.model, self.mixture = self.ref_model.model, self.ref_model.mixture
        self.sched = self.model.schedule
        self.t_end = self.sched.default_t_end
        self._ode = self._exact = self._strong = None

    def prior(self, n: int, generator) -> torch.Tensor:
        return self.sched.prior_sample((n, *self.ref_model.shape), generator, torch.float64)

    def reference(self, x_T: torch.Tensor) -> torch.Tensor:
        """The DOP853 solution at t_end from x_T (see REFERENCE)."""
        return reference_solution(self.model, x_T, rtol=EXACT_REFERENCE_TOL, atol=EXACT_REFERENCE_TOL)

    def ode(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_T, reference solution at t_end) for ODE_SAMPLES samples."""
        if self._ode is None:
            x_T = self.prior(ODE_SAMPLES[self.name], torch.Generator().manual_seed(SEED))
            self._ode = x_T, self.reference(x_T)
        return self._ode

    def exact(self) -> dict[str, torch.Tensor]:
        """log p_t_end and |x|^2 of EXACT_SAMPLES exact draws of the marginal at t_end."""
        if self._exact is None:
            gen = torch.Generator().manual_seed(SEED + 1)
            x = self.mixture.sample(EXACT_SAMPLES[self.name], gen, self.sched, self.t_end, dtype=torch.float64)
            self._exact = self.statistics(x)
        return self._exact

    def statistics(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = x.double().cpu()
        return {"bias_logp": self.mixture.log_prob(x, self.sched, self.t_end), "bias_sq_norm": x.flatten(1).pow(2).sum(1)}

    def sde_seeds(self) -> list[int]:
        n = SDE_SAMPLES[self.name]
        return list(range(SEED * 1_000_003, SEED * 1_000_003 + n))

    def sde_generators(self):
        """One Brownian path per stochastic sample on [t_end, T] (fresh each call: every solver sees the same x_T and
        the same paths)."""
        return brownian_paths(self.sde_seeds(), self.ref_model.shape, self.t_end, self.sched.T)

    def strong(self, x_T: torch.Tensor) -> tuple[torch.Tensor | None, str]:
        """(Euler-Maruyama at STRONG_STEPS steps on the stochastic samples' paths from x_T, how it was made); None where
        it cannot run (it cannot start where alpha = 0, the flow schedule's t = 1)."""
        if self._strong is None:
            try:
                x, err = strong_reference(self.model, x_T, self.sde_seeds(), self.sched.T, self.t_end)
                self._strong = x, (f"strong error vs Euler-Maruyama at {STRONG_STEPS} uniform steps on the same "
                                   f"Brownian paths (estimated RMSE {err:.2g} vs {STRONG_STEPS // 2} steps)")
            except ValueError as e:
                self._strong = None, f"no strong error: {e}"
        return self._strong


def bias(samples: torch.Tensor, exact: torch.Tensor) -> tuple[float, float]:
    """mean(samples) - mean(exact) and its standard error (independent draws); NaN if any sample is not finite."""
    a, b = samples.double(), exact.double()
    if not torch.isfinite(a).all():
        return math.nan, math.nan
    se = math.sqrt(float(a.var()) / len(a) + float(b.var()) / len(b))
    return float(a.mean() - b.mean()), se


def _inputs(problem: Problem, cell: Cell) -> tuple[torch.Tensor, list | None, object, str]:
    """(x_T, generators, target, reference note): exact marginal statistics for a stochastic cell, else the reference."""
    if cell.stochastic:
        gens = problem.sde_generators()
        note = f"{EXACT_SAMPLES[cell.model]} exact samples of the marginal at t_end={problem.t_end:g}"
        x_T = problem.prior(len(gens), torch.Generator().manual_seed(SEED + 3))
        strong, how = problem.strong(x_T)
        return x_T, gens, (problem.exact(), strong), f"{note}; {how}"
    x_T, ref = problem.ode()
    return x_T, None, ref, REFERENCE


def _metrics(problem: Problem, cell: Cell, x: torch.Tensor, target) -> dict[str, tuple[float, float]]:
    """metric -> (value, stderr) of the samples `x` against `target` (see `_inputs`)."""
    if cell.stochastic:
        exact, strong = target
        out = {m: bias(s, exact[m]) for m, s in problem.statistics(x).items()}
        if strong is None:  # no strong reference here (e.g. Euler-Maruyama cannot start at FlowSchedule's t = 1)
            return out
        return {**out, **{m: (v, math.nan) for m, v in zip(ERROR_METRICS, path_errors(x, strong).values())}}
    return {m: (v, math.nan) for m, v in zip(ERROR_METRICS, path_errors(x, target).values())}  # error_rmse, error_max


def measure_cell(problem: Problem, cell: Cell, run=sample) -> list[dict]:
    """The rows of one cell (a failing solver gives NaN values with the error in `reference`).

    `run` is the sampling call, `solvers.sample` (tests pass a perturbed one to check that it is caught).
    """
    x_T, gens, target, note = _inputs(problem, cell)
    start = problem.model.nfe  # after the reference solution, which evaluates the model too
    try:
        x = run(problem.model, x_T, cell.solver, nfe=cell.nfe, generator=gens, **dict(cell.options))
        values = _metrics(problem, cell, x, target)
    except (RuntimeError, ValueError) as e:  # a solver that breaks is a regression row, not a crash
        values = {m: (math.nan, math.nan) for m in (BIAS_METRICS + ERROR_METRICS if cell.stochastic else ERROR_METRICS)}
        note = f"failed: {e}"
    base = {"model": cell.model, "schedule": cell.schedule, "solver": cell.solver,
            "options": format_options(dict(cell.options)), "kind": "sde" if cell.stochastic else "ode",
            "timesteps": get_solver(cell.solver).grid_for(cell.schedule), "nfe": cell.nfe,
            "nfe_used": problem.model.nfe - start, "samples": len(x_T), "reference": note}
    return [{**base, "metric": m, "value": v, "stderr": se} for m, (v, se) in values.items()]


def order_solvers(solvers=None) -> list[str]:
    """The fixed-step deterministic solvers (of `solvers`, default all registered) whose order is measured."""
    names = list_solvers("ode") if solvers is None else solvers
    return [n for n in names if get_solver(n).kind == "ode" and not get_solver(n).adaptive
            and not get_solver(n).stochastic()]


def order_rows(solvers=None, nfes=ORDER_NFES, samples=ORDER_SAMPLES) -> list[dict]:
    """Measured order (`bench.orders.fit`, NaN when not measurable) of each of `order_solvers(solvers)`."""
    names = order_solvers(solvers)
    if not names:
        return []
    problem = Problem(ORDER_MODEL, ORDER_SCHEDULE)
    x_T = problem.prior(samples, torch.Generator().manual_seed(SEED + 2))
    ref = problem.reference(x_T)
    rows = []
    for name in names:
        errors = [path_errors(sample(problem.model, x_T, name, nfe=n, timesteps=ORDER_GRID), ref)["error_rmse"]
                  for n in nfes]
        result = fit(nfes, errors)
        rows.append({"model": ORDER_MODEL, "schedule": ORDER_SCHEDULE, "solver": name, "options": "", "kind": "ode",
                     "timesteps": ORDER_GRID, "nfe": None, "nfe_used": sum(nfes), "samples": samples,
                     "metric": "order", "value": result.order, "stderr": math.nan,
                     "reference": f"bench.orders.fit of log RMSE vs log NFE at NFE {','.join(map(str, nfes))}: "
                                  + (f"range {result.nfe_range}" if result.ok else result.note)})
    return rows


def measure(models=MODELS, schedules=SCHEDULES, solvers=None, nfes=NFES, orders: bool = True,
            progress: bool = True, run=sample) -> pd.DataFrame:
    """The baseline table for these models x schedules x solvers (all registered solvers by default)."""
    from tqdm import tqdm

    problems: dict[tuple[str, str], Problem] = {}
    rows = []
    with single_thread(), torch.no_grad():
        bar = tqdm(cells(models, schedules, solvers, nfes), desc="baseline", unit="cell", disable=not progress)
        for cell in bar:
            bar.set_postfix_str(f"{cell.model}/{cell.schedule} {cell.solver} nfe={cell.nfe}")
            key = (cell.model, cell.schedule)
            if key not in problems:
                problems[key] = Problem(*key)
            rows += measure_cell(problems[key], cell, run)
        if orders and ORDER_MODEL in models and ORDER_SCHEDULE in schedules:
            rows += order_rows(solvers)
    return table(rows)
