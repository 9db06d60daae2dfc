"""Counter-based standard normals: Z[node, i] = BoxMuller(splitmix64((key_i + lane * golden) ^ mix(node))).

Sample i's normals are a function of its key (its seed, mixed) and the node (the draw) alone, so a sample's noise does
not depend on its batch. One 64-bit hash gives two normals: its high 32 bits the radius (u1 = (hi + 1) / 2^32 in
(0, 1], so tails reach 6.66), its low 32 bits the angle. On the CPU the hash runs in numpy (uint64 with logical
shifts: 8 ufuncs, against torch's 11 int64 ops with masks, at half the time) and Box-Muller in numpy's SIMD float32
log, sqrt, cos, sin, in place, into the two halves of the output (no concatenation); other devices run the same hash
in torch (the same bits) and Box-Muller in torch (the same normals to float32 rounding).
"""
from __future__ import annotations

import math
import sys

import numpy as np
import torch

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's increment
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB  # splitmix64's multipliers
_LOW, _HIGH = (0, 1) if sys.byteorder == "little" else (1, 0)  # a uint64's 32-bit words in a uint32 view
CHUNK = 16384  # hashes per numpy pass (2 nodes at 256 x 64: about 600 kB of buffers, in a core's L2)
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
    """Standard normals for B keys (int64 tensor of mixed seeds), n hashes (2 n normals) per key and node.

    Computed in float32 whatever the caller's dtype (float64 paths cast them): numpy's float64 log, cos, sin cost 4x
    (250 us for 16384 normals against 64 us, one thread of our AMD EPYC); a float32 normal's relative rounding, 6e-8, is
    far below any Monte-Carlo error, and a float32 run draws its float64 twin's noise rounded.
    """

    def __init__(self, keys: torch.Tensor, n: int, device, numpy: bool | None = None):
        self.device = torch.device(device)
        self.numpy = self.device.type == "cpu" if numpy is None else numpy  # numpy=False: torch on the CPU (tests)
        lanes = torch.arange(n, dtype=torch.int64, device=self.device) * signed(GOLDEN)
        self._base = keys.to(self.device)[:, None] + lanes  # splitmix64's states, one stream per key; a node XORs them
        if self.numpy:
            self._np_base = self._base.numpy().view(np.uint64)
            self._work: dict[int, tuple[np.ndarray, ...]] = {}

    def draw(self, nodes) -> torch.Tensor:
        """(len(nodes), B, 2 n) float32 standard normals of the nodes (int64 each): [..., :n] radius x cosine, [..., n:]
        radius x sine of the n hashes of (key, node). Several nodes in one call share the calls' overhead."""
        if not self.numpy:
            return self._draw_torch(nodes)
        nodes = np.array([m & MASK for m in nodes], dtype=np.uint64)
        b, n = self._np_base.shape
        out = np.empty((len(nodes), b, 2, n), np.float32)
        step = max(1, CHUNK // (b * n))  # nodes per pass: the passes' arrays stay in the core's cache
        for i in range(0, len(nodes), step):
            self._draw_numpy(nodes[i:i + step], out[i:i + step])
        return torch.from_numpy(out.reshape(len(nodes), b, 2 * n))

    def _draw_numpy(self, nodes: np.ndarray, out: np.ndarray) -> None:
        h, tmp, r, angle = self._buffers(len(nodes))
        np.bitwise_xor(self._np_base, nodes[:, None, None], out=h)
        words = _mix_np_(h, tmp).view(np.uint32).reshape(*h.shape, 2)
        np.add(words[..., _HIGH], 1.0, out=r, dtype=np.float32, casting="unsafe")
        r *= _U1
        np.log(r, out=r)
        r *= -2.0
        np.sqrt(r, out=r)
        np.multiply(words[..., _LOW], _ANGLE, out=angle, dtype=np.float32, casting="unsafe")
        np.cos(angle, out=out[:, :, 0])
        np.sin(angle, out=out[:, :, 1])
        out *= r[:, :, None]

    def _buffers(self, k: int) -> tuple[np.ndarray, ...]:
        """Work arrays for k nodes (hashes, their shifts, radii, angles), kept: no allocation churn per draw."""
        if k not in self._work:
            shape = (k, *self._np_base.shape)
            self._work[k] = (np.empty(shape, np.uint64), np.empty(shape, np.uint64), np.empty(shape, np.float32),
                             np.empty(shape, np.float32))
        return self._work[k]

    def _draw_torch(self, nodes) -> torch.Tensor:
        h = mix(self._base ^ torch.tensor(list(nodes), dtype=torch.int64, device=self.device)[:, None, None])
        r = ((h >> 32) & 0xFFFFFFFF).to(torch.float32).add_(1.0).mul_(_U1).log_().mul_(-2.0).sqrt_()
        angle = (h & 0xFFFFFFFF).to(torch.float32).mul_(_ANGLE)
        out = torch.empty(*h.shape[:2], 2, h.shape[2], dtype=torch.float32, device=self.device)
        torch.cos(angle, out=out[:, :, 0])
        torch.sin(angle, out=out[:, :, 1])
        return out.mul_(r[:, :, None]).reshape(*h.shape[:2], -1)
