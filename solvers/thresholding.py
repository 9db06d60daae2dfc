"""Thresholding of the data prediction x0 for data-prediction solvers: static clipping, and Imagen's dynamic
thresholding (Saharia et al. 2022, Sec. 2.3; DPM-Solver++'s correcting_x0_fn, diffusers' `thresholding=True`).

Solvers take it as options `thresholding` ("none", "static", "dynamic"), `threshold_ratio` and `threshold_max`, and use
`thresholded(model, ...)` in place of `model.x0`; "none" (the default) is `model.x0` itself.
"""
from __future__ import annotations

import math

import torch

THRESHOLDINGS = ("none", "static", "dynamic")


def threshold_x0(x0: torch.Tensor, mode: str, ratio: float = 0.995, max_value: float = 1.0) -> torch.Tensor:
    """x0 thresholded per sample. static: clamped to [-max_value, max_value]. dynamic (Imagen): s = the `ratio`
    quantile of |x0| over each sample (linear interpolation, as torch.quantile), s = clamp(s, 1, max_value), then
    x0 = clamp(x0, -s, s) / s, within [-1, 1] (max_value < 1 makes s = max_value). none: x0 unchanged."""
    if mode == "none":
        return x0
    if mode == "static":
        return x0.clamp(-max_value, max_value)
    if mode != "dynamic":
        raise ValueError(f"unknown thresholding {mode!r}; valid: {', '.join(THRESHOLDINGS)}")
    flat = x0.reshape(x0.shape[0], -1).abs()
    work = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()
    ordered = work.sort(dim=1).values  # the quantile by hand: torch.quantile refuses inputs of more than 2^24 values
    pos = ratio * (ordered.shape[1] - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, ordered.shape[1] - 1)
    s = torch.lerp(ordered[:, lo], ordered[:, hi], pos - lo).clamp(min=1.0, max=max_value)
    s = s.reshape(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return torch.clamp(x0, -s, s) / s


def thresholded(model, mode: str, ratio: float = 0.995, max_value: float = 1.0):
    """`model.x0` itself for mode "none", else a callable (x, t) -> threshold_x0(model.x0(x, t), ...)."""
    if mode == "none":
        return model.x0
    return lambda x, t: threshold_x0(model.x0(x, t), mode, ratio, max_value)
