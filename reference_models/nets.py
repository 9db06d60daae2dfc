"""Networks of the trained reference models and the wrapper that makes them predict eps, x0 or v.

`Denoiser` follows EDM's preconditioning idea (Karras et al. 2022, Table 1): the network sees
c_in(t) x with c_in = 1 / sqrt(alpha^2 sigma_data^2 + sigma^2) (unit-variance input under VP and
VE alike), is conditioned on the noise level n(t) = -lambda(t) = log(sigma / alpha), and its raw
output r is scaled by c_out(t), the prior standard deviation of the chosen target:
eps -> 1, x0 -> sigma_data, v = alpha eps - sigma x0 -> sqrt(alpha^2 + sigma^2 sigma_data^2),
flow = alpha' x0 + sigma' eps -> sqrt(alpha'^2 sigma_data^2 + sigma'^2) (a constant on FlowSchedule).
Training minimises E || r - target / c_out ||^2, i.e. the target's MSE weighted by 1 / c_out^2:
the plain eps / x0 / v losses on VP with sigma_data = 1, the flow-matching loss on FlowSchedule.
The noise level n = -lambda is clamped to [-N_MAX, N_MAX], finite at FlowSchedule's t = 1 (lambda = -inf) and t = 0.
A class-conditional U-Net (`num_class_embeds` in its architecture) also takes labels (B,) int64; without labels
every network is called exactly as an unconditional one.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from solvers import Schedule

_F64 = torch.float64
TARGETS = ("eps", "x0", "v", "flow")
N_MAX = 20.0  # |noise level| fed to the network; VP and VE reference schedules stay within 12


class FourierNoiseEmbedding(nn.Module):
    """sin/cos of the noise level n at `n_freq` fixed frequencies, geometric from 1/4 to 16."""

    def __init__(self, n_freq: int = 16):
        super().__init__()
        self.register_buffer("freqs", torch.logspace(math.log10(0.25), math.log10(16.0), n_freq), persistent=False)

    def forward(self, n: torch.Tensor) -> torch.Tensor:
        arg = n[:, None] * self.freqs[None]
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


class ToyMLP(nn.Module):
    """Residual MLP for 2-D data with the noise embedding added to every block.

    The input is lifted by random Fourier features [x, sin 2 pi B x, cos 2 pi B x], B ~ N(0, fourier_scale^2)
    (Tancik et al. 2020): without them the MLP's spectral bias misses the angular structure of 8gaussians.
    """

    def __init__(self, dim: int = 2, hidden: int = 256, depth: int = 4, n_freq: int = 16, n_fourier: int = 0,
                 fourier_scale: float = 1.0):
        super().__init__()
        self.embed = FourierNoiseEmbedding(n_freq)
        self.register_buffer("fourier", fourier_scale * torch.randn(dim, n_fourier))
        self.inp = nn.Linear(dim + 2 * n_fourier, hidden)
        self.temb = nn.Sequential(nn.Linear(2 * n_freq, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
                                    for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        emb = self.temb(self.embed(n))
        if self.fourier.shape[1]:
            proj = 2 * math.pi * x @ self.fourier
            x = torch.cat([x, torch.sin(proj), torch.cos(proj)], dim=1)
        h = self.inp(x) + emb
        for block in self.blocks:
            h = h + block(h + emb)
        return self.out(h)


class UNet(nn.Module):
    """diffusers' UNet2DModel conditioned on the noise level, mapped to its timestep input as 62.5 (n + 8)."""

    def __init__(self, **config):
        super().__init__()
        from diffusers import UNet2DModel

        self.unet = UNet2DModel(**config)

    def forward(self, x: torch.Tensor, n: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is None:
            return self.unet(x, 62.5 * (n + 8.0)).sample
        return self.unet(x, 62.5 * (n + 8.0), class_labels=labels).sample


def build_net(arch: dict) -> nn.Module:
    """A network from its architecture description (as stored in checkpoint configs)."""
    arch = dict(arch)
    kind = arch.pop("type", None)
    if kind == "mlp":
        return ToyMLP(**arch)
    if kind == "unet2d":
        return UNet(**{k: tuple(v) if isinstance(v, list) else v for k, v in arch.items()})
    raise ValueError(f"unknown network type {kind!r}; valid: mlp, unet2d")


class Denoiser(nn.Module):
    """net(c_in x, n) scaled to predict `prediction` (eps, x0 or v) under `schedule`."""

    def __init__(self, net: nn.Module, schedule: Schedule, prediction: str, sigma_data: float):
        super().__init__()
        if prediction not in TARGETS:
            raise ValueError(f"trained models predict one of {', '.join(TARGETS)}; got {prediction!r}")
        self.net, self.schedule, self.prediction, self.sigma_data = net, schedule, prediction, float(sigma_data)

    def coefficients(self, t: torch.Tensor):
        """(alpha, sigma, c_in, c_out, n) at times t, computed in float64, shaped (B,)."""
        t64 = t.detach().to(device="cpu", dtype=_F64)
        a, s = self.schedule.alpha(t64), self.schedule.sigma(t64)
        sd2 = self.sigma_data**2
        c_in = torch.rsqrt(a**2 * sd2 + s**2)
        if self.prediction == "flow":
            c_out = torch.sqrt(self.schedule.d_alpha(t64) ** 2 * sd2 + self.schedule.d_sigma(t64) ** 2)
        else:
            c_out = {"eps": torch.ones_like(a), "x0": torch.full_like(a, self.sigma_data),
                     "v": torch.sqrt(a**2 + s**2 * sd2)}[self.prediction]
        return a, s, c_in, c_out, self.schedule.lambda_(t64).neg().clamp(-N_MAX, N_MAX)

    def raw(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The network's unscaled output r (the training loss is on r); `labels` (B,) for a conditional network."""
        _, _, c_in, _, n = self.coefficients(t)
        p = next(self.net.parameters())
        xin = x.to(p.dtype) * _bcast(c_in, x).to(device=x.device, dtype=p.dtype)
        n = n.to(device=x.device, dtype=p.dtype)
        if labels is None:
            return self.net(xin, n)
        return self.net(xin, n, labels.to(x.device))

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        _, _, _, c_out, _ = self.coefficients(t)
        out = self.raw(x, t, labels).to(_F64) * _bcast(c_out, x).to(x.device)
        return out.to(x.dtype)

    def target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Training target for r: (eps | x0 | v) / c_out."""
        a, s, _, c_out, _ = self.coefficients(t)
        a, s, c_out = (_bcast(c, x0).to(x0.device) for c in (a, s, c_out))
        if self.prediction == "flow":
            t64 = t.detach().to(device="cpu", dtype=_F64)
            da, ds = (_bcast(c, x0).to(x0.device) for c in (self.schedule.d_alpha(t64), self.schedule.d_sigma(t64)))
            tgt = da * x0.to(_F64) + ds * eps.to(_F64)
        else:
            tgt = {"eps": lambda: eps.to(_F64), "x0": lambda: x0.to(_F64),
                   "v": lambda: a * eps.to(_F64) - s * x0.to(_F64)}[self.prediction]()
        return (tgt / c_out).to(x0.dtype)


def _bcast(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return c.reshape(-1, *([1] * (x.ndim - 1)))
