"""The sweep: a grid of cells (model, schedule, solver, NFE, seed), each sampled, timed and scored into one row.

Cells of one (model, schedule, seed) group share the same prior noise x_T, drawn from per-sample
generators whose seeds derive from (seed, sample index), so every solver sees the same x_T (paired
comparisons) whatever the batch size or the number of ranks, and they share one cached reference
solution. Fixed-budget solvers get one cell per NFE; adaptive solvers (rk45, dpm_solver_adaptive)
take tolerances, not a budget, and get one cell per group at their default tolerances (nfe <NA>,
nfe_used measured).
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import reference_models
from reference_models import ReferenceModel
from solvers import get_solver, per_sample_generators, sample

from . import metrics, schema
from .dist import World
from .store import Journal, atomic_write, write_tables

# Default samples per cell, by the model's metric family (overridden by --samples).
DEFAULT_SAMPLES = {"2d": 1000, "image": 200}
# Streams of per-sample seeds: prior noise, solver noise, real data.
XT, NOISE, REAL = 0, 1, 2


@dataclass(frozen=True)
class Cell:
    model: str
    schedule: str
    prediction: str
    solver: str
    nfe: int | None  # None: adaptive solver at its default tolerances
    seed: int

    @property
    def key(self) -> tuple:
        return (self.model, self.schedule, self.prediction, self.solver, self.nfe, self.seed)

    def identity(self) -> dict:
        return dict(zip(schema.IDENTITY, self.key))

    @property
    def group(self) -> tuple:
        return (self.model, self.schedule, self.prediction, self.seed)

    def __str__(self) -> str:
        return f"{self.model}/{self.schedule} {self.solver} nfe={'auto' if self.nfe is None else self.nfe} seed={self.seed}"


@dataclass
class Sweep:
    models: list[str]
    solvers: list[str]
    nfes: list[int]
    seeds: list[int]
    schedules: list[str] = field(default_factory=lambda: ["vp"])
    prediction: str = "eps"
    samples: int | None = None  # None: DEFAULT_SAMPLES by metric family
    batch_size: int | None = None  # None: a rank's whole shard in one batch
    cache_dir: str | None = None
    run_id: str = ""
    repeats: int = 3  # timed repetitions of every cell: wall_s is their median

    def cells(self) -> list[Cell]:
        """The grid, grouped by (model, schedule, seed) so that each group loads its model once."""
        out = []
        for m in self.models:
            for sch in self.schedules:
                for seed in self.seeds:
                    for s in self.solvers:
                        budgets = [None] if get_solver(s).adaptive else self.nfes
                        out += [Cell(m, sch, self.prediction, s, n, seed) for n in budgets]
        return out


def sample_seeds(seed: int, stream: int, indices) -> list[int]:
    """Per-sample generator seeds from (run seed, stream, sample index) through numpy's SeedSequence."""
    return [int(np.random.SeedSequence(seed, spawn_key=(stream, int(i))).generate_state(1, np.uint64)[0] >> 1)
            for i in indices]


def load_model(name: str, schedule: str, prediction: str, cache_dir, device, progress: bool) -> ReferenceModel:
    return reference_models.load(name, schedule=schedule, prediction=prediction, cache_dir=cache_dir,
                                 device=str(device), train=True, progress=progress)


class PeakMemory:
    """Peak memory of a cell above what was in use when it started, in MiB.

    CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats. CPU: free heap pages are
    first handed back to the kernel (glibc malloc_trim, so that the cell's allocations show as new
    resident pages), then the kernel's peak resident set (VmHWM in /proc/self/status) is reset by
    writing 5 to /proc/self/clear_refs; the result is VmHWM at the end minus the resident set at the
    start. NaN where that reset is not available.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.base = math.nan

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.base = _proc_status_kb("VmRSS") * 1024
        except OSError:
            self.base = math.nan

    def stop(self) -> float:
        if self.device.type == "cuda":
            return (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
        if math.isnan(self.base):
            return math.nan
        return max(_proc_status_kb("VmHWM") * 1024 - self.base, 0.0) / 2**20


def _proc_status_kb(field_name: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return float(line.split()[1])
    raise OSError(f"{field_name} not in /proc/self/status")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _is_stochastic(spec, options: dict) -> bool:
    stochastic = getattr(spec, "stochastic", None)
    return bool(stochastic(options)) if callable(stochastic) else spec.kind == "sde"


def reference_path(cache_dir, cell: Cell, ref: ReferenceModel, n: int) -> Path:
    """Where a group's reference solution is cached: the model cache, keyed by the model's fingerprint.

    The fingerprint is the checkpoint's config for trained models and the mixture's parameters for
    exact ones, with the reference tolerances, so a later run reuses the solution and a retrained or
    refitted model never does. The file also holds x_T, which is compared before use.
    """
    key = hashlib.sha256(json.dumps({"info": ref.info, "tol": [metrics.EXACT_REFERENCE_TOL,
                                                                 metrics.TRAINED_REFERENCE_TOL]},
                                    sort_keys=True, default=str).encode())
    if ref.mixture is not None:
        for t in (ref.mixture.means, ref.mixture.evals, ref.mixture.evecs, ref.mixture.log_weights):
            key.update(t.contiguous().numpy().tobytes())
    name = f"{cell.model}-{cell.schedule}-{cell.prediction}-seed{cell.seed}-n{n}-{key.hexdigest()[:16]}.safetensors"
    return reference_models.cache_dir(cache_dir) / "references" / name


class Group:
    """What the cells of one (model, schedule, seed) group share: model, x_T shard, reference, real data."""

    def __init__(self, sweep: Sweep, cell: Cell, world: World, run_dir: Path, loader: Callable, progress: bool,
                 needs_reference: bool):
        self.world, self.seed = world, cell.seed
        # rank 0 loads (and trains, on first use) before the others read the cache
        if world.main:
            self.ref = loader(cell.model, cell.schedule, cell.prediction, sweep.cache_dir, world.device, progress)
        world.barrier()
        if not world.main:
            self.ref = loader(cell.model, cell.schedule, cell.prediction, sweep.cache_dir, world.device, False)
        self.model = self.ref.model
        self.model.timing = True
        self.n = sweep.samples or DEFAULT_SAMPLES.get(self.ref.metric, 500)
        self.shard = world.shard(self.n)
        self.batch = sweep.batch_size or max(len(self.shard), 1)
        self.x_T = self.ref.schedule.prior_sample((len(self.shard), *self.ref.shape),
                                                  per_sample_generators(sample_seeds(self.seed, XT, self.shard)),
                                                  device=world.device)
        self.reference, self.reference_note = None, ""
        if needs_reference:
            self.reference, self.reference_note = self._reference(reference_path(sweep.cache_dir, cell, self.ref,
                                                                                 self.n))
        self.real = self.exact_log_p = None
        if world.main:
            self.real = self.ref.data(self.n, torch.Generator().manual_seed(sample_seeds(self.seed, REAL, [0])[0]))
            if self.ref.mixture is not None:
                self.exact_log_p = metrics.exact_log_likelihood(self.ref, self.seed)

    def _reference(self, path: Path):
        """The reference solution from this group's x_T, from the run directory's cache or computed (sharded)."""
        from safetensors.torch import load_file, save_file

        x_T = self.world.gather(self.x_T.cpu())
        cached = None
        if self.world.main and path.exists():
            try:
                saved = load_file(path)
                if torch.equal(saved["x_T"], x_T):
                    cached = saved["x_0"]
            except Exception as e:  # a corrupt cache file is recomputed, never half-used
                tqdm.write(f"recomputing the reference solution: {path} is unreadable ({e})")
        if self.world.broadcast(cached is not None):
            return cached, "cached"
        try:
            x, how = metrics.reference(self.ref, self.x_T)
            err = None
        except Exception as e:
            x, how, err = torch.zeros(self.x_T.shape, dtype=torch.float64), "", f"{type(e).__name__}: {e}"
        errs = [m for m in self.world.gather_objects(err) if m]
        x = self.world.gather(x)
        self.model.reset()
        if errs:
            return None, f"no reference solution ({errs[0]})"
        if self.world.main:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda p: save_file({"x_T": x_T.contiguous(), "x_0": x.contiguous()}, p,
                                                    metadata={"method": how}))
        return x, how


def run_cell(cell: Cell, group: Group, warmed: set, sweep: Sweep) -> dict | None:
    """Sample one cell on every rank and score it on rank 0; returns the row on rank 0, None elsewhere."""
    world, model, spec = group.world, group.model, get_solver(cell.solver)
    options = spec.resolve_options({})
    stochastic = _is_stochastic(spec, options)
    row = cell.identity()
    row.update(run_id=sweep.run_id, kind="sde" if stochastic else "ode", order=float(spec.order),
               timesteps="adaptive" if spec.adaptive else spec.default_grid,
               options=json.dumps(options, sort_keys=True), samples=group.n, device=str(world.device))
    if cell.nfe is not None:
        try:
            spec.steps(cell.nfe, options)
        except ValueError as e:  # a budget the solver cannot spend exactly: the registry says why
            return {**row, "status": "skipped", "message": str(e)} if world.main else None

    local = {"error": None}
    outs, calls, steps = [], [], []
    try:
        def run(x, indices):
            gens = per_sample_generators(sample_seeds(cell.seed, NOISE, indices)) if stochastic else None
            return sample(model, x, cell.solver, nfe=cell.nfe, generator=gens, return_info=True)

        if (cell.model, cell.schedule, cell.solver) not in warmed:  # warm-up: a tiny untimed call
            run(group.x_T[:2], list(group.shard)[:2])
            warmed.add((cell.model, cell.schedule, cell.solver))
        memory = PeakMemory(world.device)
        model.reset()
        memory.start()
        _sync(world.device)
        start = time.perf_counter()
        for b in range(0, len(group.shard), group.batch):
            indices = group.shard[b: b + group.batch]
            before = model.nfe
            x, info = run(group.x_T[b: b + group.batch], indices)
            outs.append(x)
            calls.append((model.nfe - before, len(indices)))
            steps.append((info.steps, len(indices)))
        _sync(world.device)
        local.update(wall_s=time.perf_counter() - start, model_s=model.model_time_s, peak_mem_mb=memory.stop())
        x = torch.cat(outs) if outs else group.x_T[:0]
        bad = int((~torch.isfinite(x.reshape(x.shape[0], -1))).any(1).sum())
        if bad:
            raise FloatingPointError(f"{bad} of {x.shape[0]} samples are NaN/Inf")
    except Exception as e:  # any failure becomes a failed row; the sweep goes on
        local["error"] = f"{type(e).__name__}: {e}"
        x = group.x_T
    reports = world.gather_objects({**local, "calls": calls, "steps": steps})
    failures = [f"rank {r}: {p['error']}" if world.active else p["error"] for r, p in enumerate(reports) if p["error"]]
    if failures:
        return {**row, "status": "failed", "message": failures[0]} if world.main else None
    x = world.gather(x.cpu())
    if not world.main:
        return None
    row.update(
        wall_s=max(p["wall_s"] for p in reports),  # ranks run in parallel: the slowest one
        model_s=max(p["model_s"] for p in reports),
        peak_mem_mb=max(p["peak_mem_mb"] for p in reports),  # per process
        nfe_used=_per_sample_mean([c for p in reports for c in p["calls"]]),
        steps=_per_sample_mean([s for p in reports for s in p["steps"]]),
    )
    return score(row, x, group, stochastic, sweep)


def _per_sample_mean(pairs) -> int:
    """Evaluations (or steps) per sample, from (count, batch size) pairs; exact for fixed budgets."""
    total = sum(n for _, n in pairs)
    return round(sum(c * n for c, n in pairs) / total) if total else 0


def score(row: dict, x: torch.Tensor, group: Group, stochastic: bool, sweep: Sweep) -> dict:
    """Path error, NLL gap and quality of a cell's gathered samples (rank 0)."""
    notes = []
    try:
        if not stochastic:
            if group.reference is not None:
                row.update(metrics.path_errors(x, group.reference))
            else:
                notes.append(group.reference_note)
        if group.exact_log_p is not None:
            row["nll_gap"] = metrics.nll_gap(group.ref, x, group.exact_log_p)
        row.update(metrics.quality(group.ref, x, group.real, group.seed, cache_dir=sweep.cache_dir,
                                   device=str(group.world.device),
                                   real_cache_name=f"{group.ref.name}-real-n{group.n}-seed{group.seed}"))
    except Exception as e:
        return {**row, "status": "failed", "message": f"metrics: {type(e).__name__}: {e}"}
    values = {k: row.get(k) for k in ("error_rmse", "error_max", "nll_gap", "swd", "mmd", "fid", "kid")}
    if not metrics.all_finite(values):
        bad = ", ".join(k for k, v in values.items() if v is not None and not math.isfinite(v))
        return {**row, "status": "failed", "message": f"non-finite metric(s): {bad}"}
    return {**row, "status": "ok", "message": "; ".join(notes)}


def run_sweep(sweep: Sweep, run_dir: Path, world: World, loader: Callable = load_model, progress: bool = True,
              retry_failed: bool = False):
    """Run every unfinished cell of `sweep` into `run_dir`; returns the results table on rank 0, None elsewhere.

    `loader(name, schedule, prediction, cache_dir, device, progress) -> ReferenceModel` builds a model
    (tests pass their own to inject faulty networks).
    """
    journal = Journal(run_dir) if world.main else None
    done = world.broadcast(journal.done(retry_failed=retry_failed) if world.main else None)
    todo = [c for c in sweep.cells() if c.key not in done]
    bar = tqdm(total=len(todo), unit="cell", disable=not (progress and world.main), dynamic_ncols=True)
    warmed: set = set()
    groups: dict[tuple, list[Cell]] = {}
    for c in todo:
        groups.setdefault(c.group, []).append(c)
    try:
        for cells in groups.values():
            bar.set_postfix_str(f"{cells[0].model}/{cells[0].schedule} seed={cells[0].seed}: loading")
            try:
                needs_ref = any(not _is_stochastic(get_solver(c.solver), get_solver(c.solver).resolve_options({}))
                                for c in cells)
                group, group_error = Group(sweep, cells[0], world, run_dir, loader, progress, needs_ref), None
            except Exception as e:
                group, group_error = None, f"loading {cells[0].model} failed: {type(e).__name__}: {e}"
            errors = [m for m in world.gather_objects(group_error) if m]
            for cell in cells:
                bar.set_postfix_str(str(cell))
                if errors:
                    row = {**cell.identity(), "run_id": sweep.run_id, "status": "failed", "message": errors[0]}
                else:
                    row = run_cell(cell, group, warmed, sweep)
                if world.main:
                    journal.append(row)
                bar.update()
            if world.main:
                write_tables(journal, run_dir)  # checkpoint after every group
    finally:  # a checkpoint of the tables, also when interrupted (Ctrl-C)
        bar.close()
        if world.main:
            write_tables(journal, run_dir)
    return journal.table() if world.main else None
