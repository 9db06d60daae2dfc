"""Checks of `solvers.testing` that run a solver at given budgets: exact NFE, finite output, batch independence,
determinism, and equality with another solver on the same grid."""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from .curves import TOLERANCES, run
from .grids import make_grid
from .model import Model
from .noise import per_sample_generators
from .outcomes import Outcome, done, problem
from .registry import get_solver

BUDGETS = range(1, 61)  # exact NFE and finite output at every budget from 1 to 60 that the solver accepts
CHECK_NFE = 12  # batch independence, determinism: the first accepted budget from here up
BATCH_TOL = 1e-10  # together vs in pieces: max |difference| <= BATCH_TOL * max(1, max |x|)
SMALL_END = 1e-2  # finite at the schedule's small end: t_end = SMALL_END * the schedule's default t_end
EQUAL_STEPS = (1, 2, 5, 10, 20)  # check_equal: grids of these many steps
EQUAL_TOL = 1e-8  # check_equal: max |a - b| <= atol + rtol * max |b|, both this by default
ADAPTIVE_BATCH = "adaptive: chooses its steps for the whole batch as one system, by design"


def first_budget(spec, options: dict, start: int = CHECK_NFE) -> int | None:
    """The first budget from `start` up (else below it) that the solver spends exactly; None if none to 60."""
    ok = spec.budgets(range(start, 61), options) or spec.budgets(range(1, start), options)
    return ok[0] if ok else None


# --- budgets: exact NFE and finite output ------------------------------------------------------


@dataclass(frozen=True)
class BudgetRun:
    nfe: int
    accepted: bool  # False: refused with a ValueError before any evaluation
    used: int  # evaluations counted from the model's calls
    finite: bool  # it returned, and its output is finite
    problem: str = ""  # the exception, in one line
    miscounted: bool = False  # `sample` refused the output: it spent a different number of evaluations
    names_valid: bool = False  # the whole refusal message (not only its first 100 characters) names the valid budgets


def sweep_budgets(solver: str, model: Model, x_T: torch.Tensor, budgets=BUDGETS, *, seed: int = 0, t_start=None,
                  t_end=None, **options) -> list[BudgetRun]:
    """One `sample` call per budget: whether it was accepted, the evaluations it made, whether its output is finite."""
    spec = get_solver(solver)
    spec.resolve_options(options)
    out = []
    for n in budgets:
        start = model.nfe
        try:
            x, used = run(spec, model, x_T, n, options, seed, t_start=t_start, t_end=t_end)
            out.append(BudgetRun(n, True, used, bool(torch.isfinite(x).all())))
        except Exception as e:  # noqa: BLE001  (any error of the solver is a finding, reported with its budget)
            used = model.nfe - start
            refused = isinstance(e, ValueError) and used == 0
            miscounted = isinstance(e, RuntimeError) and str(e).startswith("internal error") and used != n
            out.append(BudgetRun(n, not refused, used, False, problem(e), miscounted, "valid budgets" in str(e)))
    return out


def _span(nfes) -> str:
    nfes = list(nfes)
    return "none" if not nfes else (f"{nfes[0]}–{nfes[-1]}" if len(nfes) > 1 else str(nfes[0]))


def _listed(items: list[str], limit: int = 3) -> str:
    return "; ".join(items[:limit]) + (" ..." if len(items) > limit else "")


def check_exact_nfe(solver: str, model: Model, x_T: torch.Tensor, budgets=BUDGETS, *,
                    sweep: list[BudgetRun] | None = None, **options) -> Outcome:
    """Each accepted budget spent exactly (counted from calls); each refused one a ValueError naming the valid ones.

    A run that fails otherwise has no count to hold: check_finite reports it.
    """
    spec = get_solver(solver)
    if spec.adaptive:
        return Outcome(solver, "exact NFE", "n/a", "adaptive: no budgets; it spends what its tolerances need, "
                                                   "counted from calls")
    sweep = sweep if sweep is not None else sweep_budgets(solver, model, x_T, budgets, **options)
    declared = set(spec.budgets([r.nfe for r in sweep], options))
    bad, failed = [], []
    for r in sweep:
        if not r.accepted and r.nfe in declared:
            bad.append(f"NFE {r.nfe}: its NFE rule accepts it but sampling refused it ({r.problem})")
        elif not r.accepted and not r.names_valid:
            bad.append(f"NFE {r.nfe}: refused without naming the valid budgets ({r.problem})")
        elif r.accepted and (r.miscounted or (not r.problem and r.used != r.nfe)):
            bad.append(f"NFE {r.nfe}: {r.used} evaluations")
        elif r.accepted and r.problem:
            failed.append(r.nfe)
    accepted = [r.nfe for r in sweep if r.accepted]
    if not accepted:
        bad.append(f"refuses every budget of {_span([r.nfe for r in sweep])}")
    detail = (f"{len(accepted) - len(failed)} budgets of {_span([r.nfe for r in sweep])} spent exactly, "
              f"{len(sweep) - len(accepted)} refused naming the valid ones ({spec.valid_nfe})")
    if bad:
        detail = f"{len(bad)} of {len(sweep)} budgets wrong: {_listed(bad)}"
    if failed:
        detail += f"; NFE {', '.join(map(str, failed))} not counted (the run failed: see finite)"
    return done(Outcome(solver, "exact NFE", "FAIL" if bad else "pass", detail, "\n".join(f"  {b}" for b in bad),
                        value=len(bad)))


def check_finite(solver: str, model: Model, x_T: torch.Tensor, budgets=BUDGETS, *, t_small: float | None = None,
                 sweep: list[BudgetRun] | None = None, **options) -> Outcome:
    """No NaN/Inf at any accepted budget, from the schedule's T to its default t_end and to a t_end near 0."""
    spec, sched = get_solver(solver), model.schedule
    t_small = sched.default_t_end * SMALL_END if t_small is None else t_small
    ends = f"t {sched.T:g} → {sched.default_t_end:g} and → {t_small:g}"
    if spec.adaptive:
        runs = [(opts, t) for opts in (dict(options), dict(options, rtol=TOLERANCES[-2], atol=TOLERANCES[-2]))
                for t in (None, t_small) if set(opts) <= set(spec.options)]
        bad = []
        for opts, t in runs:
            try:
                x, _ = run(spec, model, x_T, None, opts, t_start=sched.T, t_end=t)
                why = "" if bool(torch.isfinite(x).all()) else "NaN/Inf in the output"
            except Exception as e:  # noqa: BLE001
                why = problem(e)
            if why:
                tols = ", ".join(f"{k}={v:g}" for k, v in opts.items() if k in ("rtol", "atol")) or "defaults"
                bad.append(f"{tols}, t_end {sched.default_t_end if t is None else t:g}: {why}")
        detail = f"finite at default and tight tolerances, {ends}" if not bad else "; ".join(bad[:3])
        return done(Outcome(solver, "finite", "FAIL" if bad else "pass", detail, "\n".join(f"  {b}" for b in bad)))
    sweep = sweep if sweep is not None else sweep_budgets(solver, model, x_T, budgets, **options)
    small = sweep_budgets(solver, model, x_T, [r.nfe for r in sweep if r.accepted], t_start=sched.T, t_end=t_small,
                          **options)
    runs = [(r, t) for rs, t in ((sweep, sched.default_t_end), (small, t_small)) for r in rs if r.accepted]
    # a run that spent a wrong number of evaluations has no output to look at: exact NFE reports it
    bad = [f"NFE {r.nfe}, t_end {t:g}: {r.problem or 'NaN/Inf in the output'}"
           for r, t in runs if not r.finite and not r.miscounted]
    unchecked = sorted({r.nfe for r, _ in runs if r.miscounted})
    accepted = [r.nfe for r in sweep if r.accepted]
    detail = (f"finite at all {len(accepted)} accepted budgets of {_span([r.nfe for r in sweep])}, {ends}" if not bad
              else f"{len(bad)} runs not finite: {_listed(bad)}")
    if unchecked:
        detail += f"; NFE {', '.join(map(str, unchecked))} not looked at (wrong evaluation count: see exact NFE)"
    return done(Outcome(solver, "finite", "FAIL" if bad else "pass", detail, "\n".join(f"  {b}" for b in bad),
                         value=len(bad)))


def _generators(stochastic: bool, seed: int, lo: int, hi: int):
    return per_sample_generators(range(seed + lo, seed + hi)) if stochastic else None


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def check_batch_independent(solver: str, model: Model, x_T: torch.Tensor, nfe: int | None = None, *, seed: int = 0,
                            tol: float = BATCH_TOL, **options) -> Outcome:
    """The same samples drawn all together and in pieces (sizes 1, 2, rest); per-sample generators if it draws noise."""
    spec = get_solver(solver)
    spec.resolve_options(options)
    if spec.adaptive:
        return Outcome(solver, "batch independence", "n/a", ADAPTIVE_BATCH)
    nfe = first_budget(spec, options) if nfe is None else nfe
    b = len(x_T)
    if nfe is None or b < 2:
        return done(Outcome(solver, "batch independence", "FAIL",
                            "accepts no budget in 1–60" if nfe is None else "needs at least 2 samples"))
    cuts = sorted({0, min(1, b), min(3, b), b})
    stochastic = spec.stochastic(options)
    try:
        full, _ = run(spec, model, x_T, nfe, options, generator=_generators(stochastic, seed, 0, b))
        parts = [run(spec, model, x_T[lo:hi], nfe, options, generator=_generators(stochastic, seed, lo, hi))[0]
                 for lo, hi in itertools.pairwise(cuts)]
        diff = _max_diff(full, torch.cat(parts))
        scale = max(1.0, float(full.double().abs().max()))
    except Exception as e:  # noqa: BLE001
        return done(Outcome(solver, "batch independence", "FAIL", f"NFE {nfe}: {problem(e)}"))
    how = f"{b} samples together vs in pieces of {', '.join(str(h - lo) for lo, h in itertools.pairwise(cuts))}"
    how += f" at NFE {nfe}" + (", one generator per sample" if stochastic else "")
    ok = diff <= tol * scale
    detail = f"max |difference| {diff:.3g}{'' if ok else f' > {tol * scale:.3g}'}: {how}"
    return done(Outcome(solver, "batch independence", "pass" if ok else "FAIL", detail, value=diff))


def check_deterministic(solver: str, model: Model, x_T: torch.Tensor, nfe: int | None = None, *, seed: int = 0,
                        **options) -> Outcome:
    """Two runs with the same seed are bit-identical, whatever the state of torch's global generator."""
    spec = get_solver(solver)
    spec.resolve_options(options)
    nfe = None if spec.adaptive else (first_budget(spec, options) if nfe is None else nfe)
    if nfe is None and not spec.adaptive:
        return done(Outcome(solver, "determinism", "FAIL", "accepts no budget in 1–60"))
    outs = []
    try:
        for global_seed in (1, 2):  # a draw from torch's global generator shows as a difference
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(global_seed)
                outs.append(run(spec, model, x_T, nfe, options, seed)[0].cpu())
    except Exception as e:  # noqa: BLE001
        return done(Outcome(solver, "determinism", "FAIL", problem(e)))
    same = outs[0].dtype == outs[1].dtype and outs[0].numpy().tobytes() == outs[1].numpy().tobytes()
    at = "at default tolerances" if spec.adaptive else f"at NFE {nfe}"
    detail = f"bit-identical over 2 runs {at}, seed {seed}" if same else (
        f"2 runs {at} with seed {seed} differ by up to {_max_diff(*outs):.3g} (noise not from `generator`?)")
    return done(Outcome(solver, "determinism", "pass" if same else "FAIL", detail))


def budget_for_steps(spec, steps: int, options: dict) -> int | None:
    """The largest budget up to 8 per step that the solver spends in exactly `steps` grid steps; None if none."""
    for n in range(8 * steps, 0, -1):
        try:
            if spec.steps(n, options) == steps:
                return n
        except ValueError:
            continue
    return None


def check_equal(solver: str, other: str, model: Model, x_T: torch.Tensor, steps=EQUAL_STEPS, *,
                atol: float = EQUAL_TOL, rtol: float = EQUAL_TOL, seed: int = 0, timesteps: str | None = None,
                other_options: dict | None = None, **options) -> Outcome:
    """Same output as `other` on the same grids (`solver`'s default kind, of `steps` steps each), to atol + rtol |x|."""
    a, b = get_solver(solver), get_solver(other)
    a.resolve_options(options)
    other_options = b.resolve_options(other_options or {}) and (other_options or {})
    name = f"equal to {other}"
    if a.adaptive or b.adaptive:
        return Outcome(solver, name, "n/a", "adaptive solvers choose their own grids")
    kind, sched = timesteps or a.grid_for(model.schedule), model.schedule
    rows, worst, compared = [], 0.0, []
    for k in steps:
        na, nb = budget_for_steps(a, k, options), budget_for_steps(b, k, other_options)
        if na is None or nb is None:
            rows.append(f"  {k:>3} steps: not compared ({solver if na is None else other} has no budget for it)")
            continue
        grid = make_grid(sched, kind, k, sched.T, sched.default_t_end)
        try:
            xa, _ = run(a, model, x_T, na, options, seed, timesteps=grid)
            xb, _ = run(b, model, x_T, nb, other_options, seed, timesteps=grid)
        except Exception as e:  # noqa: BLE001
            return done(Outcome(solver, name, "FAIL", f"{k} steps: {problem(e)}", "\n".join(rows)))
        diff, bound = _max_diff(xa, xb), atol + rtol * float(xb.double().abs().max())
        ok = diff <= bound
        worst = max(worst, diff) if math.isfinite(diff) else math.nan
        compared.append(ok)
        rows.append(f"  {k:>3} steps (NFE {na} vs {nb}): max |difference| {diff:.3g} "
                    f"{'<=' if ok else '>'} {bound:.3g}")
    if not compared:
        return done(Outcome(solver, name, "FAIL", f"no grid of {', '.join(map(str, steps))} steps both accept",
                            "\n".join(rows)))
    ok = all(compared)
    detail = (f"max |difference| {worst:.3g} over {len(compared)} {kind} grids of {', '.join(map(str, steps))} steps "
              f"(tolerance {atol:g} + {rtol:g} |x|)")
    return done(Outcome(solver, name, "pass" if ok else "FAIL", detail, "\n".join(rows), value=worst))
