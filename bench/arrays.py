"""Per-sample arrays of a run, beside its tables: what paired comparisons, sample grids and equivalences need.

DIR/arrays/<group>/group.safetensors holds what a group's cells are measured against (real points,
exact log-likelihood statistics, real samples to draw); DIR/arrays/<group>/<solver>-nfe<N>.safetensors
holds a cell's `Observation` and the samples to draw (all of them for 2-D models, the first
`GRID_SAMPLES` for images). Written atomically and without pickle (safetensors).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from reference_models.checkpoints import atomic_write

from .metrics import Evaluator, Observation

DIR = "arrays"
GRID_SAMPLES = 16


def safe_name(text: str) -> str:
    """`text` as a file name: anything but letters, digits and _ . = - becomes _ (model names like a:b/c)."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", str(text))


_safe = safe_name


def group_dir(run_dir, model: str, schedule: str, prediction: str, seed: int, guidance_kind=None,
              guidance=None) -> Path:
    """DIR/arrays/<model>-<schedule>-<prediction>[-<guidance kind><scale>]-seed<seed>."""
    guided = "" if _missing(guidance_kind) else f"-{guidance_kind}{float(guidance):g}"
    return Path(run_dir) / DIR / _safe(f"{model}-{schedule}-{prediction}{guided}-seed{seed}")


def row_group_dir(run_dir, row, seed=None) -> Path:
    """group_dir of a result row (a pandas row or dict with the schema's group keys); `seed` overrides its seed."""
    return group_dir(run_dir, row["model"], row["schedule"], row["prediction"], int(row["seed"] if seed is None else seed),
                     row.get("guidance_kind"), row.get("guidance"))


def cell_name(solver: str, nfe) -> str:
    """A cell's file name in its group's directory."""
    return _safe(f"{solver}-nfe{'auto' if nfe is None else int(nfe)}.safetensors")


def cell_path(run_dir, model, schedule, prediction, seed, solver: str, nfe, guidance_kind=None, guidance=None) -> Path:
    return group_dir(run_dir, model, schedule, prediction, seed, guidance_kind, guidance) / cell_name(solver, nfe)


def _missing(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


def _save(path: Path, tensors: dict, meta: dict | None = None) -> None:
    from safetensors.torch import save_file

    tensors = {k: (torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v.contiguous())
               for k, v in tensors.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: save_file(tensors, p, metadata={k: str(v) for k, v in (meta or {}).items()}))


def _load(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def save_cell(path: Path, obs: Observation, samples: torch.Tensor, image: bool) -> None:
    shown = samples[:GRID_SAMPLES] if image else samples
    _save(path, {**obs.arrays(), "samples": shown.detach().cpu().float()})


def load_cell(path: Path) -> tuple[Observation, torch.Tensor] | None:
    """The cell's observation and drawn samples, or None when the file is missing or unreadable."""
    try:
        t, _ = _load(path)
    except Exception:
        return None
    obs = Observation(**{k: (t[k].numpy() if k in t else None) for k in Observation.FIELDS})
    return obs, t.get("samples")


def save_group(path: Path, real_points, exact, real_samples: torch.Tensor, seed: int, family: str,
               ref_points=None, fid_stats=None, ref_metric: str | None = None) -> None:
    """What the group's cells are measured against: real points, exact statistics, the reference solution's points
    (the data-free metric) and precomputed FID statistics (mu, sigma), with real samples to draw."""
    tensors = {"real_samples": real_samples.detach().cpu().float()}
    named = {"real_points": real_points, "exact": exact, "ref_points": ref_points}
    if fid_stats is not None:
        named.update(fid_mu=fid_stats[0], fid_sigma=fid_stats[1])
    tensors.update({k: np.asarray(v, dtype=np.float64) for k, v in named.items() if v is not None})
    _save(path, tensors, {"seed": seed, "family": family, **({"ref_metric": ref_metric} if ref_metric else {})})


def load_group(path: Path) -> tuple[Evaluator, torch.Tensor] | None:
    """The group's evaluator (rebuilt from its arrays) and real samples, or None when missing or unreadable."""
    try:
        t, meta = _load(path)
    except Exception:
        return None
    got = {k: t[k].numpy() if k in t else None for k in ("real_points", "exact", "ref_points", "fid_mu", "fid_sigma")}
    stats = (got["fid_mu"], got["fid_sigma"]) if got["fid_mu"] is not None else None
    return Evaluator(got["real_points"], got["exact"], int(meta.get("seed", 0)), meta.get("family", "2d"),
                     ref_points=got["ref_points"], fid_stats=stats, ref_metric=meta.get("ref_metric")), t["real_samples"]


def drawn_samples(run_dir, rows) -> tuple[dict, torch.Tensor | None, bool] | None:
    """(cells, real, image) of one group's ok rows in one run, first seed, for the report's sample figure:
    cells maps (solver, NFE label) to the drawn samples. None when the run kept no arrays."""
    ok = rows[rows["status"] == "ok"]
    if ok.empty:
        return None
    r = ok.iloc[0]
    seed = int(ok["seed"].min())
    gdir = row_group_dir(run_dir, r, seed)
    group = load_group(gdir / "group.safetensors")
    if group is None:
        return None
    evaluator, real = group
    cells = {}
    for _, c in ok[ok["seed"] == seed].sort_values("nfe", na_position="last").iterrows():
        nfe = None if pd.isna(c["nfe"]) else int(c["nfe"])
        got = load_cell(gdir / cell_name(c["solver"], nfe))
        if got is not None and got[1] is not None:
            cells[(c["solver"], "adaptive" if nfe is None else str(nfe))] = got[1]
    image = evaluator.family == "image"
    return cells, (None if image or len(real) == 0 else real), image
