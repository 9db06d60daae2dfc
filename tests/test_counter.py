"""Quality of the counter-based normals (solvers.counter) behind seeded_noise and brownian_paths: 10^6 draws."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from solvers import brownian_paths, seeded_noise
from solvers.counter import CounterNormals, mix, mix_int, signed

N_SEEDS, WIDTH = 1000, 1000  # one draw: 10^6 normals


@pytest.fixture(scope="module")
def draws():
    """Two successive fresh draws (1000 seeds x 1000 entries each) and a draw of seeds 1..1000 (seed i's neighbour)."""
    a = seeded_noise(range(N_SEEDS), (WIDTH,), dtype=torch.float32)
    shifted = seeded_noise(range(1, N_SEEDS + 1), (WIDTH,), dtype=torch.float32)
    return a.randn().numpy(), a.randn().numpy(), shifted.randn().numpy()


def test_one_million_draws_are_standard_normal(draws):
    """Mean, variance, skewness, excess kurtosis within 5 standard errors; a KS test against N(0, 1) (p > 1e-3); the
    tails P(|z| > 3) and P(|z| > 4) within 5 binomial standard errors."""
    z = draws[0].ravel().astype(np.float64)
    n = z.size
    assert abs(z.mean()) < 5 / math.sqrt(n)
    assert abs(z.var() - 1) < 5 * math.sqrt(2 / n)
    assert abs(stats.skew(z)) < 5 * math.sqrt(6 / n)
    assert abs(stats.kurtosis(z)) < 5 * math.sqrt(24 / n)
    assert stats.kstest(z, "norm").pvalue > 1e-3
    for c in (3.0, 4.0):
        p = 2 * stats.norm.sf(c)
        assert abs((np.abs(z) > c).mean() - p) < 5 * math.sqrt(p / n), c


def test_neighbours_are_uncorrelated(draws):
    """|r| < 5 / sqrt(n) between neighbouring lanes, the two normals of one hash (and their squares: Box-Muller's
    pair is independent, not only uncorrelated), neighbouring seeds and successive draws of one seed."""
    a, b, shifted = draws
    half = WIDTH // 2  # lane j and lane j + half come from the same hash (cosine and sine)
    pairs = {
        "adjacent lanes": (a[:, :-1], a[:, 1:]),
        "one hash's pair": (a[:, :half], a[:, half:]),
        "one hash's pair, squared": (a[:, :half] ** 2, a[:, half:] ** 2),
        "adjacent seeds": (a[:-1], a[1:]),
        "successive draws": (a, b),
        "successive draws, squared": (a ** 2, b ** 2),
    }
    assert np.array_equal(a[1:], shifted[:-1])  # a seed's draw does not depend on its place in the batch
    for name, (x, y) in pairs.items():
        r = np.corrcoef(x.ravel(), y.ravel())[0, 1]
        assert abs(r) < 5 / math.sqrt(x.size), (name, r)


def test_adjacent_tree_nodes_are_uncorrelated():
    """The Brownian tree's node normals: nodes k and k + 1 (siblings and cousins), 2,000 seeds x 500 entries."""
    p = brownian_paths(range(2000), (500,), dtype=torch.float32)
    z = [p._normal(k).numpy().ravel() for k in range(1, 9)]
    for k in range(len(z) - 1):
        assert abs(np.corrcoef(z[k], z[k + 1])[0, 1]) < 5 / math.sqrt(z[k].size), k


def test_the_hash_is_splitmix64_and_numpy_and_torch_agree():
    """numpy's uint64 hash gives torch's int64 bits and the Python int's; the float32 normals agree to rounding, drawn
    one node or several at a time; an
    odd sample size drops the last sine; float64 noise is the float32 noise cast (a float32 run sees the same noise)."""
    keys = mix(torch.tensor([signed(s) for s in (0, 1, 2**63 + 5, 12345)], dtype=torch.int64))
    assert keys.tolist() == [mix_int(s) for s in (0, 1, 2**63 + 5, 12345)]
    fast, slow = CounterNormals(keys, 7, "cpu"), CounterNormals(keys, 7, "cpu", numpy=False)
    nodes = (0, 1, mix_int(99), -(2**63))
    many = fast.draw(nodes)
    assert torch.allclose(many, slow.draw(nodes), rtol=0, atol=2e-6)
    for node, z in zip(nodes, many):  # a node's normals do not depend on the nodes drawn with it
        assert torch.equal(fast.draw([node])[0], z)
    odd, even = seeded_noise([3, 4], (13,)), seeded_noise([3, 4], (14,))
    assert torch.equal(odd.randn(), even.randn()[:, :13])  # both 7 hashes: 13 entries drop the 7th sine
    z32, z64 = seeded_noise([8, 9], (2, 5), dtype=torch.float32), seeded_noise([8, 9], (2, 5), dtype=torch.float64)
    wide = z64.randn()
    assert wide.dtype == torch.float64 and torch.equal(z32.randn().double(), wide)
