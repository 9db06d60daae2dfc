"""The checks of `python -m bench check` as plain functions, for a solver author's pytest suite.

    from solvers import testing
    testing.check_solver("my_solver", model, x_T)     # every check; an AssertionError with the table if one fails

Each `check_*` returns an `Outcome` ("pass", or "n/a" with the reason where it cannot apply) and raises
`CheckFailed`, an AssertionError whose message is the table of what was measured, when it fails.
Evaluations are counted from the model's calls; orders are fitted by the one rule of solvers.convergence.
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch

from .convergence import fit, in_band, order_band, slope_order
from .curves import (
    ORDER_NFES,
    STRONG_NFES,
    STRONG_STEPS,
    TOLERANCES,
    WEAK_NFES,
    Curve,
    error_curve,
    g,
    paired_weak_curve,
    strong_error_curve,
)
from .model import Model
from .outcomes import CheckFailed, Outcome, done, format_table
from .registry import get_solver
from .sample_checks import (
    BUDGETS,
    EQUAL_TOL,
    BudgetRun,
    check_batch_independent,
    check_deterministic,
    check_equal,
    check_exact_nfe,
    check_finite,
    sweep_budgets,
)

MIN_SLOPE = 0.5  # convergence: the error still falls at least this fast (log-log) between the two largest budgets
CONSISTENT = 0.05  # convergence: final RMSE <= CONSISTENT * RMS of the reference solution
MAX_SLOPE_SE = 0.15  # check_weak_order: a fitted order's Monte-Carlo standard error must be below this
STRONG_SAMPLES = 1024  # check_solver: paths of the strong-error curve (x_T's first ones; 256 leave local slopes 0.57-1.51)

__all__ = [
    "BUDGETS",
    "ORDER_NFES",
    "STRONG_NFES",
    "STRONG_STEPS",
    "TOLERANCES",
    "WEAK_NFES",
    "BudgetRun",
    "CheckFailed",
    "Curve",
    "Outcome",
    "check_batch_independent",
    "check_convergence",
    "check_deterministic",
    "check_equal",
    "check_exact_nfe",
    "check_finite",
    "check_order",
    "check_solver",
    "check_strong_order",
    "check_weak_order",
    "error_curve",
    "format_table",
    "measure_order",
    "paired_weak_curve",
    "slope_stderr",
    "strong_error_curve",
    "sweep_budgets",
]


# --- orders and convergence ------------------------------------------------------------------


def measure_order(solver: str, model: Model, x_T: torch.Tensor, nfes=None, *, curve: Curve | None = None, **kw):
    """The fitted order (solvers.convergence.fit) of `error_curve(solver, model, x_T, nfes, **kw)`: an OrderFit."""
    curve = curve or error_curve(solver, model, x_T, nfes, **kw)
    return fit(curve.nfes, curve.errors, curve.floor)


def check_order(solver: str, model: Model, x_T: torch.Tensor, nfes=None, *, curve: Curve | None = None,
                **kw) -> Outcome:
    """The fitted order (weak order on E log p if it draws noise) lies in the band of the declared order.

    kw: error_curve's (reference, log_prob, exact, seed, t_start, t_end, timesteps) and the solver's options.
    """
    spec = get_solver(solver)
    stochastic = spec.stochastic({k: v for k, v in kw.items() if k in spec.options})
    name = "weak order" if stochastic else "order"
    if spec.adaptive:
        return Outcome(solver, name, "n/a", "adaptive: no fixed budgets (see convergence as tolerances tighten)")
    curve = curve or error_curve(solver, model, x_T, nfes, **kw)
    result = fit(curve.nfes, curve.errors, curve.floor)
    order = spec.declared_order({k: v for k, v in kw.items() if k in spec.options})
    lo, hi = order_band(order)
    what = f"weak order (E log p, {curve.samples:,} samples)" if curve.kind == "weak" else "order"
    declared = f"declared {order:g}, band [{lo:g}, {hi:g}]"
    if result.ok:
        ok = in_band(result.order, order)
        detail = f"{what} {result.order:.2f} [{result.lo:.2f}, {result.hi:.2f}] over NFE {result.nfe_range}, {declared}"
    else:
        ok, detail = False, f"{what} not measurable: {result.note}; {declared}"
    slopes = ", ".join(f"{s:.2f}" for s in result.local) or "—"
    return done(Outcome(solver, name, "pass" if ok else "FAIL", detail, f"{curve.table()}\n  local slopes: {slopes}",
                         value=result.order, data={"fit": result, "band": (lo, hi), "curve": curve}))


def check_strong_order(solver: str, model: Model | None = None, x_T: torch.Tensor | None = None, nfes=None, *,
                       curve: Curve | None = None, **kw) -> Outcome:
    """The fitted strong order (RMSE against Euler-Maruyama at STRONG_STEPS steps on the same Brownian path per
    sample, solvers.curves.strong_error_curve) lies in the band of the declared strong order.

    kw: strong_error_curve's (seed, t_start, t_end, timesteps, steps, reference) and the solver's options.
    n/a where no strong order is declared.
    """
    spec = get_solver(solver)
    if spec.strong_order is None:
        return Outcome(solver, "strong order", "n/a", "no strong order declared")
    if curve is None and (model is None or x_T is None):
        return Outcome(solver, "strong order", "n/a", f"declared {spec.strong_order:g}: give a model and x_T")
    curve = curve or strong_error_curve(solver, model, x_T, nfes, **kw)
    result = fit(curve.nfes, curve.errors, curve.floor)
    lo, hi = order_band(spec.strong_order)
    declared = f"declared {spec.strong_order:g}, band [{lo:g}, {hi:g}]"
    what = f"strong order ({curve.samples:,} Brownian paths, reference EM at {STRONG_STEPS} steps)"
    if result.ok:
        ok = in_band(result.order, spec.strong_order)
        detail = f"{what} {result.order:.2f} [{result.lo:.2f}, {result.hi:.2f}] over NFE {result.nfe_range}, {declared}"
    else:
        ok, detail = False, f"{what} not measurable: {result.note}; {declared}"
    slopes = ", ".join(f"{s:.2f}" for s in result.local) or "—"
    return done(Outcome(solver, "strong order", "pass" if ok else "FAIL", detail,
                         f"{curve.table()}\n  local slopes: {slopes}", value=result.order,
                         data={"fit": result, "band": (lo, hi), "curve": curve}))


def slope_stderr(curve: Curve) -> float:
    """Jackknife standard error of a paired weak curve's fitted order: the order over the range `fit` chose
    (convergence.slope_order) with each group of samples left out in turn; NaN without groups or a fitted range."""
    result = fit(curve.nfes, curve.errors, curve.floor)
    if not curve.jackknife or not result.ok:
        return math.nan
    keep = [i for i, n in enumerate(curve.nfes) if n in result.nfe]
    orders = [slope_order([curve.nfes[i] for i in keep], [abs(b[i]) for i in keep]) for b in curve.jackknife]
    k, mean = len(orders), sum(orders) / len(orders)
    return math.sqrt((k - 1) / k * sum((p - mean) ** 2 for p in orders))


def check_weak_order(solver: str, model: Model | None = None, x_T: torch.Tensor | None = None, nfes=None, *,
                     f=None, curve: Curve | None = None, max_se: float = MAX_SLOPE_SE, **kw) -> Outcome:
    """The weak order fitted to paired differences E f(X_n) - E f(X_fine) on the same Brownian paths
    (solvers.curves.paired_weak_curve) lies in the band of the declared weak order, with a Monte-Carlo (jackknife)
    standard error below `max_se`.

    f: x -> one value per sample (a smooth test function: |x|^2, the exact log p_{t_end}, ...). kw:
    paired_weak_curve's (fine, seed, t_start, t_end, timesteps, depth) and the solver's options.
    """
    spec = get_solver(solver)
    options = {k: v for k, v in kw.items() if k in spec.options}
    if not spec.stochastic(options):
        return Outcome(solver, "weak order", "n/a", "draws no noise: see check_order")
    if curve is None and (model is None or x_T is None or f is None):
        return Outcome(solver, "weak order", "n/a", "give a model, x_T and f (x -> one value per sample)")
    curve = curve or paired_weak_curve(solver, model, x_T, nfes, f=f, **kw)
    result = fit(curve.nfes, curve.errors, curve.floor)
    se = slope_stderr(curve)
    order = spec.declared_order(options)
    lo, hi = order_band(order)
    declared = f"declared {order:g}, band [{lo:g}, {hi:g}]"
    what = f"weak order (paired with NFE {curve.fine} on {curve.samples:,} Brownian paths)"
    if result.ok:
        ok = in_band(result.order, order) and se < max_se  # NaN never is
        detail = (f"{what} {result.order:.2f} [{result.lo:.2f}, {result.hi:.2f}], Monte-Carlo standard error "
                  f"{se:.2f}{'' if se < max_se else f' (not below {max_se:g}: more samples)'} over NFE "
                  f"{result.nfe_range}, {declared}")
    else:
        ok, detail = False, f"{what} not measurable: {result.note}; {declared}"
    slopes = ", ".join(f"{s:.2f}" for s in result.local) or "—"
    return done(Outcome(solver, "weak order", "pass" if ok else "FAIL", detail,
                         f"{curve.table()}\n  local slopes: {slopes}", value=result.order,
                         data={"fit": result, "band": (lo, hi), "curve": curve, "stderr": se}))


def _convergence_problems(curve: Curve) -> list[str]:
    e, n = curve.errors, curve.nfes
    if not all(math.isfinite(v) for v in e):
        return ["a run failed or gave non-finite samples"]
    if curve.kind == "weak":
        se = curve.stderr[-1]
        ok = e[-1] <= max(e[0] / 4, 3 * se)
        return [] if ok else [(f"|bias| {g(e[-1])} at NFE {n[-1]:g} is neither 4x below {g(e[0])} at NFE "
                               f"{n[0]:g} nor within 3 standard errors of 0 ({g(3 * se)})")]
    out = []
    if curve.kind == "tolerance":
        if not e[-1] <= e[0] / 10:
            out.append(f"error at rtol={curve.labels[-1]:g} not 10x below that at rtol={curve.labels[0]:g}")
        if not e[-1] <= 1e-3 * curve.scale:
            out.append(f"error {g(e[-1])} at rtol={curve.labels[-1]:g} above 1e-3 of the solution's RMS")
        return out
    slope = -math.log(e[-1] / e[-2]) / math.log(n[-1] / n[-2]) if e[-1] > curve.floor else math.inf
    if not e[-1] < e[0]:
        out.append(f"error {g(e[-1])} at NFE {n[-1]:g} is not below {g(e[0])} at NFE {n[0]:g}")
    if slope < MIN_SLOPE:
        out.append(f"the error stalls: slope {slope:.2f} < {MIN_SLOPE} between NFE {n[-2]:g} and {n[-1]:g}")
    if not e[-1] <= CONSISTENT * curve.scale:
        out.append(f"error {g(e[-1])} at NFE {n[-1]:g} above {CONSISTENT:g} x the solution's RMS {g(curve.scale)}")
    return out


def check_convergence(solver: str, model: Model, x_T: torch.Tensor, nfes=None, *, curve: Curve | None = None,
                      **kw) -> Outcome:
    """The error falls towards 0 as NFE grows (adaptive: as rtol = atol tighten) and ends near the exact answer."""
    curve = curve or error_curve(solver, model, x_T, nfes, **kw)
    e, n = curve.errors, curve.nfes
    if len(e) < 2:
        return done(Outcome(solver, "convergence", "FAIL", "fewer than two budgets accepted", curve.table()))
    if curve.kind == "tolerance":
        summary = (f"RMSE {g(e[0])} → {g(e[-1])} as rtol=atol {curve.labels[0]:g} → {curve.labels[-1]:g} "
                   f"(NFE {n[0]:g} → {n[-1]:g})")
    else:
        what = "|bias of E log p|" if curve.kind == "weak" else "RMSE"
        summary = f"{what} {g(e[0])} → {g(e[-1])} over NFE {n[0]:g}–{n[-1]:g}"
    problems = _convergence_problems(curve)
    return done(Outcome(solver, "convergence", "FAIL" if problems else "pass", "; ".join([summary, *problems]),
                         curve.table(), value=e[-1], data={"curve": curve}))



# --- all of them ----------------------------------------------------------------------------


def _outcome(check, *args, **kw) -> Outcome:
    try:
        return check(*args, **kw)
    except CheckFailed as e:
        return e.outcome


def _weak_or_order(solver: str, model: Model, x_T, paired: Outcome | None, curve: Curve, options: dict) -> Outcome:
    """The paired weak order where its curve could be fitted; else the order (weak: on E log p) of the unpaired
    `curve`, its detail prefixed with why the paired one was not used (e.g. pc's Langevin corrector draws fresh noise,
    not the path's increments, so its paired differences do not shrink)."""
    if paired is not None and (paired.data.get("fit") is None or paired.data["fit"].ok):
        return paired
    out = _outcome(check_order, solver, model, x_T, curve=curve, **options)
    if paired is None:
        return out
    return replace(out, detail=f"{paired.detail.split(';')[0]}, so unpaired: {out.detail}",
                   table=f"{paired.table}\n{out.table}")


def check_solver(solver: str, model: Model, x_T: torch.Tensor, *, reference=None, log_prob=None, exact=None,
                 nfes=None, curve: Curve | None = None, equal_to: str | None = None, equal_tol: float = EQUAL_TOL,
                 seed: int = 0, raise_on_failure: bool = True, weak_f=None, weak_nfes=None,
                 weak_fine: int | None = None, weak_curve: Curve | None = None, strong_samples: int = STRONG_SAMPLES,
                 **options) -> list[Outcome]:
    """Every check of `bench check` on one model; CheckFailed with the table if any fails, else the outcomes.

    x_T (float64) feeds the error curve (a stochastic solver's weak error needs many samples, `log_prob` and
    `exact`: see error_curve), unless `curve` is given; budget sweeps use its first 2 samples, batch
    independence and determinism its first 8, the strong order (a solver declaring one) its first `strong_samples`.

    A stochastic solver's weak order: given `weak_f` (x -> one value per sample, e.g. |x|^2) or a paired curve
    `weak_curve`, it is check_weak_order's, fitted to paired differences E f(X_n) - E f(X_fine) on the same Brownian
    path per sample from x_T (paired_weak_curve at `weak_nfes` with fine budget `weak_fine`; by default
    curves.paired_nfes of the declared weak order and the cost of a step, and PAIRED_FINE x the largest), with a
    Monte-Carlo standard error below MAX_SLOPE_SE; where that curve cannot be fitted, the unpaired one's order.
    Convergence stays on the unpaired error curve (|E log p - exact|: the samples end near the exact answer).
    Without weak_f or weak_curve, the weak order is fitted to that unpaired curve (check_order).
    """
    spec = get_solver(solver)
    spec.resolve_options(options)
    stochastic = spec.stochastic(options)
    paired = None
    if stochastic and (weak_f is not None or weak_curve is not None):
        paired = _outcome(check_weak_order, solver, model, x_T, weak_nfes, f=weak_f, curve=weak_curve,
                          fine=weak_fine, seed=seed, **options)
    out = []
    if curve is None and stochastic and (log_prob is None or exact is None):
        why = "needs log_prob and exact (the exact log density and its expectation) for the weak error"
        out += [paired or Outcome(solver, "weak order", "n/a", why), Outcome(solver, "convergence", "n/a", why)]
    else:
        try:
            curve = curve or error_curve(solver, model, x_T, nfes, reference=reference, log_prob=log_prob,
                                         exact=exact, seed=seed, **options)
            out.append(_weak_or_order(solver, model, x_T, paired, curve, options))
        except ValueError as e:  # e.g. an adaptive solver without rtol/atol to tighten
            status, why = "n/a" if spec.adaptive else "FAIL", f"could not measure: {e}"
            out += [paired or Outcome(solver, "weak order" if stochastic else "order", status, why),
                    Outcome(solver, "convergence", status, why)]
            curve = None
    if spec.kind == "sde":
        out.append(_outcome(check_strong_order, solver, model, x_T[:strong_samples], seed=seed, **options))
    sweep = None if spec.adaptive else sweep_budgets(solver, model, x_T[:2], seed=seed, **options)
    out.append(_outcome(check_exact_nfe, solver, model, x_T[:2], sweep=sweep, **options))
    out.append(_outcome(check_finite, solver, model, x_T[:2], sweep=sweep, **options))
    out.append(_outcome(check_batch_independent, solver, model, x_T[:8], seed=seed, **options))
    out.append(_outcome(check_deterministic, solver, model, x_T[:8], seed=seed, **options))
    if curve is not None:
        out.append(_outcome(check_convergence, solver, model, x_T, curve=curve))
    if equal_to is not None:
        out.append(_outcome(check_equal, solver, equal_to, model, x_T[:8], seed=seed, atol=equal_tol, rtol=equal_tol,
                            **options))
    if raise_on_failure and any(o.status == "FAIL" for o in out):
        raise CheckFailed(out)
    return out
