"""scikit-learn's bundled 8x8 digits (1797 images, no download): a fixed train/test split in [-1, 1],
and `gmm-digits`, a class-conditional Gaussian mixture fitted to the train split whose score is exact.
"""
from __future__ import annotations

import functools

import torch

from .gmm import GaussianMixture

SPLIT_SEED = 0
TEST_FRACTION = 0.25
SHAPE = (1, 8, 8)
# Components per digit class. Held-out log-likelihood per dimension (test split, nats; same reg_covar and seed):
# the former single 16-component fit 0.2216; per class 1: 0.2212, 2: 0.1993 (seeds 1, 2: 0.1996, 0.2053), 3: 0.1385.
# 2 keeps each p(x | c) a mixture (a single Gaussian per class would make the conditional field linear) at a cost of
# 0.02 nats per dimension; 3 overfits (about 135 training images per class for 2080 covariance parameters).
GMM_PER_CLASS = 2
GMM_CLASSES = 10
GMM_COMPONENTS = GMM_PER_CLASS * GMM_CLASSES
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
    """Per digit class, a GMM_PER_CLASS-component full-covariance mixture fitted by scikit-learn (EM, k-means init,
    seed 0) to that class's train-split images; weight = class frequency x within-class weight, class = the digit."""
    from sklearn.mixture import GaussianMixture as SkGMM
    from threadpoolctl import threadpool_limits

    x, y = train_split()
    flat = x.reshape(len(x), -1).double().numpy()
    means, covs, weights, classes = [], [], [], []
    with threadpool_limits(1):  # one BLAS thread: ~10x faster on a busy machine, and reproducible
        for c in range(GMM_CLASSES):
            mine = (y == c).numpy()
            fit = SkGMM(n_components=GMM_PER_CLASS, covariance_type="full", reg_covar=GMM_REG_COVAR,
                        random_state=GMM_SEED, max_iter=200).fit(flat[mine])
            means.append(torch.as_tensor(fit.means_))
            covs.append(torch.as_tensor(fit.covariances_))
            weights.append(mine.mean() * torch.as_tensor(fit.weights_))
            classes.append(torch.full((GMM_PER_CLASS,), c, dtype=torch.int64))
    return GaussianMixture(torch.cat(means), torch.cat(covs), torch.cat(weights), shape=SHAPE, classes=torch.cat(classes))
