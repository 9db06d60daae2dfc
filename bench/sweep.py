"""The sweep: a grid of cells (model, schedule, solver, NFE, seed), each sampled, timed and scored into one row.

Cells of one (model, schedule, seed) group share the same prior noise x_T, drawn from per-sample
generators whose seeds derive from (seed, sample index), so every solver sees the same x_T (paired
comparisons) whatever the batch size or the number of ranks, and they share one cached reference
solution. Fixed-budget solvers get one cell per NFE; adaptive solvers (rk45, dpm_solver_adaptive)
take tolerances, not a budget, and get one cell per group at their default tolerances (nfe <NA>,
nfe_used measured).

Guided cells (`Sweep.guidance`, `bench run --guidance`) form groups of their own per (scale, kind): the model is
guided (ReferenceModel.guided), each sample gets a class label from (seed, sample index), the same for every solver
and batch, and the group has its own reference solution.

Stochastic cells draw their noise from one Brownian path per sample (solvers.brownian_paths, seeded from (seed,
sample index)); their error_rmse / error_max are strong errors, against Euler-Maruyama at STRONG_STEPS uniform
steps on the same paths from the same x_T (computed once per group; its RMSE estimated against STRONG_STEPS / 2);
by default for exact models only (`Sweep.strong_steps`, `bench run --strong-steps`).
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
from reference_models.registry import prediction_for
from solvers import brownian_paths, per_sample_generators, sample
from solvers.curves import STRONG_STEPS

from . import arrays, guidance, metrics, quality, references, schema
from .dist import World
from .group_rows import write_group_rows
from .solver_variants import variant
from .store import Journal, atomic_write, write_tables

# Default samples per cell, by the model's metric family (overridden by --samples).
DEFAULT_SAMPLES = {"2d": 1000, "image": 200}
# Streams of per-sample seeds: prior noise, solver noise, real data, the noise floor's second real draw, class labels.
XT, NOISE, REAL, FLOOR, LABELS = 0, 1, 2, 3, 4
REFERENCE_CHUNKS = 8  # the reference solution is computed in up to this many pieces, for its progress bar,
REFERENCE_CHUNK_MIN = 32  # of at least this many samples each (a network evaluates a batch in about the same time)


@dataclass(frozen=True)
class Cell:
    model: str
    schedule: str
    prediction: str
    solver: str
    nfe: int | None  # None: adaptive solver at its default tolerances
    seed: int
    guidance: float | None = None  # the guidance scale w; None: unguided
    guidance_kind: str | None = None  # "cfg" or "classifier" where guided

    @property
    def key(self) -> tuple:
        return (self.model, self.schedule, self.prediction, self.guidance_kind, self.guidance, self.solver, self.nfe,
                self.seed)

    def identity(self) -> dict:
        return dict(zip(schema.IDENTITY, self.key))

    @property
    def group(self) -> tuple:
        """(model, schedule, prediction, guidance_kind, guidance, seed): schema.GROUP_KEYS."""
        return (self.model, self.schedule, self.prediction, self.guidance_kind, self.guidance, self.seed)

    @property
    def guided(self) -> str:
        return "" if self.guidance is None else f" {self.guidance_kind} w={self.guidance:g}"

    def __str__(self) -> str:
        return (f"{self.model}/{self.schedule}{self.guided} {self.solver} nfe={'auto' if self.nfe is None else self.nfe} "
                f"seed={self.seed}")


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
    reference: str = "auto"  # how the reference solution is computed (bench.references)
    strong_steps: int | None = None  # Euler-Maruyama steps of the strong error's reference; None: STRONG_STEPS for
    # exact models, 0 (not measured) for networks, where it costs 1.5 x STRONG_STEPS evaluations per sample
    # a user's models: name -> (their schedule labels, their prediction kind); others take schedules and prediction
    model_schedules: dict = field(default_factory=dict)
    # registered models: name -> their schedule labels where not `schedules` (the default sweep's flow models)
    registered_schedules: dict = field(default_factory=dict)
    guidance: list[float] | None = None  # guidance scales (bench run --guidance); None: unguided
    guidance_kind: str = "cfg"  # "cfg" (classifier-free) or "classifier"

    def cells(self) -> list[Cell]:
        """The grid, grouped by (model, schedule, seed) so that each group loads its model once.

        A registered model predicts `prediction`, and the velocity ("flow") on the flow schedule (prediction_for).
        """
        out = []
        for m in self.models:
            user = m in self.model_schedules
            schedules, prediction = self.model_schedules.get(
                m, (self.registered_schedules.get(m, self.schedules), self.prediction))
            for sch in schedules:
                pred = prediction if user else prediction_for(sch, prediction)
                for w in (self.guidance or [None]):
                    kind = None if w is None else self.guidance_kind
                    for seed in self.seeds:
                        for s in self.solvers:
                            budgets = [None] if variant(s)[0].adaptive else self.nfes
                            out += [Cell(m, sch, pred, s, n, seed, w, kind) for n in budgets]
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


def reference_path(cache_dir, cell: Cell, ref: ReferenceModel, n: int, method: tuple[str, float]) -> Path:
    """Where a group's reference solution is cached: the model cache, keyed by the model's fingerprint.

    The fingerprint (reference_models: the weights, the checkpoint's config or the mixture's parameters,
    with the schedule) and the reference method and tolerance name the file, so a later run reuses the
    solution and a changed model never does. The file also holds x_T, which is compared before use.
    """
    key = hashlib.sha256(json.dumps({"fingerprint": ref.fingerprint, "info": ref.info, "method": list(method)},
                                    sort_keys=True, default=str).encode())
    if ref.mixture is not None:
        for t in (ref.mixture.means, ref.mixture.evals, ref.mixture.evecs, ref.mixture.log_weights):
            key.update(t.contiguous().numpy().tobytes())
    name = f"{cell.model}-{cell.schedule}-{cell.prediction}-seed{cell.seed}-n{n}-{key.hexdigest()[:16]}.safetensors"
    return reference_models.cache_dir(cache_dir) / "references" / arrays.safe_name(name)


class Group:
    """What the cells of one (model, schedule, seed) group share: model, x_T shard, reference solution, and
    on rank 0 the evaluator of their metrics, with the group rows (reference quality, noise floor)."""

    def __init__(self, sweep: Sweep, cell: Cell, world: World, run_dir: Path, loader: Callable, progress: bool,
                 needs_reference: bool):
        self.world, self.seed, self.run_dir, self.cell = world, cell.seed, run_dir, cell
        def load(show: bool) -> ReferenceModel:
            ref = loader(cell.model, cell.schedule, cell.prediction, sweep.cache_dir, world.device, show)
            if cell.guidance is None:
                return ref
            return ref.guided(cell.guidance, cell.guidance_kind, cache_dir=sweep.cache_dir, device=str(world.device),
                              progress=show)

        # rank 0 loads (and trains, on first use) before the others read the cache
        if world.main:
            self.ref = load(progress)
        world.barrier()
        if not world.main:
            self.ref = load(False)
        self.model = self.ref.model
        self.model.timing = True
        self.n = sweep.samples or DEFAULT_SAMPLES.get(self.ref.metric, 500)
        self.shard = world.shard(self.n)
        # guided groups: one class label per sample, drawn from (seed, sample index), the same for every solver
        self.labels = None if cell.guidance is None else guidance.sample_labels(self.seed, self.shard, self.ref.classes)
        self.all_labels = None if self.labels is None else world.gather(self.labels)
        self.batch = sweep.batch_size or max(len(self.shard), 1)
        self.x_T = self.ref.schedule.prior_sample((len(self.shard), *self.ref.shape),
                                                  per_sample_generators(sample_seeds(self.seed, XT, self.shard)),
                                                  device=world.device)
        self.reference, self.reference_note, self.reference_rmse = None, "", math.nan
        self.strong, self.strong_note, self.strong_rmse = None, "", math.nan
        self._strong_done = False
        self.method = references.method(sweep.reference, self.ref, world.device)
        if needs_reference:
            path = reference_path(sweep.cache_dir, cell, self.ref, self.n, self.method)
            self.reference, self.reference_note, self.reference_rmse = self._reference(path, progress)
        self.rows: list[dict] = []
        if world.main:
            self._measure_against(sweep)

    def _measure_against(self, sweep: Sweep) -> None:
        """Rank 0: real data, the evaluator, and the group rows: quality of the reference solution and of an
        independent real draw (the noise floor), with intervals; the group's arrays go to the run directory."""
        real, floor = self._real_data()
        fid_stats = self.ref.fid_stats
        self.features, self.quality_note = None, ""
        if real is None and fid_stats is None:
            self.quality_note = "no data: quality against data not measured (give --data)"
        if self.ref.metric == "image":
            problem = quality.extractor_problem(tuple(self.ref.shape), sweep.cache_dir)
            if problem is None:
                self.features = lambda x: quality.sample_features(x, cache_dir=sweep.cache_dir,
                                                                  device=str(self.world.device)).numpy()
            elif real is not None or fid_stats is not None:
                self.quality_note = f"no FID/KID: {problem}"
        real_points = None
        if real is not None and (self.ref.metric == "2d" or self.features is not None):
            real_points = (real.double().flatten(1).numpy() if self.features is None else quality.real_statistics(
                real, cache_dir=sweep.cache_dir, device=str(self.world.device))[0].numpy())
        stats = None
        if fid_stats is not None and self.features is not None:
            stats = (fid_stats.mu, fid_stats.sigma)
        self.classify = None if self.all_labels is None else guidance.label_classifier(
            self.ref, cache_dir=sweep.cache_dir, device=str(self.world.device))
        ref_obs = None if self.reference is None else self.observe(self.reference.float())
        ref_points = None if ref_obs is None else ref_obs.points
        exact = (metrics.exact_log_likelihood(self.ref, self.seed, conditional=self.all_labels is not None)
                 if self.ref.mixture is not None else None)
        ref_metric = "fd_ref" if self.features is not None else "swd_ref"
        self.evaluator = metrics.Evaluator(real_points, exact, self.seed, self.ref.metric, ref_points=ref_points,
                                           fid_stats=stats, ref_metric=ref_metric)
        sources = {}  # source -> (its observation, note); the reference's features are computed once, above
        if floor is not None and (real_points is not None or exact is not None):
            sources["data"] = (metrics.observe(self.ref, floor, features=self.features, model_samples=False),
                               "independent real draw of the same size")
        if ref_obs is not None:
            sources["reference"] = (ref_obs, self.reference_note)
        for source, (obs, note) in sources.items():
            if source == "data" and exact is not None:  # the NLL gap's floor: exact draws against exact draws
                obs.log_p = metrics.log_density(self.ref, self.ref.mixture.sample(
                    self.n, self._floor_gen, schedule=self.ref.schedule, t=self.ref.schedule.default_t_end,
                    dtype=torch.float64, labels=self.all_labels), self.all_labels)
            values = self.evaluator.measure(obs, self.seed)
            self.rows += [{**dict(zip(schema.GROUP_KEYS, self.cell.group)), "source": source, "metric": m,
                           "value": values[m], "lo": values[schema.bounds(m)[0]], "hi": values[schema.bounds(m)[1]],
                           "samples": self.n, "note": note} for m in values
                          if m in schema.METRICS and m not in schema.DATA_FREE]
        path = arrays.row_group_dir(self.run_dir, self.cell.identity()) / "group.safetensors"
        shown = real if real is not None else torch.zeros((0, *self.ref.shape))
        arrays.save_group(path, real_points, exact, shown if self.ref.metric == "2d" else shown[:arrays.GRID_SAMPLES],
                          self.seed, self.ref.metric, ref_points=ref_points, fid_stats=stats, ref_metric=ref_metric)

    def observe(self, x: torch.Tensor, reference_x: torch.Tensor | None = None) -> metrics.Observation:
        """The per-sample arrays of this group's samples x (all of them, in the gathered order): features, exact
        log-densities (under p(x | c) of each sample's label where guided), path errors, label hits."""
        return metrics.observe(self.ref, x, reference_x, features=self.features, labels=self.all_labels,
                               classify=self.classify)

    def label(self, positions) -> None:
        """Guided groups: give the model the labels of these samples (positions in this rank's shard) before it
        samples them."""
        if self.labels is not None:
            self.model.labels = self.labels[positions]

    def _real_data(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(real data, the noise floor's independent real draw) of n points each; None where there are none.

        Files of real data (--data) are finite: the floor's draw is disjoint from the data's, so it is made
        only where the files hold 2n items."""
        real_gen = torch.Generator().manual_seed(sample_seeds(self.seed, REAL, [0])[0])
        self._floor_gen = torch.Generator().manual_seed(sample_seeds(self.seed, FLOOR, [0])[0])
        if self.ref.data is None:
            return None, None
        files = self.ref.real_data
        if files is not None:
            if files.count >= 2 * self.n:
                both = files.draw(2 * self.n, real_gen)
                return both[:self.n], both[self.n:]
            return files.draw(self.n, real_gen), None
        return self.ref.data(self.n, real_gen), self.ref.floor_data(self.n, self._floor_gen)

    def _reference(self, path: Path, progress: bool):
        """(reference solution from this group's x_T, how it was made, its estimated RMSE), from the model cache
        or computed (sharded)."""
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        x_T = self.world.gather(self.x_T.cpu())
        cached = None
        if self.world.main and path.exists():
            try:
                saved = load_file(path)
                with safe_open(str(path), "pt") as f:
                    meta = f.metadata() or {}
                if torch.equal(saved["x_T"], x_T):
                    cached = (saved["x_0"], meta.get("method", "cached"), float(meta.get("reference_rmse", "nan")))
            except Exception as e:  # a corrupt cache file is recomputed, never half-used
                tqdm.write(f"recomputing the reference solution: {path} is unreadable ({e})")
        cached = self.world.broadcast(cached)
        if cached is not None:
            return cached[0], f"cached: {cached[1]}", cached[2]
        try:
            x, how = self._solve_reference(progress)
            self.label(slice(0, references.CHECK_SAMPLES))
            sq = references.accuracy(self.ref, self.x_T, x, *self.method) ** 2 * min(len(x), references.CHECK_SAMPLES)
            err = None
        except Exception as e:
            x, how, sq, err = torch.zeros(self.x_T.shape, dtype=torch.float64), "", 0.0, f"{type(e).__name__}: {e}"
        reports = self.world.gather_objects((err, sq, min(len(x), references.CHECK_SAMPLES)))
        errs = [e for e, _, _ in reports if e]
        x = self.world.gather(x)
        self.model.reset()
        if errs:
            return None, f"no reference solution ({errs[0]})", math.nan
        count = sum(k for _, _, k in reports)
        rmse = math.sqrt(sum(s for _, s, _ in reports) / count) if count else math.nan
        how = f"{how}; estimated RMSE {rmse:.2g} (vs {references.CHECK_FACTOR:g}x looser tolerance)"
        if self.world.main:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda p: save_file({"x_T": x_T.contiguous(), "x_0": x.contiguous()}, p,
                                                    metadata={"method": how, "reference_rmse": repr(rmse)}))
        return x, how, rmse

    def paths(self, seed: int, indices):
        """The Brownian paths of these samples (by index) on [t_end, T]: a fresh object, same paths every time."""
        sched = self.ref.schedule
        return brownian_paths(sample_seeds(seed, NOISE, indices), self.ref.shape, sched.default_t_end, sched.T,
                              device=self.world.device)

    def strong_reference(self, steps: int | None = None) -> None:
        """Euler-Maruyama at `steps` (and steps / 2, for its error) uniform steps on every sample's path from x_T,
        gathered to rank 0 (every rank calls it; once per group). steps None: STRONG_STEPS for exact models, else none."""
        if self._strong_done:
            return
        self._strong_done = True
        fine_steps = (STRONG_STEPS if self.ref.kind == "exact" else 0) if steps is None else steps
        if fine_steps < 2:
            self.strong_note = (f"strong error not measured (its reference, Euler-Maruyama at {STRONG_STEPS} steps, "
                                "costs too many network evaluations; `bench run --strong-steps N` measures it)")
            return
        outs, err = {}, None
        try:
            for steps in (fine_steps // 2, fine_steps):
                parts = []
                for b in range(0, len(self.shard), self.batch):
                    idx = self.shard[b: b + self.batch]
                    self.label(slice(b, b + self.batch))
                    parts.append(sample(self.model, self.x_T[b: b + self.batch], "euler_maruyama", nfe=steps,
                                        timesteps="uniform", generator=self.paths(self.seed, idx)).double().cpu())
                outs[steps] = torch.cat(parts) if parts else self.x_T[:0].double().cpu()
        except Exception as e:
            err = f"{type(e).__name__}: {e}"
            outs = {s: torch.zeros(self.x_T.shape, dtype=torch.float64) for s in (fine_steps // 2, fine_steps)}
        errs = [m for m in self.world.gather_objects(err) if m]
        fine, half = self.world.gather(outs[fine_steps]), self.world.gather(outs[fine_steps // 2])
        self.model.reset()
        if errs:
            self.strong_note = f"no strong error (its reference failed: {errs[0]})"
            return
        if fine is None:  # gathered on rank 0 only: the other ranks score nothing
            return
        self.strong, self.strong_rmse = fine, float((fine - half).pow(2).mean().sqrt()) if len(fine) else math.nan
        self.strong_note = (f"strong error vs Euler-Maruyama at {fine_steps} uniform steps on the same Brownian "
                            f"paths; estimated RMSE {self.strong_rmse:.2g} (vs {fine_steps // 2} steps)")

    def _solve_reference(self, progress: bool) -> tuple[torch.Tensor, str]:
        """The reference in REFERENCE_CHUNKS pieces, with its own progress bar (it can take a minute)."""
        count = max(1, min(REFERENCE_CHUNKS, len(self.x_T) // REFERENCE_CHUNK_MIN))  # networks: batches, not singles
        pieces = torch.arange(len(self.x_T)).chunk(count) if len(self.x_T) else []
        outs = []
        bar = tqdm(pieces, desc=f"reference solution {self.cell.model}/{self.cell.schedule}", unit="chunk",
                   leave=False, disable=not (progress and self.world.main), dynamic_ncols=True)
        start = self.model.nfe
        for idx in bar:
            self.label(idx)
            outs.append(references.solve(self.ref, self.x_T[idx], *self.method))
        how = references.describe(*self.method, round((self.model.nfe - start) / max(len(outs), 1)))
        return (torch.cat(outs) if outs else self.x_T.double().cpu()), f"{how} per chunk, {len(outs)} chunk(s)"


def run_cell(cell: Cell, group: Group, warmed: set, sweep: Sweep) -> dict | None:
    """Sample one cell on every rank and score it on rank 0; returns the row on rank 0, None elsewhere."""
    world, (spec, given) = group.world, variant(cell.solver)
    options = spec.resolve_options(given)
    stochastic = spec.stochastic(options)
    row = {**cell.identity(), "run_id": sweep.run_id, "kind": "sde" if stochastic else "ode",
           "order": float(spec.declared_order(options)),
           "timesteps": "adaptive" if spec.adaptive else spec.grid_for(cell.schedule),
           "options": json.dumps(options, sort_keys=True), "samples": group.n, "device": str(world.device),
           "repeats": sweep.repeats}
    if cell.nfe is not None and not spec.budgets([cell.nfe], options):
        return {**row, "status": "skipped", "message": _budget_message(spec, cell.nfe, options)} if world.main else None
    if not spec.supports(group.ref.schedule):
        return {**row, "status": "skipped", "message": f"runs on {', '.join(spec.schedules)} schedules only"
                } if world.main else None
    try:  # e.g. a solver that cannot start at alpha = 0 (the flow schedule's t = 1)
        spec.check_start(group.ref.model, group.ref.schedule.T)
    except ValueError as e:
        return {**row, "status": "skipped", "message": str(e)} if world.main else None
    if stochastic:
        group.strong_reference(sweep.strong_steps)
    local = sample_cell(cell, group, warmed, sweep, stochastic)
    reports = world.gather_objects({k: v for k, v in local.items() if k != "x"})
    failures = [f"rank {r}: {p['error']}" if world.active else p["error"] for r, p in enumerate(reports) if p["error"]]
    if failures:
        return {**row, "status": "failed", "message": failures[0]} if world.main else None
    x = world.gather(local["x"].cpu())
    if not world.main:
        return None
    walls = np.max([p["walls"] for p in reports], axis=0)  # ranks run in parallel: the slowest one, per repeat
    wall = float(np.median(walls))
    row.update(wall_s=wall, wall_spread=float((walls.max() - walls.min()) / wall) if wall > 0 else math.nan,
               wall_per_sample_s=wall / group.n, model_s=float(np.median(np.max([p["models"] for p in reports], 0))),
               peak_mem_mb=max(p["peak_mem_mb"] for p in reports),  # per process
               nfe_used=_per_sample_mean([c for p in reports for c in p["calls"]]),
               network_calls=_per_sample_mean([c for p in reports for c in p["net"]]),
               steps=_per_sample_mean([s for p in reports for s in p["steps"]]))
    return score(row, x, group, stochastic)


def _budget_message(spec, nfe: int, options: dict) -> str:
    try:
        spec.steps(nfe, options)
    except ValueError as e:  # a budget the solver cannot spend exactly: the registry says why
        return str(e)
    return f"budget {nfe} not accepted"


def sample_cell(cell: Cell, group: Group, warmed: set, sweep: Sweep, stochastic: bool) -> dict:
    """This rank's samples of a cell, timed `sweep.repeats` times (after an untimed warm-up on first use)."""
    model = group.model
    out = {"error": None, "x": group.x_T, "calls": [], "steps": [], "net": [], "walls": [], "models": [],
           "peak_mem_mb": 0.0}

    def run(b: int, size: int):
        """Sample this shard's samples b .. b + size - 1."""
        indices = group.shard[b: b + size]
        gens = group.paths(cell.seed, indices) if stochastic else None
        group.label(slice(b, b + size))
        spec, given = variant(cell.solver)
        return sample(model, group.x_T[b: b + size], spec.name, nfe=cell.nfe, generator=gens, return_info=True, **given)

    try:
        if (cell.model, cell.schedule, cell.solver) not in warmed:  # warm-up: a tiny untimed call
            run(0, 2)
            warmed.add((cell.model, cell.schedule, cell.solver))
        for repeat in range(sweep.repeats):
            memory = PeakMemory(group.world.device)
            model.reset()
            memory.start()
            _sync(group.world.device)
            start = time.perf_counter()
            outs, calls, steps, net = [], [], [], []
            for b in range(0, len(group.shard), group.batch):
                indices = group.shard[b: b + group.batch]
                before, net_before = model.nfe, getattr(model, "network_calls", model.nfe)
                x, info = run(b, group.batch)
                outs.append(x)
                calls.append((model.nfe - before, len(indices)))
                net.append((getattr(model, "network_calls", model.nfe) - net_before, len(indices)))
                steps.append((info.steps, len(indices)))
            _sync(group.world.device)
            out["walls"].append(time.perf_counter() - start)
            out["models"].append(model.model_time_s)
            out["peak_mem_mb"] = max(out["peak_mem_mb"], memory.stop())
            if repeat == 0:  # every repeat gives the same samples (same x_T, same per-sample noise)
                out.update(x=torch.cat(outs) if outs else group.x_T[:0], calls=calls, steps=steps, net=net)
        bad = int((~torch.isfinite(out["x"].reshape(out["x"].shape[0], -1))).any(1).sum())
        if bad:
            raise FloatingPointError(f"{bad} of {out['x'].shape[0]} samples are NaN/Inf")
    except (Exception, MemoryError) as e:  # any failure, out-of-memory included, is a failed row; the sweep goes on
        out.update(error=f"{type(e).__name__}: {e}", x=group.x_T)
    return out


def _per_sample_mean(pairs) -> int:
    """Evaluations (or steps) per sample, from (count, batch size) pairs; exact for fixed budgets."""
    total = sum(n for _, n in pairs)
    return round(sum(c * n for c, n in pairs) / total) if total else 0


def score(row: dict, x: torch.Tensor, group: Group, stochastic: bool) -> dict:
    """Metrics with intervals of a cell's gathered samples (rank 0); its arrays go to the run directory."""
    reference = group.strong if stochastic else group.reference
    try:
        obs = group.observe(x, reference)
        row.update(group.evaluator.measure(obs, group.seed))
        c = group.cell
        arrays.save_cell(arrays.cell_path(group.run_dir, c.model, c.schedule, c.prediction, c.seed, row["solver"],
                                          row["nfe"], c.guidance_kind, c.guidance), obs,
                         metrics.to_unit_range(group.ref, x), image=group.ref.metric == "image")
    except Exception as e:
        return {**row, "status": "failed", "message": f"metrics: {type(e).__name__}: {e}"}
    values = {k: row.get(k) for k in schema.METRICS}
    if not metrics.all_finite(values):
        bad = ", ".join(k for k, v in values.items() if v is not None and not math.isfinite(v))
        return {**row, "status": "failed", "message": f"non-finite metric(s): {bad}"}
    notes = [group.reference_note if group.reference is None and not stochastic else "", group.quality_note]
    if stochastic:
        notes.insert(0, group.strong_note)
        row["reference_rmse"] = group.strong_rmse
    if not stochastic and group.reference is not None:
        row["reference_rmse"] = group.reference_rmse
        if references.at_reference_accuracy(row.get("error_rmse", math.nan), group.reference_rmse):
            notes.insert(0, f"at reference accuracy: error {row['error_rmse']:.2g} within {references.MARGIN:g}x the "
                            f"reference's estimated {group.reference_rmse:.2g}")
    return {**row, "status": "ok", "message": "; ".join(n for n in notes if n)}


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
    groups: dict[tuple, list[Cell]] = {}
    for c in todo:
        groups.setdefault(c.group, []).append(c)
    try:
        for cells in groups.values():
            group, errors = _open_group(sweep, cells, world, run_dir, loader, progress, bar)
            if world.main and group is not None:
                write_group_rows(run_dir, group.rows)
            _run_group(cells, group, errors, sweep, world, journal, bar)
            if world.main:
                write_tables(journal, run_dir)  # checkpoint after every group
    finally:  # a checkpoint of the tables, also when interrupted (Ctrl-C)
        bar.close()
        if world.main:
            write_tables(journal, run_dir)
    return journal.table() if world.main else None


def _open_group(sweep, cells, world, run_dir, loader, progress, bar) -> tuple[Group | None, list[str]]:
    """Load a group's model and reference (the bar is cleared meanwhile, and its clock paused: training and the
    reference solution print their own progress and must not count in the cells' ETA)."""
    bar.set_postfix_str(f"{cells[0].model}/{cells[0].schedule} seed={cells[0].seed}: loading")
    bar.clear()
    try:
        needs_ref = any(not spec.stochastic(given) for spec, given in (variant(c.solver) for c in cells))
        group, error = Group(sweep, cells[0], world, run_dir, loader, progress, needs_ref), None
    except Exception as e:
        group, error = None, f"loading {cells[0].model} failed: {type(e).__name__}: {e}"
    bar.unpause()
    return group, [m for m in world.gather_objects(error) if m]


def _run_group(cells, group, errors, sweep, world, journal, bar) -> None:
    warmed: set = set()
    for cell in cells:
        bar.set_postfix_str(str(cell))
        if errors:
            row = {**cell.identity(), "run_id": sweep.run_id, "status": "failed", "message": errors[0]}
        else:
            row = run_cell(cell, group, warmed, sweep)
        if world.main:
            journal.append(row)
        bar.update()
