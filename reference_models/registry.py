"""Named reference models: each name gives a ready `solvers.Model`, real data and its shape."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from solvers import Model, Schedule, VESchedule, VPSchedule

from .gmm import GaussianMixture

SCHEDULES = ("vp", "ve")


@dataclass
class ReferenceModel:
    name: str
    model: Model  # ready to sample: schedule, prediction kind, evaluation counter
    shape: tuple[int, ...]  # one sample's shape
    kind: str  # "exact" (closed-form score) or "trained"
    metric: str  # headline quality metric family: "2d" (SWD/MMD) or "image" (FID/KID)
    data: Callable[[int, torch.Generator | None], torch.Tensor]  # n held-out real data points
    mixture: GaussianMixture | None = None  # exact models: closed-form densities

    @property
    def schedule(self) -> Schedule:
        return self.model.schedule


def make_schedule(name: str) -> Schedule:
    """The schedules reference models are built on: score_sde's VP linear and VE (sigma 0.01..50)."""
    if name == "vp":
        return VPSchedule.linear(0.1, 20.0)
    if name == "ve":
        return VESchedule(0.01, 50.0)
    raise ValueError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)}")


def gmm2d() -> GaussianMixture:
    """8 equal modes on a circle of radius 2, each with standard deviation 0.25 per axis."""
    ang = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = 2.0 * torch.stack([torch.cos(ang), torch.sin(ang)], dim=1)
    return GaussianMixture(means, torch.full((8,), 0.25**2))


def _exact(name: str, mixture: GaussianMixture, metric: str, schedule: str, prediction: str) -> ReferenceModel:
    return ReferenceModel(name, mixture.model(make_schedule(schedule), prediction), mixture.shape, "exact", metric,
                          lambda n, generator=None: mixture.sample(n, generator), mixture)


_BUILDERS: dict[str, Callable[..., ReferenceModel]] = {
    "gmm2d": lambda schedule="vp", prediction="eps", **kw: _exact("gmm2d", gmm2d(), "2d", schedule, prediction),
}


def list_models() -> list[str]:
    return list(_BUILDERS)


def load(name: str, schedule: str = "vp", prediction: str = "eps", **kwargs) -> ReferenceModel:
    """Build a named reference model. Trained models accept cache_dir, device, train (train if missing)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(_BUILDERS)}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    return _BUILDERS[name](schedule=schedule, prediction=prediction, **kwargs)
