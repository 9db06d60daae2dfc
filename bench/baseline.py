"""Solver accuracy baselines: measure every registered solver on the exact mixtures, store, compare.

`python -m bench baseline` measures, compares with `results/baselines/*.csv`, prints what moved and
exits 1 on a regression; `--update` rewrites the CSVs. Everything is float64 from fixed seeds on one
CPU thread, so a rerun on the same machine gives the same numbers bit for bit.

Measured, for gmm2d and gmm-digits under VP and VE, every solver in `solvers.list_solvers()`, at
every budget of NFES the solver accepts (adaptive solvers: one row at default tolerances):
- deterministic solvers: RMSE and max error against the DOP853 reference from the same x_T;
- stochastic solvers (and `STOCHASTIC_VARIANTS`, e.g. ddim with eta=1): the bias of E[log p_t_end(x)]
  and of E|x|^2 against exact samples of the marginal at t_end, with standard errors;
- the convergence order of each fixed-step deterministic solver, measured as issue 2 does (slope of
  log RMSE vs log NFE at NFE 40..640 on the 2-D mixture, VP, logsnr grid, t 1 -> 1e-3).
Rules (`compare`): an error above baseline * 1.01 + 1e-12 regresses; a bias whose size rises by more
than 3 standard errors regresses; an order below its `ORDER_BANDS` band regresses; improvements are
reported and pass; a row in the baseline but not measured, or measured but not in the baseline, fails.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from reference_models import load
from reference_models.threads import torch_threads
from solvers import get_solver, list_solvers, per_sample_generators, reference_solution, sample

from .metrics import EXACT_REFERENCE_TOL, path_errors

BASELINE_DIR = Path(__file__).resolve().parents[1] / "results" / "baselines"
MODELS = ("gmm2d", "gmm-digits")
SCHEDULES = ("vp", "ve")
NFES = (5, 10, 20, 50, 100)
ODE_SAMPLES = {"gmm2d": 256, "gmm-digits": 32}  # x_T per (model, schedule) for path errors
SDE_SAMPLES = {"gmm2d": 1000, "gmm-digits": 200}  # stochastic samples, one generator each
EXACT_SAMPLES = {"gmm2d": 20_000, "gmm-digits": 5_000}  # exact draws of the marginal at t_end
SEED = 0
# Options that make a deterministic solver stochastic: measured as an extra, stochastic row set.
STOCHASTIC_VARIANTS = {"ddim": {"eta": 1.0}}

# Convergence order (issue 2): bands of the measured slope of log RMSE vs log NFE, by declared order.
ORDER_BANDS = {1: (0.8, 1.4), 2: (1.7, 2.4), 3: (2.6, 3.5)}
ORDER_BAND_EXCEPTIONS = {"dpm_solver_3m": (1.9, math.inf)}  # its lower-order warm-up caps the slope
ORDER_MODEL, ORDER_SCHEDULE, ORDER_GRID = "gmm2d", "vp", "logsnr"
ORDER_NFES = (40, 80, 160, 320, 640)
ORDER_SAMPLES = 64

REL_TOL, ABS_TOL = 0.01, 1e-12  # deterministic errors
SIGMAS = 3.0  # stochastic biases, in standard errors
ERROR_METRICS = ("rmse", "max_error")
BIAS_METRICS = ("bias_logp", "bias_sq_norm")
COLUMNS = ["model", "schedule", "solver", "options", "kind", "timesteps", "nfe", "nfe_used", "samples", "metric",
           "value", "stderr", "reference"]
KEY = ["model", "schedule", "solver", "options", "timesteps", "nfe", "metric"]
FAILING = ("regressed", "missing", "new")


def order_band(name: str) -> tuple[float, float]:
    """The band the measured order of solver `name` must lie in (issue 2)."""
    if name in ORDER_BAND_EXCEPTIONS:
        return ORDER_BAND_EXCEPTIONS[name]
    return ORDER_BANDS[int(get_solver(name).order)]


def single_thread():
    """Run torch on one CPU thread: reductions then sum in one order, and small tensors avoid OpenMP contention."""
    return torch_threads(1)


def format_options(options: dict) -> str:
    return ",".join(f"{k}={v!r}" for k, v in sorted(options.items()))


# --- cells --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One measurement: a solver (with options) at one budget on one (model, schedule)."""

    model: str
    schedule: str
    solver: str
    options: tuple  # sorted (name, value) pairs
    nfe: int | None  # None: adaptive, at default tolerances
    stochastic: bool


def valid_budgets(name: str, options: dict, nfes=NFES) -> list[int | None]:
    """The budgets of `nfes` that solver `name` accepts with `options` ([None] for an adaptive solver)."""
    spec = get_solver(name)
    if spec.adaptive:
        return [None]
    ok = []
    for n in nfes:
        try:
            spec.steps(n, options)
        except ValueError:
            continue
        ok.append(n)
    return ok


def cells(models=MODELS, schedules=SCHEDULES, solvers=None, nfes=NFES) -> list[Cell]:
    """Every cell of the baseline: each solver's default options, plus its stochastic variant if any."""
    names = list_solvers() if solvers is None else list(solvers)
    out = []
    for model in models:
        for schedule in schedules:
            for name in names:
                spec = get_solver(name)
                variants = [{}] + ([STOCHASTIC_VARIANTS[name]] if name in STOCHASTIC_VARIANTS else [])
                for opts in variants:
                    stochastic = spec.stochastic(opts)
                    for n in valid_budgets(name, opts, nfes):
                        out.append(Cell(model, schedule, name, tuple(sorted(opts.items())), n, stochastic))
    return out


class Problem:
    """One (model, schedule): fixed-seed x_T, its reference solution and exact marginal samples, built lazily."""

    def __init__(self, model: str, schedule: str):
        self.name, self.schedule_name = model, schedule
        self.ref_model = load(model, schedule=schedule)
        if self.ref_model.mixture is None:
            raise ValueError(f"baselines need an exact model (closed-form marginals); {model!r} is not one")
        self.model, self.mixture = self.ref_model.model, self.ref_model.mixture
        self.sched = self.model.schedule
        self.t_end = self.sched.default_t_end
        self._ode = self._exact = None

    def prior(self, n: int, generator) -> torch.Tensor:
        return self.sched.prior_sample((n, *self.ref_model.shape), generator, torch.float64)

    def ode(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_T, DOP853 reference solution at t_end) for ODE_SAMPLES samples."""
        if self._ode is None:
            x_T = self.prior(ODE_SAMPLES[self.name], torch.Generator().manual_seed(SEED))
            self._ode = x_T, reference_solution(self.model, x_T, rtol=EXACT_REFERENCE_TOL, atol=EXACT_REFERENCE_TOL)
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

    def sde_generators(self) -> list[torch.Generator]:
        """One generator per stochastic sample (fresh each call: every solver sees the same x_T and noise)."""
        n = SDE_SAMPLES[self.name]
        return per_sample_generators(range(SEED * 1_000_003, SEED * 1_000_003 + n))


def bias(samples: torch.Tensor, exact: torch.Tensor) -> tuple[float, float]:
    """mean(samples) - mean(exact) and its standard error (independent draws); NaN if any sample is not finite."""
    a, b = samples.double(), exact.double()
    if not torch.isfinite(a).all():
        return math.nan, math.nan
    se = math.sqrt(float(a.var()) / len(a) + float(b.var()) / len(b))
    return float(a.mean() - b.mean()), se


def measure_cell(problem: Problem, cell: Cell, run=sample) -> list[dict]:
    """The rows of one cell (a failing solver gives NaN values with the error in `reference`).

    `run` is the sampling call, `solvers.sample` (tests pass a perturbed one to check that it is caught).
    """
    spec, opts = get_solver(cell.solver), dict(cell.options)
    base = {"model": cell.model, "schedule": cell.schedule, "solver": cell.solver, "options": format_options(opts),
            "kind": "sde" if cell.stochastic else "ode", "timesteps": spec.default_grid, "nfe": cell.nfe}
    model = problem.model
    if cell.stochastic:
        gens = problem.sde_generators()
        x_T, exact = problem.prior(len(gens), gens), problem.exact()
        ref_note = f"{EXACT_SAMPLES[cell.model]} exact samples of the marginal at t_end={problem.t_end:g}"
        metrics = BIAS_METRICS
    else:
        x_T, ref = problem.ode()
        ref_note = f"DOP853 float64 rtol=atol={EXACT_REFERENCE_TOL:g}"
        metrics = ERROR_METRICS
    start = model.nfe
    try:
        x = run(model, x_T, cell.solver, nfe=cell.nfe, generator=gens if cell.stochastic else None, **opts)
        if cell.stochastic:
            values = {m: bias(s, exact[m]) for m, s in problem.statistics(x).items()}
        else:
            values = {m: (v, math.nan) for m, v in
                      zip(ERROR_METRICS, path_errors(x, ref).values())}  # error_rmse, error_max
    except (RuntimeError, ValueError) as e:  # a solver that breaks is a regression row, not a crash
        values, ref_note = {m: (math.nan, math.nan) for m in metrics}, f"failed: {e}"
    used = model.nfe - start
    return [{**base, "nfe_used": used, "samples": len(x_T), "metric": m, "value": v, "stderr": se,
             "reference": ref_note} for m, (v, se) in values.items()]


def order_rows(solvers=None, nfes=ORDER_NFES, samples=ORDER_SAMPLES) -> list[dict]:
    """Measured order of every fixed-step deterministic solver on the issue-2 problem (see module docstring)."""
    names = [n for n in (list_solvers("ode") if solvers is None else solvers)
             if get_solver(n).kind == "ode" and not get_solver(n).adaptive and not get_solver(n).stochastic()]
    if not names:
        return []
    problem = Problem(ORDER_MODEL, ORDER_SCHEDULE)
    x_T = problem.prior(samples, torch.Generator().manual_seed(SEED + 2))
    ref = reference_solution(problem.model, x_T, rtol=EXACT_REFERENCE_TOL, atol=EXACT_REFERENCE_TOL)
    rows = []
    for name in names:
        errors = [path_errors(sample(problem.model, x_T, name, nfe=n, timesteps=ORDER_GRID), ref)["error_rmse"]
                  for n in nfes]
        rows.append({"model": ORDER_MODEL, "schedule": ORDER_SCHEDULE, "solver": name, "options": "", "kind": "ode",
                     "timesteps": ORDER_GRID, "nfe": None, "nfe_used": sum(nfes), "samples": samples,
                     "metric": "order", "value": measured_order(nfes, errors), "stderr": math.nan,
                     "reference": "slope of log RMSE vs log NFE at NFE " + ",".join(map(str, nfes))})
    return rows


def measured_order(nfes, errors) -> float:
    """Minus the least-squares slope of log(error) on log(NFE), over all points (issue 2's rule)."""
    return float(-np.polyfit(np.log(np.asarray(nfes, float)), np.log(np.asarray(errors, float)), 1)[0])


def measure(models=MODELS, schedules=SCHEDULES, solvers=None, nfes=NFES, orders: bool = True,
            progress: bool = True, run=sample) -> pd.DataFrame:
    """The baseline table for these models x schedules x solvers (all registered solvers by default)."""
    from tqdm import tqdm

    todo = cells(models, schedules, solvers, nfes)
    problems: dict[tuple[str, str], Problem] = {}
    rows = []
    with single_thread(), torch.no_grad():
        bar = tqdm(todo, desc="baseline", unit="cell", disable=not progress)
        for cell in bar:
            bar.set_postfix_str(f"{cell.model}/{cell.schedule} {cell.solver} nfe={cell.nfe}")
            key = (cell.model, cell.schedule)
            if key not in problems:
                problems[key] = Problem(*key)
            rows += measure_cell(problems[key], cell, run)
        if orders and ORDER_MODEL in models and ORDER_SCHEDULE in schedules:
            rows += order_rows(solvers)
    return table(rows)


def table(rows) -> pd.DataFrame:
    df = pd.DataFrame(list(rows), columns=COLUMNS)
    for c in ("nfe", "nfe_used", "samples"):
        df[c] = df[c].astype("Int64")
    for c in ("value", "stderr"):
        df[c] = df[c].astype("float64")
    df["options"] = df["options"].fillna("").astype(str)
    return df


# --- storage ------------------------------------------------------------------------------


def read_baselines(directory=BASELINE_DIR) -> pd.DataFrame:
    """Every results/baselines/*.csv, concatenated (an empty table when there are none)."""
    files = sorted(Path(directory).glob("*.csv"))
    frames = [pd.read_csv(f, keep_default_na=False, na_values=[""],
                          dtype={"options": str, "reference": str}) for f in files]
    return table(pd.concat(frames, ignore_index=True).to_dict("records")) if frames else table([])


def write_baselines(measured: pd.DataFrame, directory=BASELINE_DIR) -> list[Path]:
    """Replace the measured (model, schedule, solver) rows in the per-model CSVs, keeping all other rows."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    old = read_baselines(directory)
    done = set(map(tuple, measured[["model", "schedule", "solver"]].drop_duplicates().to_numpy()))
    keep = old[[(m, s, v) not in done for m, s, v in old[["model", "schedule", "solver"]].to_numpy()]]
    merged = table(pd.concat([keep, measured], ignore_index=True).to_dict("records"))
    written = []
    for model, rows in merged.groupby("model", sort=True):
        rows = rows.sort_values(["schedule", "kind", "solver", "options", "metric", "nfe"], kind="stable", na_position="first")
        path = directory / f"{model}.csv"
        tmp = path.with_suffix(".csv.tmp")
        rows.to_csv(tmp, index=False)  # floats are written as repr: they read back exactly
        tmp.replace(path)
        written.append(path)
    return written


# --- comparison ---------------------------------------------------------------------------


def _key(df: pd.DataFrame) -> list[str]:
    return ["|".join("" if pd.isna(v) else str(v) for v in r) for r in df[KEY].itertuples(index=False)]


def judge(metric: str, solver: str, base: float, now: float, se: float, rel_tol=REL_TOL, abs_tol=ABS_TOL,
          sigmas=SIGMAS) -> tuple[str, str]:
    """(status, note) of one value against its baseline; status is same, moved, improved or regressed."""
    if (math.isnan(base) and math.isnan(now)) or base == now:
        return "same", ""
    if math.isnan(now):
        return "regressed", "now NaN (solver failed)"
    if math.isnan(base):
        return "improved", "baseline was NaN"
    if metric == "order":
        lo, hi = order_band(solver)
        if now < lo:
            return "regressed", f"order below its band [{lo:g}, {hi:g}]"
        return "moved", ("above its band" if now > hi else "")
    if metric in BIAS_METRICS:
        se = se if math.isfinite(se) and se > 0 else 0.0
        if abs(now) > abs(base) + sigmas * se:
            return "regressed", f"|bias| rose by {(abs(now) - abs(base)) / se if se else math.inf:.1f} se"
        if abs(now) < abs(base) - sigmas * se:
            return "improved", f"|bias| fell by {(abs(base) - abs(now)) / se:.1f} se"
        return "moved", f"within {sigmas:g} se"
    if now > base * (1 + rel_tol) + abs_tol:
        return "regressed", f"error x{now / base:.4g}" if base > 0 else "error rose from 0"
    if now * (1 + rel_tol) + abs_tol < base:
        return "improved", f"error x{now / base:.4g}"
    return "moved", f"within {rel_tol:.0%}"


def compare(baseline: pd.DataFrame, current: pd.DataFrame, rel_tol=REL_TOL, abs_tol=ABS_TOL,
            sigmas=SIGMAS) -> pd.DataFrame:
    """One row per key of either table: base and current value, status and note (see `judge`).

    Baseline rows of (model, schedule) pairs that `current` did not measure (orders counted apart) are
    left out, so a partial measurement compares only what it measured. nfe_used rising for an adaptive solver also regresses.
    """
    def scope(df):
        return [(m, s, metric == "order") for m, s, metric in df[["model", "schedule", "metric"]].to_numpy()]

    measured = set(scope(current))
    baseline = baseline[[k in measured for k in scope(baseline)]]
    b = baseline.assign(key=_key(baseline)).set_index("key")
    c = current.assign(key=_key(current)).set_index("key")
    out = []
    for key in list(b.index) + [k for k in c.index if k not in b.index]:
        row = (c if key in c.index else b).loc[key]
        rec = {k: row[k] for k in KEY}
        if key not in c.index:
            rec.update(base=b.loc[key, "value"], now=math.nan, status="missing", note="in the baseline, not measured")
        elif key not in b.index:
            rec.update(base=math.nan, now=c.loc[key, "value"], status="new",
                       note="not in the baseline: run `python -m bench baseline --update`")
        else:
            base, now = float(b.loc[key, "value"]), float(c.loc[key, "value"])
            status, note = judge(row["metric"], row["solver"], base, now, float(b.loc[key, "stderr"]),
                                 rel_tol, abs_tol, sigmas)
            used_b, used_c = b.loc[key, "nfe_used"], c.loc[key, "nfe_used"]
            if pd.notna(used_b) and pd.notna(used_c) and used_c != used_b:
                worse = used_c > used_b * (1 + rel_tol)
                status = "regressed" if worse else ("improved" if status in ("same", "moved") else status)
                note = f"{note}; nfe_used {used_b} -> {used_c}".lstrip("; ")
            rec.update(base=base, now=now, status=status, note=note)
        out.append(rec)
    cols = [*KEY, "base", "now", "status", "note"]
    return pd.DataFrame(out, columns=cols)


def failures(comparison: pd.DataFrame) -> pd.DataFrame:
    return comparison[comparison["status"].isin(FAILING)]


def format_comparison(comparison: pd.DataFrame, limit: int = 60) -> str:
    """What moved, failures first, and a one-line count of every status."""
    order = {"regressed": 0, "missing": 1, "new": 2, "improved": 3, "moved": 4}
    moved = comparison[comparison["status"] != "same"].copy()
    counts = comparison["status"].value_counts()
    summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("same", "moved", "improved", "regressed", "missing", "new"))
    if moved.empty:
        return f"nothing moved ({summary})"
    moved["rank"] = moved["status"].map(order)
    moved = moved.sort_values(["rank", "model", "schedule", "metric", "solver"], kind="stable").drop(columns="rank")
    shown = moved.head(limit).copy()
    for c in ("base", "now"):
        shown[c] = shown[c].map(lambda v: f"{v:.6g}")
    text = shown.drop(columns=["timesteps"]).to_string(index=False)
    if len(moved) > limit:
        text += f"\n... and {len(moved) - limit} more moved rows"
    return f"{text}\n{summary}"


# --- command ------------------------------------------------------------------------------


def _names(value: str, valid, what: str) -> list[str]:
    names = [v for v in value.split(",") if v]
    bad = [n for n in names if n not in valid]
    if bad or not names:
        raise ValueError(f"unknown {what} {', '.join(bad) or repr(value)}; valid: {', '.join(valid)}")
    return names


def add_baseline_arguments(parser) -> None:
    parser.add_argument("--update", action="store_true", help="rewrite the baseline CSVs with the measured values")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    parser.add_argument("--schedules", default=",".join(SCHEDULES), help="comma-separated subset of vp, ve")
    parser.add_argument("--solvers", default="all", help="'all' (every registered solver) or a comma-separated list")
    parser.add_argument("--dir", default=str(BASELINE_DIR), help="baseline directory (default: results/baselines)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def main_baseline(args) -> int:
    try:
        models = _names(args.models, MODELS, "model")
        schedules = _names(args.schedules, SCHEDULES, "schedule")
        solvers = None if args.solvers == "all" else _names(args.solvers, list_solvers(), "solver")
    except ValueError as e:
        print(f"error: {e}")
        return 2
    start = time.perf_counter()
    current = measure(models, schedules, solvers, progress=not args.quiet)
    took = time.perf_counter() - start
    if args.update:
        for path in write_baselines(current, args.dir):
            print(f"wrote {path}")
        print(f"{len(current)} rows measured in {took:.1f} s")
        return 0
    baseline = read_baselines(args.dir)
    if solvers is not None:
        baseline = baseline[baseline["solver"].isin(solvers)]
    comparison = compare(baseline, current)
    print(format_comparison(comparison))
    bad = failures(comparison)
    print(f"{len(current)} rows measured in {took:.1f} s; "
          + (f"{len(bad)} FAILED (regressed, missing or new)" if len(bad) else "no regression"))
    return 1 if len(bad) else 0
