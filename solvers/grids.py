"""Time-step grids: K + 1 decreasing times from t_start to t_end, in float64.

A grid is chosen by name (GRIDS), a parameterised one as "name:PARAM" (e.g. "shift:3"). The grids defined in
lambda (logsnr, karras) start from where alpha = 0 (lambda = -inf: FlowSchedule's t = 1) as follows: the grid
is laid out from t_start - t_end instead, and its first point is then set back to t_start (`alpha_zero_start`).
On FlowSchedule lambda(1 - t_end) = -lambda(t_end), so logsnr from t = 1 is uniform in lambda on the symmetric
range [-lambda(t_end), lambda(t_end)] after a first step from t = 1; that first step keeps a length of about
t_end in t however fine the grid (its error, O(t_end^2) for a first-order step, stays below the measured
errors at NFE <= 640 with t_end = 1e-3). A range that grew with K instead (t_start - c/K^p) would cost every
solver a log factor in its measured order.
"""
from __future__ import annotations

import math

import torch

from .schedules import Schedule

_F64 = torch.float64


def uniform(schedule: Schedule, steps: int, t_start: float, t_end: float) -> torch.Tensor:
    """Uniform in t (score_sde)."""
    return torch.linspace(t_start, t_end, steps + 1, dtype=_F64)


def alpha_zero_start(schedule: Schedule, steps: int, t_start: float, t_end: float) -> float:
    """The time a lambda-defined grid is laid out from: t_start, or where lambda(t_start) = -inf (alpha = 0)
    t_start - min(t_end, (t_start - t_end) / 2); the grid's first point is then set back to t_start."""
    if math.isfinite(float(schedule.lambda_(t_start))):
        return t_start
    return t_start - min(t_end, 0.5 * (t_start - t_end))


def logsnr(schedule: Schedule, steps: int, t_start: float, t_end: float) -> torch.Tensor:
    """Uniform in lambda = log(alpha/sigma) (DPM-Solver's 'logSNR'); from alpha = 0 see `alpha_zero_start`."""
    t_from = alpha_zero_start(schedule, steps, t_start, t_end)
    lam = torch.linspace(float(schedule.lambda_(t_from)), float(schedule.lambda_(t_end)), steps + 1, dtype=_F64)
    return schedule.t_of_lambda(lam)


def quadratic(schedule: Schedule, steps: int, t_start: float, t_end: float) -> torch.Tensor:
    """Uniform in sqrt(t) (DDIM's quadratic skip, DPM-Solver's 'time_quadratic')."""
    return torch.linspace(math.sqrt(t_start), math.sqrt(t_end), steps + 1, dtype=_F64) ** 2


def karras(schedule: Schedule, steps: int, t_start: float, t_end: float, rho: float = 7.0) -> torch.Tensor:
    """EDM (Karras et al. 2022, eq. 5) in the scaled noise level sigma/alpha = exp(-lambda); from alpha = 0 see
    `alpha_zero_start`."""
    t_from = alpha_zero_start(schedule, steps, t_start, t_end)
    smax, smin = math.exp(-float(schedule.lambda_(t_from))), math.exp(-float(schedule.lambda_(t_end)))
    ramp = torch.linspace(0.0, 1.0, steps + 1, dtype=_F64)
    s = (smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    return schedule.t_of_lambda(-torch.log(s))


def shift(schedule: Schedule, steps: int, t_start: float, t_end: float, s: float = 3.0) -> torch.Tensor:
    """SD3's shifted times (Esser et al. 2024, eq. 23): t = s u / (1 + (s - 1) u) with u uniform, s = 3 by default.

    u runs uniformly between the unshifted ends u(t) = t / (s - (s - 1) t), so the grid ends exactly at t_start and
    t_end; s > 1 puts more steps at high noise, s = 1 is `uniform`. Name it "shift" or "shift:S".
    """
    u = torch.linspace(t_start / (s - (s - 1.0) * t_start), t_end / (s - (s - 1.0) * t_end), steps + 1, dtype=_F64)
    return s * u / (1.0 + (s - 1.0) * u)


GRIDS = {"uniform": uniform, "logsnr": logsnr, "quadratic": quadratic, "karras": karras, "shift": shift}
PARAMETERISED = {"shift": "s"}  # grids that take one number after a colon, e.g. "shift:3"


def grid_function(name: str):
    """(function, keyword arguments) of the grid named `name` ("logsnr", "shift", "shift:2.5", ...); a one-line
    ValueError naming the valid grids for anything else."""
    valid = f"valid: {', '.join(GRIDS)}, shift:S (S > 0) or a tensor of times"
    base, sep, param = name.partition(":") if isinstance(name, str) else ("", "", "")
    if base not in GRIDS or (sep and base not in PARAMETERISED):
        raise ValueError(f"unknown timesteps {name!r}; {valid}")
    if not sep:
        return GRIDS[base], {}
    try:
        value = float(param)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"timesteps {name!r}: {PARAMETERISED[base]} must be a finite number > 0; {valid}")
    return GRIDS[base], {PARAMETERISED[base]: value}


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
        fn, params = grid_function(timesteps)
        check_interval(schedule, t_start, t_end)
        grid = fn(schedule, steps, float(t_start), float(t_end), **params).clone()
        grid[0], grid[-1] = t_start, t_end  # exact ends, whatever the round-off of the mapping
    else:
        grid = torch.as_tensor(timesteps, dtype=_F64).flatten().cpu()
        if grid.numel() != steps + 1:
            raise ValueError(f"an explicit grid for {steps} steps needs {steps + 1} times, got {grid.numel()}")
        check_interval(schedule, float(grid[0]), float(grid[-1]))
    if not torch.all(torch.isfinite(grid)) or not torch.all(grid[1:] < grid[:-1]):
        raise ValueError("time grid must be finite and strictly decreasing from t_start to t_end")
    return grid
