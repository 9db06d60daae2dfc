"""Time-step grids: K + 1 decreasing times from t_start to t_end, in float64."""
from __future__ import annotations

import math

import torch

from .schedules import Schedule

_F64 = torch.float64


def uniform(schedule: Schedule, steps: int, t_start: float, t_end: float) -> torch.Tensor:
    """Uniform in t (score_sde)."""
    return torch.linspace(t_start, t_end, steps + 1, dtype=_F64)


def logsnr(schedule: Schedule, steps: int, t_start: float, t_end: float) -> torch.Tensor:
    """Uniform in lambda = log(alpha/sigma) (DPM-Solver's 'logSNR')."""
    lam = torch.linspace(float(schedule.lambda_(t_start)), float(schedule.lambda_(t_end)), steps + 1, dtype=_F64)
    return schedule.t_of_lambda(lam)


def quadratic(schedule: Schedule, steps: int, t_start: float, t_end: float) -> torch.Tensor:
    """Uniform in sqrt(t) (DDIM's quadratic skip, DPM-Solver's 'time_quadratic')."""
    return torch.linspace(math.sqrt(t_start), math.sqrt(t_end), steps + 1, dtype=_F64) ** 2


def karras(schedule: Schedule, steps: int, t_start: float, t_end: float, rho: float = 7.0) -> torch.Tensor:
    """EDM (Karras et al. 2022, eq. 5) in the scaled noise level sigma/alpha = exp(-lambda)."""
    smax, smin = math.exp(-float(schedule.lambda_(t_start))), math.exp(-float(schedule.lambda_(t_end)))
    ramp = torch.linspace(0.0, 1.0, steps + 1, dtype=_F64)
    s = (smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    return schedule.t_of_lambda(-torch.log(s))


GRIDS = {"uniform": uniform, "logsnr": logsnr, "quadratic": quadratic, "karras": karras}


def check_interval(schedule: Schedule, t_start: float, t_end: float) -> None:
    for name, v in (("t_start", t_start), ("t_end", t_end)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {v!r}")
        schedule.check_time(float(v), name)
    if not t_end < t_start:
        raise ValueError(f"need t_end < t_start, got t_start={t_start}, t_end={t_end}")


def make_grid(schedule: Schedule, timesteps, steps: int, t_start: float, t_end: float) -> torch.Tensor:
    """A validated float64 grid: a named kind (see GRIDS) or an explicit decreasing sequence of times."""
    if isinstance(timesteps, str):
        if timesteps not in GRIDS:
            raise ValueError(f"unknown timesteps {timesteps!r}; valid: {', '.join(GRIDS)} or a tensor of times")
        check_interval(schedule, t_start, t_end)
        grid = GRIDS[timesteps](schedule, steps, float(t_start), float(t_end)).clone()
        grid[0], grid[-1] = t_start, t_end  # exact ends, whatever the round-off of the mapping
    else:
        grid = torch.as_tensor(timesteps, dtype=_F64).flatten().cpu()
        if grid.numel() != steps + 1:
            raise ValueError(f"an explicit grid for {steps} steps needs {steps + 1} times, got {grid.numel()}")
        check_interval(schedule, float(grid[0]), float(grid[-1]))
    if not torch.all(torch.isfinite(grid)) or not torch.all(grid[1:] < grid[:-1]):
        raise ValueError("time grid must be finite and strictly decreasing from t_start to t_end")
    return grid
