"""Error curves: how far a solver lands from the exact answer as its budget grows (or its tolerance tightens).

Deterministic solvers: RMSE over every coordinate against the DOP853 reference solution from the same x_T.
Stochastic solvers: the weak error |E log p_t_end(x) - E_exact log p_t_end| with its standard error, and the
strong error: RMSE against Euler-Maruyama at STRONG_STEPS uniform steps on the same Brownian path per sample
(`solvers.brownian_paths`) from the same x_T; the paired weak error E f(X_n) - E f(X_fine), the same solver at a
fine budget on the same paths (`paired_weak_curve`: a control variate, far smaller standard errors). Adaptive
solvers: RMSE against the reference as rtol = atol tighten. `solvers.testing` fits and judges them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .brownian import brownian_paths
from .model import Model
from .noise import per_sample_generators
from .ode import reference_solution
from .outcomes import problem
from .registry import get_solver, sample

REFERENCE_TOL = 1e-10  # DOP853 rtol = atol of the reference solution
ERROR_FLOOR = 1e-8  # path errors below this are the reference's own: not fitted
ORDER_NFES = (15, 30, 60, 120, 240, 480, 960)  # doubling budgets, each a whole number of 1, 2, 3 or 5-NFE steps
WEAK_NFES = (20, 40, 80, 160)  # stochastic solvers: each budget needs many samples to resolve the weak error
TOLERANCES = (1e-3, 1e-4, 1e-5, 1e-6, 1e-7)  # adaptive solvers: rtol = atol, loosest first
WEAK_FLOOR_SE = 3.0  # weak errors within this many standard errors of 0 are noise: not fitted
STRONG_STEPS = 4096  # Euler-Maruyama steps of the strong error's reference, on the same Brownian paths
STRONG_NFES = (16, 32, 64, 128, 256)  # strong error: budgets well below STRONG_STEPS
STRONG_FLOOR = 2.0  # strong errors within this factor of the reference's estimated RMSE are not fitted
PAIRED_FINE = 16  # paired weak error: the reference is the same solver at this many times the largest budget
PAIRED_FLOOR_SE = 2.0  # paired weak errors within this many of their standard errors of 0 are not fitted
PAIRED_DEPTH = 24  # Brownian tree depth of a paired curve: the fine reference's steps stay wider than a leaf
JACKKNIFE_GROUPS = 20  # paired weak error: groups of samples left out in turn (the slope's Monte-Carlo error)


def paired_nfes(order: float, per_step: int = 1) -> tuple[int, ...]:
    """Default budgets of a paired weak curve for declared weak order p and `per_step` evaluations per step: four
    doublings from 2^(7 - 2p) steps (rounded to a power of 2, at least 2): 32-256 steps for p = 1, 8-64 for p = 2.
    A higher order reaches its asymptotic range in fewer steps, and its bias falls into the Monte-Carlo noise sooner
    (gmm2d: euler_maruyama 1.04 over 32-256, dpmpp_2m_sde 2.4 over 8-64, heun-based samplers near 2 from 16 steps)."""
    low = 2 ** max(1, round(7 - 2 * float(order)))
    return tuple(low * 2 ** k * per_step for k in range(4))


def default_paired_nfes(spec, options: dict) -> tuple[int, ...]:
    """`paired_nfes` of `spec`'s declared weak order and the evaluations a step costs (solvers with a steps_for_nfe
    rule: as spent at a budget of 64), that spec accepts: a paired curve's budgets unless given."""
    per_step = spec.evaluations_per_step(options) or max(1, round(64 / spec.steps(64, options)))
    return tuple(spec.budgets(paired_nfes(spec.declared_order(options), per_step), options))


def g(v: float) -> str:
    """A number in 3 significant digits (NaN and inf as words)."""
    return f"{v:.3g}" if math.isfinite(v) else str(v)


def rms(x: torch.Tensor) -> float:
    return float(x.double().pow(2).mean().sqrt())


def generator(stochastic: bool, seed: int, n: int | None = None):
    """None for a deterministic solver; one generator (or `n` per-sample generators) for a stochastic one."""
    if not stochastic:
        return None
    return per_sample_generators(range(seed, seed + n)) if n else torch.Generator().manual_seed(seed)


def path_seeds(seed: int, n: int) -> list[int]:
    """Seeds of the Brownian paths of samples 0..n-1 under run seed `seed` (sample i's depends on (seed, i) alone)."""
    return [(int(seed) << 32) + i for i in range(n)]


def ends(model: Model, t_start=None, t_end=None, timesteps=None) -> tuple[float, float]:
    """(t_start, t_end) as `sample` resolves them: an explicit grid's ends, else the schedule's defaults."""
    if timesteps is not None and not isinstance(timesteps, str):
        grid = torch.as_tensor(timesteps, dtype=torch.float64).flatten()
        return float(grid[0]), float(grid[-1])
    sched = model.schedule
    return float(sched.T if t_start is None else t_start), float(sched.default_t_end if t_end is None else t_end)


def strong_reference(model: Model, x_T: torch.Tensor, seeds, t_start: float, t_end: float,
                     steps: int = STRONG_STEPS) -> tuple[torch.Tensor, float]:
    """(x, its estimated RMSE): Euler-Maruyama at `steps` uniform steps from x_T on the Brownian paths of `seeds`.

    The estimate is the RMSE between `steps` and `steps // 2` steps: with strong order 1 the error at steps // 2 is
    twice that at `steps`, so their difference is about the error at `steps`.
    """
    out = []
    for n in (steps // 2, steps):
        paths = brownian_paths(seeds, x_T.shape[1:], t_end, t_start)
        out.append(sample(model, x_T, "euler_maruyama", nfe=n, t_start=t_start, t_end=t_end, timesteps="uniform",
                          generator=paths))
    return out[1], rms(out[1] - out[0])


def run(spec, model: Model, x_T: torch.Tensor, nfe, options: dict, seed: int = 0, **kw):
    """(samples, evaluations counted from the model's calls) of one `sample` call."""
    start = model.nfe
    gen = kw.pop("generator") if "generator" in kw else generator(spec.stochastic(options), seed)
    x = sample(model, x_T, spec.name, nfe=nfe, generator=gen, **kw, **options)
    return x, model.nfe - start


@dataclass(frozen=True)
class Curve:
    """Errors of a solver against the exact answer at growing budgets (adaptive: tightening tolerances)."""

    kind: str  # "path", "weak", "strong" (RMSE on the same Brownian paths) or "tolerance"
    nfes: tuple  # budgets (adaptive: evaluations used, NaN where a run failed)
    errors: tuple  # NaN where a run failed
    stderr: tuple = ()  # weak: standard error of each bias
    floor: float = 0.0  # errors at or below it are not fitted
    scale: float = 1.0  # RMS of the reference solution
    labels: tuple = ()  # adaptive: the tolerances
    notes: tuple = ()  # why a run failed
    bias: tuple = ()  # weak: the signed biases
    samples: int = 0  # weak: samples per budget
    exact_se: float = 0.0  # weak: standard error of the exact expectation (shared by every budget)
    fine: int = 0  # paired weak: the budget of the reference (the same solver on the same paths); 0: exact
    jackknife: tuple = ()  # paired weak: per group of samples, the signed biases with that group left out

    def table(self) -> str:
        what = {"weak": f"|E f(x) - E f(x at NFE {self.fine})|, same paths" if self.fine else "|bias of E log p|",
                "strong": "strong error (RMSE vs fine EM, same path)"}.get(
            self.kind, "RMSE vs reference")
        rows = [f"  {'rtol=atol':>9}  {'NFE':>6}  {what}" if self.labels else f"  {'NFE':>6}  {what}"]
        for i, (n, e) in enumerate(zip(self.nfes, self.errors)):
            cells = [f"{self.labels[i]:>9g}"] if self.labels else []
            cells += [f"{n:>6g}", g(e) + (f" ± {g(self.stderr[i])}" if self.stderr else "")]
            if self.notes and self.notes[i]:
                cells.append(self.notes[i])
            rows.append("  " + "  ".join(cells))
        return "\n".join(rows)


def weak_curve(spec, model: Model, x_T, budgets, options: dict, log_prob, exact, seed: int, **kw) -> Curve:
    """|E log_prob(x) - exact| at each budget, from one generator seeded `seed`."""
    if isinstance(exact, torch.Tensor):
        lp = log_prob(exact).double()
        exact, exact_se = float(lp.mean()), float(lp.std()) / math.sqrt(len(lp))
    else:
        exact, exact_se = float(exact), 0.0
    bias, stderr, notes = [], [], []
    for n in budgets:
        try:
            x, _ = run(spec, model, x_T, n, options, seed, **kw)
            lp = log_prob(x).double()
            b, se = float(lp.mean()) - exact, math.hypot(float(lp.std()) / math.sqrt(len(lp)), exact_se)
            note = "" if math.isfinite(b) else "non-finite samples"
        except (ValueError, RuntimeError) as e:
            b, se, note = math.nan, math.nan, problem(e)
        bias.append(b if math.isfinite(b) else math.nan), stderr.append(se), notes.append(note)
    return weak_errors(tuple(budgets), bias, stderr, tuple(notes), len(x_T), exact_se)


def weak_errors(budgets: tuple, bias, stderr, notes: tuple, samples: int, exact_se: float) -> Curve:
    """The weak-error curve of signed biases with their standard errors (the floor: WEAK_FLOOR_SE of the largest)."""
    floor = WEAK_FLOOR_SE * max([s for s in stderr if math.isfinite(s)], default=0.0)
    return Curve("weak", budgets, tuple(abs(b) for b in bias), tuple(stderr), floor, 1.0, (), notes, tuple(bias),
                 samples, exact_se)


def pool(a: Curve, b: Curve) -> Curve:
    """Two weak curves at the same budgets from independent samples (same exact value, or paired with the same fine
    budget) as one, from all samples; a paired curve's left-out-group biases are pooled group by group."""
    if a.kind != "weak" or b.kind != "weak" or a.nfes != b.nfes or a.exact_se != b.exact_se or a.fine != b.fine:
        raise ValueError("pool takes two weak-error curves at the same budgets against the same exact value "
                         "(paired: the same fine budget)")
    n, m, ex = a.samples, b.samples, a.exact_se
    bias = [(n * x + m * y) / (n + m) for x, y in zip(a.bias, b.bias)]
    notes = tuple("; ".join(filter(None, p)) for p in zip(a.notes, b.notes))
    if a.fine:
        stderr = [math.hypot(n * s, m * t) / (n + m) for s, t in zip(a.stderr, b.stderr)]
        jackknife = tuple(tuple((n * x + m * y) / (n + m) for x, y in zip(p, q))
                          for p, q in zip(a.jackknife, b.jackknife))
        return paired_errors(a.nfes, bias, stderr, notes, n + m, a.fine, jackknife)
    own = [math.sqrt(n * n * max(s * s - ex * ex, 0.0) + m * m * max(t * t - ex * ex, 0.0)) / (n + m)
           for s, t in zip(a.stderr, b.stderr)]  # the samples' own standard errors, then the shared exact one
    return weak_errors(a.nfes, bias, [math.hypot(o, ex) for o in own], notes, n + m, ex)


def paired_weak_curve(solver: str, model: Model, x_T: torch.Tensor, nfes=None, *, f, fine: int | None = None,
                      seed: int = 0, t_start=None, t_end=None, timesteps=None, depth: int = PAIRED_DEPTH,
                      **options) -> Curve:
    """Weak error E f(X_n) - E f(X_fine) at each budget n of `nfes` (default: `default_paired_nfes`, from the
    declared weak order and the solver's evaluations per step), as the mean of paired differences on the same
    Brownian path per sample (seeds `path_seeds(seed, len(x_T))`) from the same x_T, X_fine the same solver at
    `fine` NFE (default PAIRED_FINE x the largest budget): a control variate, whose standard error is the std of the
    differences / sqrt(N), not that of f.

    f: x -> one value per sample (e.g. the exact log p_{t_end}). The reference's own weak error (~ fine^-p) is
    shared by every point; it is negligible while fine >> n. Floor: PAIRED_FLOOR_SE x the largest standard error
    among the points within PAIRED_FLOOR_SE standard errors of 0 (none: 0), so those points are not fitted.
    """
    spec = get_solver(solver)
    spec.resolve_options(options)
    if not spec.stochastic(options):
        raise ValueError(f"solver {solver!r} draws no noise: use error_curve (RMSE against the ODE reference)")
    t_start, t_end = ends(model, t_start, t_end, timesteps)
    nfes = default_paired_nfes(spec, options) if nfes is None else tuple(nfes)
    budgets = spec.budgets(nfes, options)
    if not budgets:
        raise ValueError(f"solver {solver!r} accepts none of the budgets {nfes}")
    fine = PAIRED_FINE * max(budgets) if fine is None else fine
    if fine not in spec.budgets([fine], options) or fine <= max(budgets):
        raise ValueError(f"the fine budget {fine} must be a budget of {solver!r} above the largest, {max(budgets)}")
    seeds = path_seeds(seed, len(x_T))
    kw = {"timesteps": timesteps} if timesteps is not None and not isinstance(timesteps, str) else {
        "t_start": t_start, "t_end": t_end, "timesteps": timesteps}

    def values(n: int) -> torch.Tensor:
        paths = brownian_paths(seeds, x_T.shape[1:], t_end, t_start, depth=depth)
        return f(run(spec, model, x_T, n, options, seed, generator=paths, **kw)[0]).double().flatten()

    ref = values(fine)
    groups = torch.arange(len(x_T)) % JACKKNIFE_GROUPS
    bias, stderr, notes, left_out = [], [], [], []
    for n in budgets:
        try:
            d = values(n) - ref
            b, se = float(d.mean()), float(d.std()) / math.sqrt(len(d))
            note = "" if math.isfinite(b) else "non-finite samples"
            left_out.append([float(d[groups != g].mean()) for g in range(JACKKNIFE_GROUPS)])
        except (ValueError, RuntimeError) as e:
            b, se, note = math.nan, math.nan, problem(e)
            left_out.append([math.nan] * JACKKNIFE_GROUPS)
        bias.append(b if math.isfinite(b) else math.nan), stderr.append(se), notes.append(note)
    return paired_errors(tuple(budgets), bias, stderr, tuple(notes), len(x_T), fine, tuple(zip(*left_out)))


def paired_errors(budgets: tuple, bias, stderr, notes: tuple, samples: int, fine: int, jackknife: tuple) -> Curve:
    """The paired weak curve of signed biases against the same solver at `fine`, with their standard errors and
    left-out-group biases (floor: PAIRED_FLOOR_SE x the largest standard error of the points within that many of
    them of 0)."""
    noise = [s for b, s in zip(bias, stderr) if math.isfinite(b) and abs(b) <= PAIRED_FLOOR_SE * s]
    return Curve("weak", budgets, tuple(abs(b) for b in bias), tuple(stderr), PAIRED_FLOOR_SE * max(noise, default=0.0),
                 1.0, (), notes, tuple(bias), samples, 0.0, fine, jackknife)


def strong_error_curve(solver: str, model: Model, x_T: torch.Tensor, nfes=None, *, seed: int = 0, t_start=None,
                       t_end=None, timesteps=None, steps: int = STRONG_STEPS, reference=None, **options) -> Curve:
    """RMSE of `solver` at each budget of `nfes` against Euler-Maruyama at `steps` steps, on one Brownian path per
    sample (seeds `path_seeds(seed, len(x_T))`, on [t_end, t_start]) from the same x_T.

    reference: (x, estimated RMSE) of `strong_reference` when already computed. Errors within STRONG_FLOOR times
    the reference's estimated RMSE are not fitted.
    """
    spec = get_solver(solver)
    spec.resolve_options(options)
    t_start, t_end = ends(model, t_start, t_end, timesteps)
    seeds = path_seeds(seed, len(x_T))
    ref, ref_rmse = reference or strong_reference(model, x_T, seeds, t_start, t_end, steps)
    budgets = spec.budgets(STRONG_NFES if nfes is None else nfes, options)
    kw = {"timesteps": timesteps} if timesteps is not None and not isinstance(timesteps, str) else {
        "t_start": t_start, "t_end": t_end, "timesteps": timesteps}
    errors, notes = [], []
    for n in budgets:
        try:
            paths = brownian_paths(seeds, x_T.shape[1:], t_end, t_start)
            x, _ = run(spec, model, x_T, n, options, seed, generator=paths, **kw)
            err = rms(x - ref)
            note = "" if math.isfinite(err) else "non-finite samples"
        except (ValueError, RuntimeError) as e:
            err, note = math.nan, problem(e)
        errors.append(err if math.isfinite(err) else math.nan), notes.append(note)
    return Curve("strong", tuple(budgets), tuple(errors), (), STRONG_FLOOR * ref_rmse, max(rms(ref), 1e-12), (),
                 tuple(notes), samples=len(x_T))


def error_curve(solver: str, model: Model, x_T: torch.Tensor, nfes=None, *, reference=None, log_prob=None,
                exact=None, seed: int = 0, t_start=None, t_end=None, timesteps=None, **options) -> Curve:
    """Errors of `solver` at the budgets of `nfes` it accepts (adaptive: at the tolerances `nfes`).

    Deterministic: RMSE against `reference` (DOP853 from x_T if None). Stochastic: |E log_prob(x) - exact|,
    `log_prob(x)` the exact log density at t_end per sample, `exact` its exact expectation or exact samples.
    """
    spec = get_solver(solver)
    spec.resolve_options(options)
    kw = {"t_start": t_start, "t_end": t_end, "timesteps": timesteps}
    if spec.stochastic(options):
        if log_prob is None or exact is None:
            raise ValueError(f"solver {solver!r} draws noise: its weak error needs log_prob (x -> log p_t_end(x)) "
                             "and exact (E log p_t_end, or exact samples)")
        budgets = spec.budgets(WEAK_NFES if nfes is None else nfes, options)
        return weak_curve(spec, model, x_T, budgets, options, log_prob, exact, seed, **kw)
    if reference is None:
        if timesteps is not None and not isinstance(timesteps, str):  # an explicit grid gives the ends
            ends = torch.as_tensor(timesteps, dtype=torch.float64).flatten()
            t_start, t_end = float(ends[0]), float(ends[-1])
        reference = reference_solution(model, x_T, t_start, t_end, rtol=REFERENCE_TOL, atol=REFERENCE_TOL)
    if spec.adaptive:
        if not {"rtol", "atol"} <= set(spec.options):
            raise ValueError(f"adaptive solver {solver!r} has no rtol/atol options to tighten")
        if timesteps is not None:
            raise ValueError(f"adaptive solver {solver!r} chooses its own steps: pass no timesteps")
        labels = tuple(TOLERANCES if nfes is None else nfes)
        calls = [(None, dict(options, rtol=tol, atol=tol)) for tol in labels]
        kw.pop("timesteps")
    else:
        labels, calls = (), [(n, options) for n in spec.budgets(ORDER_NFES if nfes is None else nfes, options)]
    used, errors, notes = [], [], []
    for nfe, opts in calls:
        try:
            x, n = run(spec, model, x_T, nfe, opts, seed, **kw)
            err = rms(x - reference)
            note = "" if math.isfinite(err) else "non-finite samples"
        except (ValueError, RuntimeError) as e:
            n, err, note = (math.nan if nfe is None else nfe), math.nan, problem(e)
        used.append(n), errors.append(err if math.isfinite(err) else math.nan), notes.append(note)
    return Curve("tolerance" if spec.adaptive else "path", tuple(used), tuple(errors), (), ERROR_FLOOR,
                 max(rms(reference), 1e-12), labels, tuple(notes))
