"""2-D toy data sets (after FFJORD's toy_data, Grathwohl et al. 2019), drawn with explicit generators.

Each sampler returns n points, float32, shaped (n, 2), scaled to a spread of about one unit.
`8gaussians` is exactly the distribution of the exact model `gmm2d` (8 modes on a circle of
radius 2, standard deviation 0.25), so a trained score can be compared with the exact one.
"""
from __future__ import annotations

import math

import torch

from solvers.noise import randn


def _u(n: int, generator) -> torch.Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64)


def swissroll(n: int, generator=None) -> torch.Tensor:
    """The swiss roll (x, z) for angle 1.5 pi (1 + 2u), with noise 0.5, divided by 5."""
    ang = 1.5 * math.pi * (1 + 2 * _u(n, generator))
    pts = torch.stack([ang * torch.cos(ang), ang * torch.sin(ang)], dim=1)
    pts = pts + 0.5 * randn((n, 2), generator=generator, dtype=torch.float64)
    return (pts / 5.0).float()


def moons(n: int, generator=None) -> torch.Tensor:
    """Two interleaving half circles (scikit-learn's make_moons, noise 0.1), times 2, shifted by (-1, -0.2)."""
    upper = torch.rand(n, generator=generator) < 0.5
    ang = math.pi * _u(n, generator)
    x = torch.where(upper, torch.cos(ang), 1 - torch.cos(ang))
    y = torch.where(upper, torch.sin(ang), 0.5 - torch.sin(ang))
    pts = torch.stack([x, y], dim=1) + 0.1 * randn((n, 2), generator=generator, dtype=torch.float64)
    return (2.0 * pts + torch.tensor([-1.0, -0.2], dtype=torch.float64)).float()


def checkerboard(n: int, generator=None) -> torch.Tensor:
    """Uniform on the 8 dark squares of a 4x4 checkerboard covering [-2, 2]^2."""
    x1 = 4 * _u(n, generator) - 2
    x2 = _u(n, generator) - 2 * torch.randint(0, 2, (n,), generator=generator, dtype=torch.float64)
    x2 = x2 + torch.remainder(torch.floor(x1), 2)
    return torch.stack([x1, x2], dim=1).float()


def eight_gaussians(n: int, generator=None) -> torch.Tensor:
    """8 equal Gaussians on a circle of radius 2, standard deviation 0.25 (the data of gmm2d)."""
    k = torch.randint(0, 8, (n,), generator=generator)
    ang = k.to(torch.float64) * (2 * math.pi / 8)
    centers = 2.0 * torch.stack([torch.cos(ang), torch.sin(ang)], dim=1)
    return (centers + 0.25 * randn((n, 2), generator=generator, dtype=torch.float64)).float()


SAMPLERS = {"swissroll": swissroll, "moons": moons, "checkerboard": checkerboard, "8gaussians": eight_gaussians}
