"""The reference solution every path error is measured against, and an estimate of its own accuracy.

A reference is the PF-ODE solution from a group's x_T by a high-accuracy method (`--reference`):

  dop853               scipy's DOP853 in float64 on the CPU (the network is called through the CPU's
                       float64 state); the default for exact models (rtol = atol = 1e-10).
  rk45                 scipy's RK45 (score_sde's ODE sampler) in the network's dtype; the default for
                       networks on the CPU (1e-6).
  dpm_solver_adaptive  adaptive DPM-Solver-23 in torch, on the model's device (no transfer per
                       step); the default for networks on CUDA (1e-5).

`NAME:TOL` sets the tolerance (rtol = atol = TOL). The reference's own accuracy is estimated by
solving the first `CHECK_SAMPLES` samples again at a `CHECK_FACTOR` times looser tolerance: the RMS
difference of the two solutions bounds the error of the tighter one from above where the method
converges (its error falls as the tolerance tightens). A cell's path error below `MARGIN` times that
estimate is not a measurement of the solver: it is marked "at reference accuracy" and is not used to
fit orders.
"""
from __future__ import annotations

import argparse
import math

import torch

from reference_models import ReferenceModel
from solvers import get_solver, reference_solution, sample

from .schema import REFERENCE_MARGIN as MARGIN

METHODS = ("dop853", "rk45", "dpm_solver_adaptive")
CHOICES = ("auto", *METHODS)
EXACT_TOL = 1e-10  # exact models: float64 closed-form score
NETWORK_TOL = {"dop853": 1e-7, "rk45": 1e-6, "dpm_solver_adaptive": 1e-5}
CHECK_FACTOR = 10.0
CHECK_SAMPLES = 64
MAX_TOL = 1e-2


def reference_choice(text: str) -> str:
    """argparse type of --reference: auto, a method, or METHOD:TOL with 0 < TOL <= 1e-2."""
    name, sep, tol = text.strip().partition(":")
    if name not in CHOICES or (sep and name == "auto"):
        raise argparse.ArgumentTypeError(f"invalid choice {text!r}; valid: {', '.join(CHOICES)}, or METHOD:TOL "
                                         f"(e.g. dpm_solver_adaptive:1e-6)")
    if sep:
        try:
            value = float(tol)
        except ValueError:
            value = math.nan
        if not (0 < value <= MAX_TOL):
            raise argparse.ArgumentTypeError(f"tolerance of {text!r} must be a number in (0, {MAX_TOL:g}]")
        return f"{name}:{value:g}"
    return name


reference_choice.__name__ = "reference method"


def method(choice: str, ref: ReferenceModel, device) -> tuple[str, float]:
    """(method, tolerance) that `choice` means for this model on this device (auto: rk45 for a network on CUDA where
    the schedule starts at alpha = 0, which dpm_solver_adaptive cannot start from)."""
    name, _, tol = choice.partition(":")
    if name == "auto":
        cuda = torch.device(device).type == "cuda"
        alpha_zero = ref.schedule.at(ref.schedule.T).alpha == 0.0
        name = "dop853" if ref.kind == "exact" else (
            "dpm_solver_adaptive" if cuda and not (alpha_zero and not get_solver("dpm_solver_adaptive")
                                                   .starts_at_alpha_zero) else "rk45")
    return name, float(tol) if tol else (EXACT_TOL if ref.kind == "exact" else NETWORK_TOL[name])


def solve(ref: ReferenceModel, x_T: torch.Tensor, name: str, tol: float) -> torch.Tensor:
    """The PF-ODE solution from x_T at the schedule's default t_end by `name` at rtol = atol = tol (float64, CPU)."""
    model = ref.model
    if name == "dop853":
        x = reference_solution(model, x_T.double(), rtol=tol, atol=tol)
    elif name == "rk45":
        x = sample(model, x_T, solver="rk45", rtol=tol, atol=tol)
    elif name == "dpm_solver_adaptive":
        x = sample(model, x_T, solver="dpm_solver_adaptive", rtol=tol, atol=tol)
    else:
        raise ValueError(f"unknown reference method {name!r}; valid: {', '.join(METHODS)}")
    return x.double().cpu()


def describe(name: str, tol: float, evaluations: int) -> str:
    where = {"dop853": "float64, CPU", "rk45": "scipy, the network's dtype",
             "dpm_solver_adaptive": "torch, the model's device"}[name]
    return f"{name} rtol=atol={tol:g} ({where}), {evaluations} evaluations"


def accuracy(ref: ReferenceModel, x_T: torch.Tensor, x_ref: torch.Tensor, name: str, tol: float) -> float:
    """Estimated RMSE of the reference: RMS difference from the same method at a CHECK_FACTOR looser tolerance,
    on the first CHECK_SAMPLES samples (an upper estimate where the method converges)."""
    k = min(len(x_T), CHECK_SAMPLES)
    if k == 0:
        return math.nan
    loose = solve(ref, x_T[:k], name, min(tol * CHECK_FACTOR, MAX_TOL))
    return float((loose - x_ref[:k].double().cpu()).pow(2).mean().sqrt())


def at_reference_accuracy(error_rmse: float, reference_rmse: float) -> bool:
    """Whether a path error is within MARGIN of the reference's own estimated error (not a measurement)."""
    return math.isfinite(reference_rmse) and math.isfinite(error_rmse) and error_rmse <= MARGIN * reference_rmse
