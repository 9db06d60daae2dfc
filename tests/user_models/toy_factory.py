"""Factory examples for `--models tests/user_models/toy_factory.py:make` (and `:make_image`).

A factory takes no arguments and returns reference_models.user_model(...). The networks here have
fixed-seed random weights: untrained, but deterministic and fast.
"""
import torch
from torch import nn

import reference_models
from solvers import Model, VPSchedule


class TimeMLP(nn.Module):
    """eps(x, t) for 2-D points: an MLP on (x, t)."""

    def __init__(self, dim: int = 2, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 1, width), nn.SiLU(), nn.Linear(width, dim))

    def forward(self, x, t):
        return self.net(torch.cat([x, t[:, None].to(x.dtype)], dim=1))


class TinyConv(nn.Module):
    """eps(x, t) for 1 x 8 x 8 images: two convolutions, t added as a channel."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.a, self.b = nn.Conv2d(2, width, 3, padding=1), nn.Conv2d(width, 1, 3, padding=1)

    def forward(self, x, t):
        tt = t.to(x.dtype)[:, None, None, None].expand(-1, 1, *x.shape[2:])
        return self.b(torch.nn.functional.silu(self.a(torch.cat([x, tt], dim=1))))


def _seeded(cls, seed: int = 0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls().eval().requires_grad_(False)


def ring(n: int, generator=None) -> torch.Tensor:
    """n points near the unit circle: the toy model's real data."""
    ang = torch.rand(n, generator=generator) * 2 * torch.pi
    return torch.stack([ang.cos(), ang.sin()], dim=1) + 0.05 * torch.randn(n, 2, generator=generator)


def make():
    return reference_models.user_model(Model(_seeded(TimeMLP), VPSchedule.linear(), "eps"), (2,), data=ring,
                                       name="toy")


def make_image():
    return reference_models.user_model(Model(_seeded(TinyConv), VPSchedule.linear(), "eps"), (1, 8, 8))
