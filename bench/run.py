"""`python -m bench run`: sweep models x solvers x NFE x seeds into a resumable results table."""
from __future__ import annotations

import argparse
import datetime as dt
import errno
import hashlib
import json
import os
import platform
import subprocess
import sys
from contextlib import ExitStack
from importlib import metadata
from pathlib import Path

import pandas as pd

from reference_models.guided import CONDITIONAL_MODELS, GUIDANCE_KINDS

from . import guidance, plugins, schema
from .cli import MAX_SEED, integer, integers, model_specs, names, solver_names, writable_dir
from .model_specs import DATA_RANGES
from .references import reference_choice

PROG = "python -m bench run"
DEFAULT_NFE = "6,10,20"
DEFAULT_REPEATS = 3
RUNS_DIR = Path("results") / "runs"
MANIFEST = "manifest.json"
EPILOG = """\
Cells: one per (model, schedule, solver, NFE, seed). Fixed-budget solvers get a row per NFE; a
budget a solver cannot spend exactly (heun: even NFE; pc: multiples of 1 + corrector_steps) gives
a 'skipped' row saying why. Adaptive solvers (rk45, dpm_solver_adaptive) take tolerances, not an
NFE: they run once per (model, schedule, seed) at their default tolerances, with nfe <NA> and
nfe_used the evaluations they made per sample.

Models: registered names, and models of your own: diffusers:PATH_OR_HUB_ID (a UNet2DModel pipeline or
a bare UNet with its scheduler config: DDPM-style discrete VP schedules with epsilon, sample or
v_prediction, and score_sde's VE pipelines), MODULE:FACTORY or path/to/file.py:FACTORY (a callable
returning reference_models.user_model(model, shape, data=None, name=None)). A user's model runs on its
own schedule and prediction (--schedules applies to registered models); it is resolved and checked
before anything is written. --data gives a model real data (images, tensors or FID statistics).

Every solver of a (model, schedule, seed) group starts from the same prior noise; path errors are
measured against a reference PF-ODE solution (--reference: DOP853 float64 for exact models, rk45 at
1e-6 for networks on the CPU, adaptive DPM-Solver-23 at 1e-5 on CUDA), cached in the model cache's
references/ under the model's fingerprint. The reference's own RMSE is estimated from a 10x looser
solve (reference_rmse); a path error within 2x of it is marked "at reference accuracy" and is not
used to fit orders. Stochastic samplers get no path error. Every model, with or without data, gets
the distance of each cell's samples to the reference solution's samples: fd_ref (Frechet distance in
the FID feature space) for images with a feature extractor, else swd_ref (sliced Wasserstein).
Quality against data: sliced Wasserstein and MMD (low-dimensional models), FID/KID (images; 1x8x8
through the digit classifier, 3-channel through Inception-v3 when its weights file is present), and
for exact models the NLL gap (mean -log p_t_end of the samples minus that of 20000 exact draws).
Cost: every cell's sampling is timed --repeats times after an untimed warm-up call; wall_s is the
median and wall_spread the spread of those repetitions ((max - min) / median). Timings depend on
the machine's load: other work on it slows cells and widens the spread, so compare timings of runs
made on a quiet machine (the manifest records the load average at the start and end). model_s is
the time inside the network (wall_s - model_s is solver overhead); peak_mem_mb is CUDA's max
allocated above the cell's start on GPU, and on CPU the growth of the peak resident set (after
malloc_trim; VmHWM, reset per cell).

Guidance (--guidance 1,2,4,8, --guidance-kind cfg|classifier): every cell is repeated at each scale w
for class-conditional models (gmm2d: 8 classes, gmm-digits: 10, digits-cond: 10); each sample gets a
label drawn from (seed, sample index), the same for every solver. A guided (model, scale) has its own
reference solution (exact for the mixtures: DOP853 on the exact guided PF-ODE), its own rows
(guidance, guidance_kind) and report group; network_calls counts network calls per sample (CFG: one
batched call per evaluation; classifier guidance: network plus classifier). Exact models add the NLL
gap under p(x | c) and, with the digits models, label_error: 1 - the classifier's accuracy on the
intended labels. A solver variant NAME:OPTION=VALUE (e.g. dpmpp_2m:thresholding=dynamic) runs as a
solver of its own, so thresholding can be compared with the plain solver at large w.

Output: DIR/results.jsonl (journal, one row per finished cell), DIR/results.parquet and .csv,
DIR/manifest.json, a report in DIR/report. Run the same command again to resume an interrupted
run: finished cells (ok, skipped, and failed ones unless --retry-failed) are kept, the others are
run, and a missing report is made. Without --out, the newest run of the same configuration under
results/runs/ that is unfinished or has no report is resumed, else a new
results/runs/<date>-<config id>/ is made. --out DIR must be new, empty, or a run of the same
configuration (models, schedules, solvers, NFE, seeds, samples, repeats); anything else is refused.

Under `torchrun --nproc_per_node=K -m bench run ...` the samples of every cell are sharded over
the K ranks (gloo on CPU, nccl on CUDA) and rank 0 writes; every cell needs at least K samples.

Exit status: 0 when the sweep completed (failed cells are rows, not errors); 2 for bad arguments
(an --out that holds something else, fewer samples than ranks); 1 when another run holds DIR's
lock, a file cannot be written (a full disk) or the run stopped on an error; 130 on Ctrl-C.
"""


def _solvers():
    from solvers import list_solvers
    return list_solvers()


def _models():
    from reference_models import list_models
    return list_models()


def _schedules():
    from reference_models.registry import SCHEDULES
    return list(SCHEDULES)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("--solvers", type=solver_names(_solvers), default=None,
                   help="'all' (default) or comma-separated solver names; NAME:OPTION=VALUE[:...] is a variant with "
                        "options (e.g. dpmpp_2m:thresholding=dynamic), a solver of its own in the tables")
    p.add_argument("--models", type=model_specs(_models), default=None,
                   help="'all' or comma-separated models: registered names, and models of your own as "
                        "diffusers:PATH_OR_HUB_ID, MODULE:FACTORY or path/to/file.py:FACTORY (default: the default "
                        "models of reference_models)")
    p.add_argument("--data", action="append", default=None, metavar="[MODEL=]PATH",
                   help="real data of a model: a folder of PNG/JPEG images, a .npz or .pt tensor, or FID statistics "
                        "(mu, sigma) in a .npz; MODEL=PATH (comma-separated, or the option repeated) when the run has "
                        "several models. Without data a model gets the metrics that need none")
    p.add_argument("--data-range", choices=DATA_RANGES, default="auto",
                   help="the range of --data images: auto (default: uint8 and image files 0..255, floats by their "
                        "values), 0,255, 0,1 or -1,1")
    p.add_argument("--reference", type=reference_choice, default="auto",
                   help="how the reference PF-ODE solution is computed: auto (default: dop853 for exact models; rk45 "
                        "on CPU and dpm_solver_adaptive on CUDA for networks), dop853 (scipy, float64, CPU), rk45 "
                        "(scipy, the network's dtype) or dpm_solver_adaptive (on the model's device); NAME:TOL sets "
                        "its tolerance")
    p.add_argument("--strong-steps", type=int, default=None, metavar="N",
                   help="Euler-Maruyama steps of the reference of stochastic samplers' strong error (same Brownian "
                        "path per sample); default 4096 for exact models and 0 (not measured) for networks")
    p.add_argument("--nfe", type=integers("NFE", 1), default=integers("NFE", 1)(DEFAULT_NFE),
                   help=f"NFE budgets of fixed-budget solvers (default {DEFAULT_NFE})")
    p.add_argument("--seeds", type=integers("seed", 0, MAX_SEED), default=[0],
                   help=f"seeds of the prior noise, integers in [0, {MAX_SEED}] (default 0)")
    p.add_argument("--schedules", type=names("schedule", _schedules), default=None,
                   help="noise schedules: vp, ve and/or flow (rectified flow; registered models predict the velocity "
                        "there). Default: vp, and without --models also flow for the default flow models (gmm2d, "
                        "toy2d-8gaussians). Trained models are trained for each on first use")
    p.add_argument("--guidance", type=guidance.scales, default=None, metavar="W[,W...]",
                   help="guidance scales: a guided copy of every cell at each scale w (w = 1: the conditional model, "
                        "w = 0: the unconditional one), with per-sample labels drawn from the seed; needs "
                        f"class-conditional models ({', '.join(CONDITIONAL_MODELS)})")
    p.add_argument("--guidance-kind", choices=GUIDANCE_KINDS, default=guidance.DEFAULT_KIND,
                   help="cfg (classifier-free, default): eps_u + w (eps_c - eps_u); classifier: score + w grad log "
                        "p(c | x_t) from a classifier of noisy samples (exact for the mixtures)")
    p.add_argument("--samples", type=integer(1), default=None,
                   help="samples per cell (default: 1000 for 2-D models, 200 for image models)")
    p.add_argument("--repeats", type=integer(1), default=DEFAULT_REPEATS,
                   help=f"timed repetitions of every cell; wall_s is their median, wall_spread their spread "
                        f"(default {DEFAULT_REPEATS})")
    p.add_argument("--batch-size", type=integer(1), default=None,
                   help="samples per solver call (default: all of a rank's samples; does not change samples, "
                        "except for adaptive solvers, which solve each batch as one system)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default auto: cuda if available")
    p.add_argument("--threads", type=integer(0), default=1,
                   help="CPU threads per process (default 1: small solver steps run fastest on one thread; 0: "
                        "torch's default). Other load on the machine still slows cells and widens wall_spread")
    p.add_argument("--out", type=writable_dir, default=None,
                   help="run directory: new, empty, or a run of the same configuration (default: results/runs/...)")
    p.add_argument("--retry-failed", action="store_true",
                   help="run the failed cells of a resumed run again (the new row replaces the failed one)")
    p.add_argument("--cache-dir", default=None,
                   help="model and statistics cache (default $SAMPLERBENCH_CACHE, else ~/.cache/samplerbench)")
    p.add_argument("--quiet", action="store_true", help="no progress bars and no summary table")
    plugins.add_argument(p)


def _schedules_of(args, planned):
    """The run's schedules for its configuration: --schedules, else ["vp"], else (the default sweep, with flow
    models) the schedules of each registered model."""
    if args.schedules:
        return args.schedules
    by_model = {p.name: p.schedules for p in planned if not p.user}
    return ["vp"] if all(s == ["vp"] for s in by_model.values()) else by_model


def _config(args, planned) -> dict:
    """What makes two runs the same run: a run directory is resumed only with all of these equal (a user's model
    by its fingerprint, real data by its content hash)."""
    from solvers import list_solvers

    config = {"models": [p.spec for p in planned], "schedules": _schedules_of(args, planned),
              "solvers": args.solvers or list_solvers(), "nfe": args.nfe, "seeds": args.seeds,
              "samples": _samples_per_model(planned, args.samples), "repeats": args.repeats, "prediction": "eps"}
    fingerprints = {p.name: p.fingerprint for p in planned if p.user}
    data = {p.name: p.real.sha256 for p in planned if p.real is not None}
    if fingerprints:
        config["fingerprints"] = fingerprints
    if data:
        config["data"] = data
    if args.reference != "auto":
        config["reference"] = args.reference
    if args.guidance:
        config["guidance"], config["guidance_kind"] = args.guidance, args.guidance_kind
    return config


def _samples_per_model(planned, samples: int | None) -> dict[str, int]:
    """Samples per cell of each model: --samples, else the sweep's default for the model's metric family."""
    from .sweep import DEFAULT_SAMPLES

    return {p.name: samples or DEFAULT_SAMPLES[p.metric] for p in planned}


def _config_id(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]


def _rank_problem(config: dict, world) -> str | None:
    """Why the run cannot be sharded over the world's ranks: every rank needs at least one sample of every cell."""
    few = {m: n for m, n in config["samples"].items() if n < world.size}
    if not few:
        return None
    listed = ", ".join(f"{m} ({n})" for m, n in few.items())
    return (f"{PROG}: error: {world.size} ranks but fewer samples per cell for {listed}: every rank needs a "
            f"sample; give --samples {world.size} or more, or start fewer ranks")


def _existing_run(run_dir: Path, config: dict) -> tuple[dict, str | None]:
    """(manifest, None) when run_dir holds a run of `config` ({} when it is new or empty), else ({}, why not)."""
    from .store import JOURNAL, LOCK, StoreError, read_rows

    if not run_dir.is_dir() or not {p.name for p in run_dir.iterdir()} - {LOCK}:
        return {}, None
    path = run_dir / MANIFEST
    if not path.is_file():
        return {}, f"{run_dir} is not empty and holds no samplerbench run (no {MANIFEST}); choose a new or empty one"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return {}, f"{path} is not readable JSON ({str(e)[:80]}); fix or move it, or choose another directory"
    if not isinstance(manifest, dict) or not isinstance(manifest.get("config"), dict):
        return {}, f"{path} is not a samplerbench manifest (no 'config' object); choose another directory"
    differ = [k for k in config if manifest["config"].get(k) != config[k]]
    if differ:
        return {}, (f"{run_dir} holds a run of another configuration ("
                    + "; ".join(f"{k}: {_short(manifest['config'].get(k))} there, {_short(config[k])} here"
                                for k in differ) + "); give the same arguments to resume it, or another directory")
    if (run_dir / JOURNAL).is_file():
        try:
            read_rows(run_dir / JOURNAL, (run_dir / JOURNAL).read_bytes().rpartition(b"\n")[0])
        except StoreError as e:
            return {}, str(e)
    return manifest, None


def _short(value) -> str:
    text = json.dumps(value, separators=(",", ":"))
    return text if len(text) <= 60 else text[:57] + "..."


def _has_report(run_dir: Path, manifest: dict) -> bool:
    return bool(manifest.get("report")) and (run_dir / manifest["report"]).is_file()


def _default_run_dir(config: dict) -> tuple[Path, str | None]:
    """The newest run of this configuration under results/runs that is unfinished or has no report, else a new one."""
    config_id = _config_id(config)
    for d in sorted(RUNS_DIR.glob(f"*-{config_id}"), reverse=True) if RUNS_DIR.is_dir() else []:
        manifest, problem = _existing_run(d, config)
        if problem:
            return d, f"{problem} (or give --out to run elsewhere)"
        if not manifest.get("finished") or not _has_report(d, manifest):
            return d, None
    return _new_run_dir(config_id), None


def _new_run_dir(config_id: str) -> Path:
    """results/runs/<date>-<config id>, with microseconds where a run of this second exists (never reuse one)."""
    now = dt.datetime.now()
    d = RUNS_DIR / f"{now:%Y%m%d-%H%M%S}-{config_id}"
    return RUNS_DIR / f"{now:%Y%m%d-%H%M%S.%f}-{config_id}" if d.exists() else d  # sorts after d: newer


def _choose_dir(out: Path | None, config: dict) -> dict:
    """Rank 0's choice, before anything is written: the run directory, or the error (exit status, message)."""
    if out is None:
        run_dir, problem = _default_run_dir(config)
        error = f"{PROG}: error: {problem}"
    else:
        run_dir, problem = out, _existing_run(out, config)[1]
        error = f"{PROG}: error: argument --out: {problem}"
    return {"run_dir": str(run_dir), "error": (2, error) if problem else None}


def _lock(stack: ExitStack, run_dir: Path, config: dict) -> tuple[dict, tuple | None]:
    """Create and lock run_dir, then check it again under the lock; returns (its manifest, error or None)."""
    from .store import RunLock, RunLocked

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return {}, (2, f"{PROG}: error: argument --out: cannot create {run_dir}: {e.strerror or e}")
    try:
        stack.enter_context(RunLock(run_dir))
    except RunLocked as e:
        return {}, (1, f"{PROG}: error: {e}")
    manifest, problem = _existing_run(run_dir, config)
    return manifest, (2, f"{PROG}: error: {problem}") if problem else None


def _now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "numpy", "scipy", "pandas", "torch-fidelity", "diffusers", "safetensors"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _git_commit() -> str:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _device_info(world) -> dict:
    import torch

    info = {"device": str(world.device), "world_size": world.size, "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}
    if world.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(world.device)
    return info


def _model_info(planned) -> dict:
    """What the manifest records of each model: where it came from, and for a user's model its fingerprint,
    schedule, prediction and real data."""
    out = {}
    for p in planned:
        info = {"source": p.spec}
        if p.user:
            info.update(fingerprint=p.fingerprint, schedule=repr(p.record.schedule), prediction=p.prediction,
                        shape=list(p.record.shape), sample_range=list(p.record.sample_range))
        if p.real_data is not None:
            info["data"] = p.real_data.summary()
        out[p.name] = info
    return out


def _start_manifest(run_dir: Path, manifest: dict, args, config: dict, world, planned) -> dict:
    """Write the manifest of a new run, or mark an existing one resumed; the provenance is this process's."""
    import reference_models

    from .store import write_json

    now = _now()
    if manifest:
        manifest.setdefault("resumed", []).append(now)
        print(f"resuming {run_dir}", file=sys.stderr)
    else:
        manifest = {"run_id": run_dir.name, "command": " ".join(["python -m bench"] + sys.argv[1:]), "started": now}
    manifest.update(config={**config, "batch_size": args.batch_size, "device": args.device,
                            "cache_dir": str(reference_models.cache_dir(args.cache_dir).resolve())},
                    models=_model_info(planned), git_commit=_git_commit(), versions=_versions(),
                    device=_device_info(world), plugins=plugins.loaded(),
                    load_average={"start": _load_average(), "end": None}, finished=None, report=None)
    write_json(run_dir / MANIFEST, manifest)
    return manifest


def summary(df: pd.DataFrame) -> str:
    """Solver x NFE of the headline metric (mean over seeds), one block per model and schedule."""
    blocks = []
    ok = df[df["status"] == "ok"]
    guided = pd.Series(["" if pd.isna(w) else f"{k} w={w:g}" for k, w in zip(ok["guidance_kind"], ok["guidance"])],
                       index=ok.index, dtype="string")
    for (model, sched, how), rows in ok.groupby([ok["model"], ok["schedule"], guided], sort=False):
        metric = schema.headline_metric(rows)
        if metric is None:
            continue
        rows = rows.assign(q=schema.quality(rows, metric),
                           col=rows["nfe"].astype("string").fillna("adaptive"))
        table = rows.pivot_table(index="solver", columns="col", values="q", aggfunc="mean", sort=False)
        cols = sorted([c for c in table.columns if c != "adaptive"], key=int) + [c for c in table.columns
                                                                                  if c == "adaptive"]
        table = table[cols].rename(columns=lambda c: c if c == "adaptive" else f"nfe={c}")
        table.index.name, table.columns.name = None, None
        if "adaptive" in table:
            used = rows[rows["col"] == "adaptive"].groupby("solver")["nfe_used"].mean()
            table["adaptive"] = [f"{v:.4g} ({used[s]:.0f} NFE)" if pd.notna(v) else "" for s, v in
                                 table["adaptive"].items()]
        where = f"{sched}, {how}" if how else sched
        blocks.append(f"{model} ({where}): {schema.LABELS.get(metric, metric)}, lower is better\n"
                      + table.to_string(float_format=lambda v: f"{v:.4g}", na_rep="-"))
    counts = df["status"].value_counts().to_dict()
    blocks.append("cells: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in schema.STATUSES))
    return "\n\n".join(blocks)


def _make_report(run_dir: Path) -> Path | None:
    """The run's report (its path), or None with the reason on stderr: the data are written, the report is secondary."""
    try:
        from .report import make_report

        path = Path(make_report([run_dir], run_dir / "report"))
        print(f"report: {path}")
        return path
    except Exception as e:
        print(f"report not made: {type(e).__name__}: {e}", file=sys.stderr)
        return None


def _finish(args, df: pd.DataFrame, run_dir: Path, manifest: dict) -> None:
    """Mark the run finished, print its summary and make its report (recorded in the manifest once written)."""
    from .store import write_json

    manifest["finished"] = _now()
    manifest["load_average"]["end"] = _load_average()
    write_json(run_dir / MANIFEST, manifest)
    if not args.quiet:
        print("\n" + summary(df))
    report = _make_report(run_dir)
    if report is not None:
        manifest["report"] = str(report.resolve().relative_to(run_dir.resolve()))
        write_json(run_dir / MANIFEST, manifest)
    print(f"results: {run_dir / 'results.parquet'} (and results.csv, {MANIFEST})")


def main_run(args) -> int:
    from . import dist
    from .store import StoreError

    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            print(f"{PROG}: error: argument --device: cuda is not available; valid: auto, cpu", file=sys.stderr)
            return 2
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    world = dist.init(args.device)
    try:
        return _run(args, world)
    except KeyboardInterrupt:
        if world.main:
            print("\ninterrupted: finished cells are saved; run the same command again to resume", file=sys.stderr)
        return 130
    except StoreError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        print(f"{PROG}: error: no space left on device writing {e.filename or 'the run directory'}; free some "
              "disk space and run the same command again to resume (finished cells are kept)", file=sys.stderr)
        return 1
    finally:
        dist.finish(world)


def _refuse(world, code: int, message: str) -> int:
    if world.main:
        print(message, file=sys.stderr)
    return code


def _plan(args, world):
    """The run's models, resolved and checked on every rank before anything is written; (planned, error)."""
    import reference_models

    from . import model_specs

    specs = args.models or list(reference_models.DEFAULT_MODELS)
    # the default sweep (no --models, no --schedules): each model on its default schedules (vp, and flow for some)
    schedules = args.schedules or (None if args.models is None else ["vp"])
    try:
        planned = model_specs.plan(specs, schedules, model_specs.parse_data(args.data, specs), args.data_range,
                                   device=str(world.device), cache_dir=args.cache_dir)
        model_specs.check_samples(planned, _samples_per_model(planned, args.samples))
    except model_specs.ModelArgumentError as e:
        return None, f"{PROG}: error: {e}"
    refusal = guidance.refusal(planned, args.guidance_kind) if args.guidance else None
    if refusal:
        return None, f"{PROG}: error: {refusal}"
    return planned, None


def _run(args, world) -> int:
    """Resolve the models, choose and check the run directory, lock it, write the manifest, sweep, finish (rank 0
    writes)."""
    from . import model_specs
    from .sweep import Sweep, run_sweep

    planned, error = _plan(args, world)
    if error:  # every rank resolves the models and refuses on its own, before any collective (as below)
        return _refuse(world, 2, error)
    config = _config(args, planned)
    problem = _rank_problem(config, world)
    if problem:
        return _refuse(world, 2, problem)
    choice = world.broadcast(_choose_dir(args.out, config) if world.main else None)
    if choice["error"]:
        return _refuse(world, *choice["error"])
    run_dir = Path(choice["run_dir"])
    with ExitStack() as stack:
        manifest, error = _lock(stack, run_dir, config) if world.main else ({}, None)
        error = world.broadcast(error)
        if error:
            return _refuse(world, *error)
        if world.main:
            manifest = _start_manifest(run_dir, manifest, args, config, world, planned)
        sweep = Sweep([p.name for p in planned], config["solvers"], args.nfe, args.seeds, args.schedules or ["vp"],
                      samples=args.samples, batch_size=args.batch_size, cache_dir=args.cache_dir, run_id=run_dir.name,
                      repeats=args.repeats, reference=args.reference, strong_steps=args.strong_steps,
                      model_schedules={p.name: (p.schedules, p.prediction) for p in planned if p.user},
                      registered_schedules={p.name: p.schedules for p in planned if not p.user},
                      guidance=args.guidance, guidance_kind=args.guidance_kind)
        df = run_sweep(sweep, run_dir, world, loader=model_specs.loader(planned), progress=not args.quiet,
                       retry_failed=args.retry_failed)
        if world.main:
            _finish(args, df, run_dir, manifest)
    return 0
