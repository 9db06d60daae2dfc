"""`python -m bench run`: sweep models x solvers x NFE x seeds into a resumable results table."""
from __future__ import annotations

import argparse
import datetime as dt
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

from . import schema

DEFAULT_NFE = "6,10,20"
RUNS_DIR = Path("results") / "runs"
EPILOG = """\
Cells: one per (model, schedule, solver, NFE, seed). Fixed-budget solvers get a row per NFE; a
budget a solver cannot spend exactly (heun: even NFE; pc: multiples of 1 + corrector_steps) gives
a 'skipped' row saying why. Adaptive solvers (rk45, dpm_solver_adaptive) take tolerances, not an
NFE: they run once per (model, schedule, seed) at their default tolerances, with nfe <NA> and
nfe_used the evaluations they made per sample.

Every solver of a (model, schedule, seed) group starts from the same prior noise; path errors are
measured against a reference PF-ODE solution (DOP853 float64 for exact models, rk45 at 1e-6 for
trained ones), cached in the model cache's references/ for later runs. Stochastic samplers get no
path error. Quality: sliced
Wasserstein and MMD to fresh data (2-D models), FID/KID to held-out data (image models), and for
exact models the NLL gap (mean -log p_t_end of the samples minus that of 20000 exact draws).
Cost: wall_s times sampling only, after an untimed warm-up call; model_s is the time inside the
network (wall_s - model_s is solver overhead); peak_mem_mb is CUDA's max allocated above the
cell's start on GPU, and on CPU the growth of the peak resident set (after malloc_trim; VmHWM,
reset per cell).

Output: DIR/results.jsonl (journal, one row per finished cell), DIR/results.parquet and .csv,
DIR/manifest.json, a report in DIR/report. Run the same command again to resume an interrupted
run: finished cells (ok, failed or skipped) are kept, the others are run. Without --out, the
newest unfinished run of the same configuration under results/runs/ is resumed, else a new
results/runs/<date>-<config id>/ is made.

Under `torchrun --nproc_per_node=K -m bench run ...` the samples of every cell are sharded over
the K ranks (gloo on CPU, nccl on CUDA) and rank 0 writes.

Exit status: 0 when the sweep completed (failed cells are rows, not errors); 2 for bad arguments;
1 when another run holds DIR's lock or the run stopped on an error; 130 on Ctrl-C.
"""


def _csv(kind, valid=None, allow_all=False):
    """An argparse type: comma-separated values of `kind`, checked against `valid()` names."""

    def parse(text: str):
        items = [s.strip() for s in text.split(",") if s.strip()]
        if not items:
            raise argparse.ArgumentTypeError("give at least one value")
        if valid is not None:
            names = valid()
            if allow_all and items == ["all"]:
                return list(names)
            bad = [s for s in items if s not in names]
            if bad:
                raise argparse.ArgumentTypeError(f"unknown {kind} {', '.join(map(repr, bad))}; valid: "
                                                 f"{'all, ' if allow_all else ''}{', '.join(names)}")
            return list(dict.fromkeys(items))
        try:
            values = [int(s) for s in items]
        except ValueError:
            values = None
        if values is None or any(v < (1 if kind == "NFE" else 0) for v in values):
            need = "positive integers" if kind == "NFE" else "non-negative integers"
            raise argparse.ArgumentTypeError(f"{kind} must be comma-separated {need}, got {text!r}")
        return list(dict.fromkeys(values))

    parse.__name__ = kind  # argparse names the type in its messages
    return parse


def _at_least(minimum: int):
    """An argparse type: an integer >= minimum."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = minimum - 1
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return v

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _writable_dir(text: str) -> Path:
    """A directory that exists and is writable, or can be created under a writable parent."""
    path = Path(text).expanduser()
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not a directory ({probe} is a file)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write to {text!r} ({probe} is not writable)")
    return path


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
    p.add_argument("--solvers", type=_csv("solver", _solvers, allow_all=True), default=None,
                   help="'all' (default) or comma-separated solver names")
    p.add_argument("--models", type=_csv("model", _models, allow_all=True), default=None,
                   help="'all' or comma-separated model names (default: the default models of reference_models)")
    p.add_argument("--nfe", type=_csv("NFE"), default=_csv("NFE")(DEFAULT_NFE),
                   help=f"NFE budgets of fixed-budget solvers (default {DEFAULT_NFE})")
    p.add_argument("--seeds", type=_csv("seed"), default=[0], help="seeds of the prior noise (default 0)")
    p.add_argument("--schedules", type=_csv("schedule", _schedules), default=["vp"],
                   help="noise schedules, vp and/or ve (default vp; trained models are trained for each on first use)")
    p.add_argument("--samples", type=_at_least(1), default=None,
                   help="samples per cell (default: 1000 for 2-D models, 200 for image models)")
    p.add_argument("--batch-size", type=_at_least(1), default=None,
                   help="samples per solver call (default: all of a rank's samples; does not change samples, "
                        "except for adaptive solvers, which solve each batch as one system)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default auto: cuda if available")
    p.add_argument("--threads", type=_at_least(0), default=1,
                   help="CPU threads per process (default 1: small solver steps run fastest and their timings do "
                        "not depend on other load; 0: torch's default)")
    p.add_argument("--out", type=_writable_dir, default=None, help="run directory (default: results/runs/...)")
    p.add_argument("--cache-dir", default=None,
                   help="model and statistics cache (default $SAMPLERBENCH_CACHE, else ~/.cache/samplerbench)")
    p.add_argument("--quiet", action="store_true", help="no progress bars and no summary table")


def _config(args, models, solvers) -> dict:
    return {"models": models, "schedules": args.schedules, "solvers": solvers, "nfe": args.nfe, "seeds": args.seeds,
            "samples": args.samples, "prediction": "eps"}


def _config_id(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]


def _default_run_dir(config_id: str) -> tuple[Path, bool]:
    """The newest unfinished run of this configuration under results/runs, else a new directory."""
    if RUNS_DIR.is_dir():
        for d in sorted(RUNS_DIR.glob(f"*-{config_id}"), reverse=True):
            try:
                if not json.loads((d / "manifest.json").read_text()).get("finished"):
                    return d, True
            except (OSError, ValueError):
                continue
    return RUNS_DIR / f"{dt.datetime.now():%Y%m%d-%H%M%S}-{config_id}", False


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


def _device_info(world) -> dict:
    import torch

    info = {"device": str(world.device), "world_size": world.size, "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if world.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(world.device)
    return info


def summary(df: pd.DataFrame) -> str:
    """Solver x NFE of the headline metric (mean over seeds), one block per model and schedule."""
    blocks = []
    for (model, sched), rows in df[df["status"] == "ok"].groupby(["model", "schedule"], sort=False):
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
        blocks.append(f"{model} ({sched}): {schema.LABELS.get(metric, metric)}, lower is better\n"
                      + table.to_string(float_format=lambda v: f"{v:.4g}", na_rep="-"))
    counts = df["status"].value_counts().to_dict()
    blocks.append("cells: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in schema.STATUSES))
    return "\n\n".join(blocks)


def _make_report(run_dir: Path) -> None:
    try:
        from .report import make_report

        path = make_report([run_dir], run_dir / "report")
        print(f"report: {path}")
    except Exception as e:  # the data are written; the report is secondary
        print(f"report not made: {type(e).__name__}: {e}", file=sys.stderr)


def main_run(args) -> int:
    from . import dist

    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            print("python -m bench run: error: argument --device: cuda is not available; valid: auto, cpu",
                  file=sys.stderr)
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
    finally:
        dist.finish(world)


def _run(args, world) -> int:
    import reference_models
    from solvers import list_solvers

    from .store import RunLock, RunLocked, write_json
    from .sweep import Sweep, run_sweep

    models = args.models or list(reference_models.DEFAULT_MODELS)
    solvers = args.solvers or list_solvers()
    config = _config(args, models, solvers)
    config_id = _config_id(config)
    decision = None
    if world.main:
        run_dir, resuming = (args.out, (args.out / "manifest.json").exists()) if args.out else _default_run_dir(config_id)
        decision = {"run_dir": str(run_dir), "error": None}
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            decision["error"] = (2, f"python -m bench run: error: argument --out: cannot create {run_dir}: {e}")
    decision = world.broadcast(decision)
    run_dir = Path(decision["run_dir"])
    with ExitStack() as stack:
        if world.main and not decision["error"]:
            try:
                stack.enter_context(RunLock(run_dir))
            except RunLocked as e:
                decision["error"] = (1, f"python -m bench run: error: {e}")
            manifest_path = run_dir / "manifest.json"
            manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
            old = manifest.get("config", {})
            if not decision["error"] and manifest and old.get("samples") != args.samples:
                decision["error"] = (2, f"python -m bench run: error: {run_dir} holds a run with --samples "
                                        f"{old.get('samples') or 'default'}; use the same --samples or another --out")
        decision = world.broadcast(decision)
        if decision["error"]:
            if world.main:
                print(decision["error"][1], file=sys.stderr)
            return decision["error"][0]
        now = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        if world.main:
            if manifest:
                manifest.setdefault("resumed", []).append(now)
                manifest["config"] = {**config, "batch_size": args.batch_size, "cache_dir": args.cache_dir,
                                      "device": args.device}
                print(f"resuming {run_dir}", file=sys.stderr)
            else:
                manifest = {"run_id": run_dir.name, "config": {**config, "batch_size": args.batch_size,
                                                               "cache_dir": args.cache_dir, "device": args.device},
                            "command": " ".join(["python -m bench"] + sys.argv[1:]), "started": now}
            manifest.update(git_commit=_git_commit(), versions=_versions(), device=_device_info(world), finished=None)
            write_json(manifest_path, manifest)
        sweep = Sweep(models, solvers, args.nfe, args.seeds, args.schedules, samples=args.samples,
                      batch_size=args.batch_size, cache_dir=args.cache_dir, run_id=run_dir.name)
        df = run_sweep(sweep, run_dir, world, progress=not args.quiet)
        if not world.main:
            return 0
        manifest["finished"] = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        write_json(manifest_path, manifest)
    if not args.quiet:
        print("\n" + summary(df))
    _make_report(run_dir)
    print(f"results: {run_dir / 'results.parquet'} (and results.csv, manifest.json)")
    return 0
