"""Counter-based standard normals: Z[i, node] = BoxMuller(splitmix64(key_i ^ mix(node) + lane * golden)).

Sample i's normals are a function of its key (its seed, mixed) and the node (the draw) alone, so a sample's noise does
not depend on its batch. One 64-bit hash gives two normals: its high 32 bits the radius (u1 = (hi + 1) / 2^32 in
(0, 1], so tails reach 6.66), its low 32 bits the angle. On the CPU the hash runs in numpy (uint64 with logical
shifts: 8 ufuncs, against torch's 11 int64 ops with masks, at half the time) and Box-Muller in numpy's SIMD float32
log, sqrt, cos, sin, in place, into the two halves of the output (no concatenation); other devices run the same hash
in torch (the same bits) and Box-Muller in torch (the same normals to float32 rounding).
"""
from __future__ import annotations

import math

import numpy as np
import torch

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's increment
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB  # splitmix64's multipliers
_U1, _ANGLE = 2.0 ** -32, 2.0 * math.pi * 2.0 ** -32  # a 32-bit word to (0, 1] and to [0, 2 pi)


def signed(v: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    v &= MASK
    return v - (1 << 64) if v >= 1 << 63 else v


def mix_int(z: int) -> int:
    """splitmix64's finaliser on one Python int, as an int64."""
    z &= MASK
    z ^= z >> 30
    z = (z * _M1) & MASK
    z ^= z >> 27
    z = (z * _M2) & MASK
    return signed(z ^ (z >> 31))


def mix(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 tensors (products wrap modulo 2^64; shifts made logical by masking)."""
    z = z ^ ((z >> 30) & ((1 << 34) - 1))
    z = z * signed(_M1)
    z = z ^ ((z >> 27) & ((1 << 37) - 1))
    z = z * signed(_M2)
    return z ^ ((z >> 31) & ((1 << 33) - 1))


def _mix_np_(z: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser in place on a uint64 array (numpy's shifts of unsigned words are logical)."""
    for shift, mult in ((30, _M1), (27, _M2), (31, None)):
        np.right_shift(z, np.uint64(shift), out=tmp)
        z ^= tmp
        if mult is not None:
            z *= np.uint64(mult)
    return z


class CounterNormals:
    """(B, 2 n) standard normals per node for B keys (int64 tensor of mixed seeds): `draw(node)`, node an int64.

    Computed in float32 whatever the caller's dtype (float64 paths cast them): numpy's float64 log, cos, sin are not
    vectorised and cost 4x (250 us for 16384 normals against 64 us); a float32 normal's relative rounding, 6e-8, is far
    below any Monte-Carlo error, and a float32 run draws its float64 twin's noise rounded.
    """

    def __init__(self, keys: torch.Tensor, n: int, device, numpy: bool | None = None):
        self.device = torch.device(device)
        self.numpy = self.device.type == "cpu" if numpy is None else numpy  # numpy=False: torch on the CPU (tests)
        self._keys = keys.to(self.device)
        self._lanes = torch.arange(n, dtype=torch.int64, device=self.device) * signed(GOLDEN)
        if self.numpy:  # numpy views and buffers, reused by every draw
            self._np_keys, self._np_lanes = self._keys.numpy().view(np.uint64), self._lanes.numpy().view(np.uint64)
            self._h, self._tmp = np.empty((len(keys), n), np.uint64), np.empty((len(keys), n), np.uint64)

    def draw(self, node: int) -> torch.Tensor:
        """Standard normals (B, 2 n), float32: [:, :n] radius x cos, [:, n:] radius x sin of n hashes."""
        return torch.from_numpy(self._draw_numpy(node)) if self.numpy else self._draw_torch(node)

    def _draw_numpy(self, node: int) -> np.ndarray:
        h, dt = self._h, np.float32
        np.add(self._np_lanes, (self._np_keys ^ np.uint64(node & MASK))[:, None], out=h)
        words = _mix_np_(h, self._tmp).view(np.uint32).reshape(*h.shape, 2)  # little-endian: low, high word
        r = words[..., 1].astype(dt)
        r += 1.0
        r *= _U1
        np.log(r, out=r)
        r *= -2.0
        np.sqrt(r, out=r)
        angle = words[..., 0].astype(dt)
        angle *= _ANGLE
        out = np.empty((h.shape[0], 2, h.shape[1]), dt)
        np.cos(angle, out=out[:, 0])
        np.sin(angle, out=out[:, 1])
        out *= r[:, None]
        return out.reshape(h.shape[0], -1)

    def _draw_torch(self, node: int) -> torch.Tensor:
        h = mix((self._keys ^ node)[:, None] + self._lanes)
        dt = torch.float32
        r = ((h >> 32) & 0xFFFFFFFF).to(dt).add_(1.0).mul_(_U1).log_().mul_(-2.0).sqrt_()
        angle = (h & 0xFFFFFFFF).to(dt).mul_(_ANGLE)
        out = torch.empty(h.shape[0], 2, h.shape[1], dtype=dt, device=self.device)
        torch.cos(angle, out=out[:, 0])
        torch.sin(angle, out=out[:, 1])
        return out.mul_(r[:, None]).reshape(h.shape[0], -1)
