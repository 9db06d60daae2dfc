"""Per-cell metrics: path error against the reference solution, the exact NLL gap, and sample quality.

Sample-quality metrics themselves (sliced Wasserstein, MMD, FID/KID) live in bench.quality;
this module decides which apply to a model and feeds them the right data.
"""
from __future__ import annotations

import math

import torch

from reference_models import ReferenceModel
from solvers import reference_solution, sample

# Trained models have no closed-form score: their reference is rk45 at this tolerance (issue 5).
TRAINED_REFERENCE_TOL = 1e-6
EXACT_REFERENCE_TOL = 1e-10
# Exact samples that estimate E[log p_t_end] for the NLL gap: many, so that its noise is the sampler's.
NLL_EXACT_SAMPLES = 20_000


def path_errors(x: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """RMS over every coordinate of every sample, and the largest absolute coordinate error, of x - ref."""
    d = (x.double().cpu() - ref.double().cpu()).reshape(x.shape[0], -1)
    return {"error_rmse": float(d.pow(2).mean().sqrt()), "error_max": float(d.abs().max())}


def reference(ref_model: ReferenceModel, x_T: torch.Tensor) -> tuple[torch.Tensor, str]:
    """High-accuracy PF-ODE solution from x_T at the schedule's default t_end, and how it was computed.

    Exact models: scipy DOP853 in float64 at rtol = atol = 1e-10 (solvers.reference_solution).
    Trained models: rk45 at rtol = atol = 1e-6 in the network's own dtype.
    """
    model = ref_model.model
    start = model.nfe
    if ref_model.kind == "exact":
        x = reference_solution(model, x_T.double(), rtol=EXACT_REFERENCE_TOL, atol=EXACT_REFERENCE_TOL)
        how = f"DOP853 float64 rtol=atol={EXACT_REFERENCE_TOL:g}"
    else:
        x = sample(model, x_T, solver="rk45", rtol=TRAINED_REFERENCE_TOL, atol=TRAINED_REFERENCE_TOL)
        how = f"rk45 rtol=atol={TRAINED_REFERENCE_TOL:g}"
    return x.double().cpu(), f"{how}, {model.nfe - start} evaluations"


def exact_log_likelihood(ref_model: ReferenceModel, seed: int, n: int = NLL_EXACT_SAMPLES) -> float:
    """E[log p_t_end(x)] over `n` exact draws of the model's marginal at t_end (float64)."""
    sched = ref_model.schedule
    gen = torch.Generator().manual_seed(10_007 * seed + 17)
    x = ref_model.mixture.sample(n, gen, schedule=sched, t=sched.default_t_end, dtype=torch.float64)
    return float(ref_model.mixture.log_prob(x, sched, sched.default_t_end).mean())


def nll_gap(ref_model: ReferenceModel, samples: torch.Tensor, exact_mean_log_p: float) -> float:
    """Mean NLL of the samples minus that of exact samples, under the exact marginal at t_end (nats).

    Zero for a perfect sampler; negative when samples crowd the modes, positive when they spread.
    """
    sched = ref_model.schedule
    log_p = ref_model.mixture.log_prob(samples.double().cpu(), sched, sched.default_t_end)
    return exact_mean_log_p - float(log_p.mean())


def quality(ref_model: ReferenceModel, samples: torch.Tensor, real: torch.Tensor, seed: int,
            cache_dir=None, device="cpu", real_cache_name: str | None = None) -> dict[str, float]:
    """The quality metrics that apply to `ref_model`: swd and mmd for 2-D data, fid and kid for images."""
    from . import quality as q  # torch-fidelity is heavy: import only when a metric is computed

    if ref_model.metric == "2d":
        gen = torch.Generator().manual_seed(seed)
        x, y = samples.double().cpu().flatten(1), real.double().cpu().flatten(1)
        return {"swd": float(q.sliced_wasserstein(x, y, generator=gen)), "mmd": float(q.mmd(x, y))}
    if ref_model.metric == "image":
        out = q.fid_kid(samples, real, cache_dir=cache_dir, device=device, real_cache_name=real_cache_name)
        return {"fid": float(out["fid"]), "kid": float(out["kid"])}
    raise ValueError(f"model {ref_model.name!r} has unknown metric family {ref_model.metric!r}; valid: 2d, image")


def all_finite(values: dict[str, float]) -> bool:
    return all(v is None or math.isfinite(v) for v in values.values())

