"""One Brownian path per sample, seeded per sample: the noise source for strong (pathwise) errors.

    paths = solvers.brownian_paths(seeds, x_T.shape[1:], t0=0.0, t1=1.0)   # one path per seed
    x0 = sample(model, x_T, "euler_maruyama", nfe=20, generator=paths)     # any stochastic solver

Sample i follows the path W_i(t), t in [t0, t1], a deterministic function of seeds[i] alone: the same
seed gives the same path (bit for bit) at 10, 20 or 4096 steps, in a batch of 1 or of 256. Samplers ask
for the normalised increment (W(t) - W(s)) / sqrt(|t - s|) over their step (`increment`, through
`solvers.noise.increment_normal`); other noise (a Langevin corrector's) comes from `randn`, fresh
per-sample draws from a call counter, reproducible for the same sequence of calls.

The path is Levy's construction on a dyadic tree over [t0, t1] (the Virtual Brownian Tree of Li et al.
2020; torchsde's BrownianInterval with a halfway tree): W(t0) = 0, W(t1) ~ N(0, t1 - t0), and the midpoint
of a node [a, b] is (W(a) + W(b)) / 2 + sqrt((b - a) / 4) Z_node. Below `depth` levels, a time inside a
leaf [a, b] is the Brownian bridge (linear part plus sqrt((u - a)(b - u) / (b - a)) Z_leaf). The joint law
of the queried values is exact as long as no two queried times share a leaf, i.e. lie within
(t1 - t0) / 2^depth of each other (default depth 16: 1.5e-5 of the interval); closer queries reuse the leaf's
draw and are approximate. Every Z is a counter-based hash of (sample seed, node) through Box-Muller
(solvers.counter: splitmix64, vectorised over the batch, no per-sample generator loop). The nodes of the last
descent are kept, so a sweep down a grid draws only the levels below where its neighbours' descents part
(about depth - log2(steps) + 1 node draws per step).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .counter import CHUNK, GOLDEN, CounterNormals, mix, mix_int, signed

DEPTH = 16  # levels of the dyadic tree: leaves of (t1 - t0) / 65536
_FRESH = 0x2545F4914F6CDD1D  # salt of the fresh-draw stream
AHEAD = 4  # fresh draws computed per call, at first; small draws more as they are used (see SeededNoise)

class SeededNoise:
    """Fresh standard normals per sample, a counter-based hash of (seed, draw): the vectorised form of one generator per
    sample (no Python loop over the batch). Pass as `generator=`; build it with `seeded_noise`. No Brownian path:
    `increment` is a fresh draw too. Draws are computed AHEAD (4) at a time; where they are small (a 2-D batch of
    256 is 512 normals, less work than a call's ~50 us of overhead) a quarter of a CHUNK of hashes at first, then as
    many as were used so far, up to one CHUNK or 64 draws: a short run computes at most a quarter-CHUNK more than it
    uses, a long one a few calls in all.
    """

    def __init__(self, seeds: Sequence[int], shape, *, dtype=torch.float64, device="cpu"):
        seeds = [int(s) for s in seeds]
        if not seeds:
            raise ValueError("seeded_noise needs at least one seed (one per sample)")
        self.seeds, self.shape, self.dtype, self.device = seeds, tuple(int(n) for n in shape), dtype, torch.device(device)
        self.size = math.prod(self.shape)
        keys = mix(torch.tensor([signed(s) for s in seeds], dtype=torch.int64))
        self._normals = CounterNormals(keys, (self.size + 1) // 2, self.device)
        self._per_call = max(AHEAD, min(64, CHUNK // (len(seeds) * ((self.size + 1) // 2))))
        self._fresh = 0  # fresh draws so far
        self._ahead: list[torch.Tensor] = []  # the next fresh draws, drawn in one call

    def __len__(self) -> int:
        return len(self.seeds)

    def _normal(self, node: int) -> torch.Tensor:
        """Z of `node` for every sample: (B, *shape) standard normals, a hash of (seed, node) (solvers.counter)."""
        return self._normals_of([node])[0]

    def _normals_of(self, nodes) -> list[torch.Tensor]:
        """[Z of each node], drawn in one call."""
        z = self._normals.draw([mix_int(n) for n in nodes])
        if z.shape[-1] != self.size:  # an odd size: the last hash's sine is not used
            z = z[..., :self.size]
        return list(z.reshape(len(nodes), len(self.seeds), *self.shape).to(self.dtype).unbind(0))

    def randn(self) -> torch.Tensor:
        """Fresh standard normals (B, *shape), one draw per call: noise that is not a Brownian increment."""
        if not self._ahead:  # several draws at once: draw k is a hash of k, whenever it is computed
            k = max(AHEAD, self._per_call // 4, min(self._per_call, self._fresh))
            self._ahead = self._normals_of([signed(_FRESH + (self._fresh + j) * GOLDEN) for j in range(k, 0, -1)])
        self._fresh += 1
        return self._ahead.pop()

    def increment(self, s: float, t: float) -> torch.Tensor:
        """A fresh draw (this source follows no path)."""
        return self.randn()

    def check_batch(self, shape) -> None:
        """A one-line ValueError unless `shape` is a batch of len(seeds) samples of this source's shape."""
        shape = tuple(shape)
        if not shape or shape[0] != len(self.seeds) or shape[1:] != self.shape:
            raise ValueError(f"{type(self).__name__} for {len(self.seeds)} samples of shape {self.shape} cannot serve a "
                             f"batch of shape {shape}: give one seed per sample and the sample shape")


class BrownianPaths(SeededNoise):
    """Brownian paths W_i(t) on [t0, t1], one per seed, each of `shape`; pass as `generator=` to `sample`.

    Build it with `brownian_paths`. `value(t)` is W(t) (B, *shape); `increment(s, t)` is (W(t) - W(s)) /
    sqrt(|t - s|), a standard normal per entry; `randn()` is a fresh standard normal per entry.
    """

    def __init__(self, seeds: Sequence[int], shape, t0: float = 0.0, t1: float = 1.0, *, depth: int = DEPTH,
                 dtype=torch.float64, device="cpu"):
        seeds = list(seeds)
        if not seeds:
            raise ValueError("brownian_paths needs at least one seed (one per sample)")
        super().__init__(seeds, shape, dtype=dtype, device=device)
        t0, t1 = float(t0), float(t1)
        if not (math.isfinite(t0) and math.isfinite(t1) and t0 < t1):
            raise ValueError(f"brownian_paths needs finite t0 < t1, got t0={t0!r}, t1={t1!r}")
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= 48:
            raise ValueError(f"depth must be an integer in [1, 48], got {depth!r}")
        self.t0, self.t1, self.depth = t0, t1, depth
        self._leaf = (t1 - t0) / 2 ** depth  # a leaf's width in time
        top = self._normal(0) * math.sqrt(t1 - t0)
        self._stack = [(0, 1 << depth, torch.zeros_like(top), top, 1)]  # the last descent: (lo, hi, W(lo), W(hi), id)
        self._points: dict[float, torch.Tensor] = {}  # the last few queried values

    def __repr__(self) -> str:
        return (f"BrownianPaths({len(self)} samples of shape {self.shape}, t in [{self.t0:g}, {self.t1:g}], "
                f"depth {self.depth})")

    # --- the path -----------------------------------------------------------------------------

    def _check(self, t: float) -> float:
        t = float(t)
        slack = 1e-12 * (self.t1 - self.t0)
        if not (self.t0 - slack <= t <= self.t1 + slack):
            raise ValueError(f"Brownian path queried at t={t!r}, outside its interval [{self.t0!r}, {self.t1!r}]; "
                             f"build brownian_paths with t0 <= t_end and t1 >= t_start")
        return min(max(t, self.t0), self.t1)

    def value(self, t: float) -> torch.Tensor:
        """W(t) for every sample, (B, *shape); W(t0) = 0."""
        t = self._check(t)
        if t in self._points:
            return self._points[t]
        w = self._descend((t - self.t0) / self._leaf)
        if len(self._points) >= 4:
            self._points.pop(next(iter(self._points)))
        self._points[t] = w
        return w

    def _descend(self, x: float) -> torch.Tensor:
        """W at x (in leaf units, 0 <= x <= 2^depth): resume the last descent from its deepest node holding x."""
        stack = self._stack
        while len(stack) > 1 and not stack[-1][0] <= x <= stack[-1][1]:
            stack.pop()
        lo, hi, node = stack[-1][0], stack[-1][1], stack[-1][4]
        nodes = []  # the nodes this descent draws, found first so that one call draws them all
        while x != lo and x != hi:
            nodes.append(node)
            if hi - lo == 1:
                break
            mid = (lo + hi) // 2
            lo, hi, node = (lo, mid, 2 * node) if x < mid else (mid, hi, 2 * node + 1)
        zs = iter(self._normals_of(nodes) if nodes else ())
        while True:
            lo, hi, w_lo, w_hi, node = stack[-1]
            if x == lo:
                return w_lo
            if x == hi:
                return w_hi
            if hi - lo == 1:  # inside a leaf: the Brownian bridge, with the leaf's own draw
                frac = x - lo
                return torch.lerp(w_lo, w_hi, frac) + math.sqrt(frac * (1.0 - frac) * self._leaf) * next(zs)
            mid = (lo + hi) // 2
            w_mid = (w_lo + w_hi).mul_(0.5).add_(next(zs), alpha=math.sqrt((hi - lo) * self._leaf / 4.0))
            stack.append((lo, mid, w_lo, w_mid, 2 * node) if x < mid else (mid, hi, w_mid, w_hi, 2 * node + 1))

    def increment(self, s: float, t: float) -> torch.Tensor:
        """(W(t) - W(s)) / sqrt(|t - s|): standard normal, the noise of a step s -> t (either direction)."""
        s, t = self._check(s), self._check(t)
        if s == t:
            raise ValueError(f"a Brownian increment needs s != t, got s = t = {s!r}")
        return (self.value(t) - self.value(s)).div_(math.sqrt(abs(t - s)))


def brownian_paths(seeds: Sequence[int], shape, t0: float = 0.0, t1: float = 1.0, *, depth: int = DEPTH,
                   dtype=torch.float64, device="cpu") -> BrownianPaths:
    """One Brownian path on [t0, t1] per seed, each of `shape` (a sample's shape, without the batch dimension).

    Pass it as `generator=` to `solvers.sample` with a batch of len(seeds) samples and t0 <= t_end < t_start <= t1.
    Queries closer than (t1 - t0) / 2^depth are approximate (see the module docstring); dtype: the tree's arithmetic.
    """
    return BrownianPaths(seeds, shape, t0, t1, depth=depth, dtype=dtype, device=device)


def seeded_noise(seeds: Sequence[int], shape, *, dtype=torch.float64, device="cpu") -> SeededNoise:
    """Fresh per-sample noise from one seed per sample, vectorised (as `per_sample_generators`, without its loop)."""
    return SeededNoise(seeds, shape, dtype=dtype, device=device)
