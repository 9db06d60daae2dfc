"""scikit-learn's bundled 8x8 digits (1797 images, no download): a fixed train/test split in [-1, 1],
and `gmm-digits`, a Gaussian mixture fitted to the train split whose score is exact.
"""
from __future__ import annotations

import functools

import torch

from .gmm import GaussianMixture

SPLIT_SEED = 0
TEST_FRACTION = 0.25
SHAPE = (1, 8, 8)
GMM_COMPONENTS = 16
GMM_REG_COVAR = 1e-2  # added to every covariance's diagonal: eigenvalues >= 1e-2 on the [-1, 1] scale
GMM_SEED = 0


@functools.lru_cache(maxsize=1)
def _split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32)[:, None] / 8.0 - 1.0  # 0..16 -> [-1, 1]
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_test = round(TEST_FRACTION * len(images))
    test, train = perm[:n_test], perm[n_test:]
    return images[train], labels[train], images[test], labels[test]


def train_split() -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 1, 8, 8) in [-1, 1], labels) of the training split."""
    x, y, _, _ = _split()
    return x.clone(), y.clone()


def test_split() -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of the held-out split (fixed seed, a quarter of the digits)."""
    _, _, x, y = _split()
    return x.clone(), y.clone()


def draw(pool: torch.Tensor, n: int, generator=None) -> torch.Tensor:
    """n images from `pool` in random order: each appears floor(n / N) or ceil(n / N) times."""
    reps = -(-n // len(pool))
    idx = torch.cat([torch.randperm(len(pool), generator=generator) for _ in range(reps)])[:n]
    return pool[idx].clone()


def held_out(n: int, generator=None) -> torch.Tensor:
    """n held-out real digits (the test split), shaped (n, 1, 8, 8)."""
    return draw(_split()[2], n, generator)


def train_draw(n: int, generator=None) -> torch.Tensor:
    """n real digits from the training split, shaped (n, 1, 8, 8): the noise floor's second real sample."""
    return draw(_split()[0], n, generator)


@functools.lru_cache(maxsize=1)
def digits_mixture() -> GaussianMixture:
    """A 16-component full-covariance mixture fitted by scikit-learn (EM, k-means init, seed 0) to the train split."""
    from sklearn.mixture import GaussianMixture as SkGMM
    from threadpoolctl import threadpool_limits

    x, _ = train_split()
    flat = x.reshape(len(x), -1).double().numpy()
    with threadpool_limits(1):  # one BLAS thread: ~10x faster on a busy machine, and reproducible
        fit = SkGMM(n_components=GMM_COMPONENTS, covariance_type="full", reg_covar=GMM_REG_COVAR,
                    random_state=GMM_SEED, max_iter=200).fit(flat)
    return GaussianMixture(fit.means_, fit.covariances_, fit.weights_, shape=SHAPE)
