"""Gaussian noise from explicit generators.

`generator` may be None (torch's global generator), one `torch.Generator`, a sequence of
generators, one per sample along the first dimension, or `solvers.brownian_paths(seeds, shape, t0, t1)`:
one Brownian path per sample, whose increments `increment_normal` returns (strong errors need it), or
`solvers.seeded_noise(seeds, shape)`: fresh draws per sample as per-sample generators give, vectorised. With one generator or path per sample a sample
does not depend on the batch it was drawn in (EDM draws every image from its own seed).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .brownian import SeededNoise


def per_sample_generators(seeds: Sequence[int], device="cpu") -> list[torch.Generator]:
    """One generator per sample, seeded with `seeds[i]`."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def randn(shape, generator=None, dtype=torch.float32, device="cpu") -> torch.Tensor:
    shape = tuple(shape)
    if isinstance(generator, SeededNoise):
        generator.check_batch(shape)
        return generator.randn().to(dtype=dtype, device=device)
    if generator is None or isinstance(generator, torch.Generator):
        gen_device = generator.device if generator is not None else device
        z = torch.randn(shape, generator=generator, dtype=dtype, device=gen_device)
        return z.to(device)
    gens = list(generator)
    if not shape or len(gens) != shape[0]:
        raise ValueError(f"got {len(gens)} per-sample generators for a batch of shape {shape}")
    rows = [torch.randn(shape[1:], generator=g, dtype=dtype, device=g.device) for g in gens]
    return torch.stack(rows).to(device)


def randn_like(x: torch.Tensor, generator=None) -> torch.Tensor:
    return randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def increment_normal(x: torch.Tensor, s: float, t: float, generator=None) -> torch.Tensor:
    """The standard normal a step s -> t draws where its noise is a Brownian increment: (W(t) - W(s)) / sqrt(|t - s|).

    With `solvers.brownian_paths(...)` it is the increment of each sample's path over [t, s]; with a torch.Generator,
    per-sample generators or None it is a fresh draw, as randn_like. Samplers call this (not randn_like) for the
    noise of the SDE's Brownian motion over their step.
    """
    if isinstance(generator, SeededNoise):
        generator.check_batch(x.shape)
        return generator.increment(s, t).to(dtype=x.dtype, device=x.device)
    return randn_like(x, generator)
