"""Sample-quality metrics, pure functions: sliced Wasserstein, MMD, and FID/KID through torch-fidelity.

x and y are (N, ...) tensors, flattened to (N, D). FID (Heusel et al. 2017) and KID (Binkowski et
al. 2018) use torch-fidelity's feature extractors and formulas: for 1x8x8 digits the penultimate
features of the digit classifier (reference_models.features), for 3x32x32 images Inception-v3.
"""
from __future__ import annotations

import pathlib

import torch

_F64 = torch.float64


def _flat(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim < 1 or x.shape[0] < 2:
        raise ValueError(f"{name} must be a tensor of at least 2 samples shaped (N, ...)")
    x = x.detach().reshape(x.shape[0], -1).to("cpu", _F64)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return x


def _quantiles(v: torch.Tensor, k: int) -> torch.Tensor:
    """Empirical quantile function of each column of sorted `v` (N, P) at levels (i + 1/2) / k."""
    n = v.shape[0]
    if n == k:
        return v
    pos = ((torch.arange(k, dtype=_F64) + 0.5) * n / k - 0.5).clamp(0, n - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=n - 1)
    w = (pos - lo)[:, None]
    return v[lo] * (1 - w) + v[hi] * w


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, n_projections: int = 256,
                       generator: torch.Generator | None = None) -> float:
    """Sliced 2-Wasserstein distance: sqrt of the mean over random unit directions of W2^2 of the projections.

    (Rabin et al. 2011; Bonneel et al. 2015.) Directions come from `generator` (seed 0 when None).
    """
    x, y = _flat(x, "x"), _flat(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y have different dimensions: {x.shape[1]} and {y.shape[1]}")
    if n_projections < 1:
        raise ValueError(f"n_projections must be positive, got {n_projections}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    dirs = torch.randn(x.shape[1], n_projections, generator=gen, dtype=_F64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    k = max(len(x), len(y))
    px = _quantiles(torch.sort(x @ dirs, dim=0).values, k)
    py = _quantiles(torch.sort(y @ dirs, dim=0).values, k)
    return float(torch.sqrt(((px - py) ** 2).mean()))


def mmd(x: torch.Tensor, y: torch.Tensor, scales=(0.1, 0.3, 1.0, 3.0), block: int = 2048) -> float:
    """Unbiased squared maximum mean discrepancy (Gretton et al. 2012) with a sum of Gaussian kernels.

    Bandwidths are `scales` times the spread of y, s^2 = E||y - mean(y)||^2, so the kernel depends
    on the reference data only and values are comparable across sample sets.
    """
    x, y = _flat(x, "x"), _flat(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y have different dimensions: {x.shape[1]} and {y.shape[1]}")
    spread2 = float(((y - y.mean(0)) ** 2).sum(1).mean())
    inv = [1.0 / (2.0 * s * s * max(spread2, 1e-300)) for s in scales]

    def ksum(a: torch.Tensor, b: torch.Tensor, same: bool) -> float:
        total, b2 = 0.0, (b * b).sum(1)
        for i in range(0, len(a), block):
            ai = a[i:i + block]
            d2 = ((ai * ai).sum(1)[:, None] + b2[None] - 2.0 * ai @ b.T).clamp_min(0)
            kern = sum(torch.exp(-c * d2) for c in inv)
            if same:  # drop the diagonal k(a_i, a_i) for the unbiased estimate
                idx = torch.arange(len(ai))
                kern[idx, i + idx] = 0.0
            total += float(kern.sum())
        return total

    n, m = len(x), len(y)
    return ksum(x, x, True) / (n * (n - 1)) + ksum(y, y, True) / (m * (m - 1)) - 2.0 * ksum(x, y, False) / (n * m)


INCEPTION_WEIGHTS_ENV = "SAMPLERBENCH_INCEPTION_WEIGHTS"


class _Images(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor):
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


def _extractor_for(shape: tuple[int, ...], cache_dir, inception_weights) -> tuple[str, str | None, str, callable]:
    """(torch-fidelity extractor name, weights path, cache tag, input conversion) for images of `shape`."""
    if shape == (1, 8, 8):
        from reference_models import features

        net_path = features.classifier_path(cache_dir)
        features.load_classifier(cache_dir)  # trains and caches it on first use
        name = features.register_with_torch_fidelity()
        return name, str(net_path), features.fingerprint(net_path), lambda x: x.float().clamp(-1, 1)
    if shape == (3, 32, 32):
        import os

        weights = inception_weights or os.environ.get(INCEPTION_WEIGHTS_ENV) or None
        tag = "inception-v3-compat" + (f"-{_sha(weights)}" if weights else "")
        to_uint8 = lambda x: ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # noqa: E731
        return "inception-v3-compat", weights, tag, to_uint8
    raise ValueError(f"no FID feature extractor for samples shaped {shape}; FID/KID are defined for (1, 8, 8) "
                     "digits (the digit classifier) and (3, 32, 32) RGB images (Inception-v3)")


def _sha(path) -> str:
    import hashlib

    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()[:12]


def _features(x: torch.Tensor, extractor, device: str) -> torch.Tensor:
    from torch_fidelity.utils import get_featuresdict_from_dataset

    feats = get_featuresdict_from_dataset(_Images(x), extractor, batch_size=256, cuda=str(device).startswith("cuda"),
                                          save_cpu_ram=True, verbose=False)
    return feats[extractor.features_list[0]]


def _cached_real_features(real: torch.Tensor, path: pathlib.Path, compute) -> torch.Tensor:
    """Features of `real`, read from `path` when it holds those of the same data (SHA-256), else computed and stored."""
    import hashlib
    import sys

    from safetensors import SafetensorError
    from safetensors.torch import load_file, save

    from reference_models.checkpoints import atomic_write_bytes

    digest = hashlib.sha256(real.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
    if path.is_file():
        try:
            stored = load_file(str(path))
            if bytes(stored["sha256"].tolist()).hex() == digest:
                return stored["features"]
            print(f"samplerbench: {path} holds features of other data; recomputing", file=sys.stderr)
        except (SafetensorError, KeyError, OSError, ValueError) as exc:
            print(f"samplerbench: cached features {path} are unreadable ({exc}); recomputing", file=sys.stderr)
    feats = compute()
    tensors = {"features": feats.contiguous(), "sha256": torch.tensor(list(bytes.fromhex(digest)), dtype=torch.uint8)}
    atomic_write_bytes(path, save(tensors))
    return feats


def fid_kid(samples: torch.Tensor, real: torch.Tensor, cache_dir=None, device: str = "cpu",
            real_cache_name: str | None = None, inception_weights=None, kid_subsets: int = 100,
            feature_layer: str | None = None) -> dict:
    """FID and KID of `samples` against `real` (both (N, C, H, W) in [-1, 1]) through torch-fidelity.

    1x8x8: penultimate features of the digit classifier; 3x32x32: Inception-v3 pool features
    (weights downloaded by torch-fidelity, or `inception_weights` / $SAMPLERBENCH_INCEPTION_WEIGHTS).
    With `real_cache_name` the real features are cached under <cache dir>/fidelity, keyed by the
    extractor's weights and checked against the real data's hash. KID: 100 subsets of
    min(1000, N) samples, torch-fidelity's cubic polynomial kernel and seed. `feature_layer`
    overrides the extractor's layer (Inception: '64', '192', '768', '2048'; digits: 'penultimate').
    """
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, kid_features_to_metric
    from torch_fidelity.utils import create_feature_extractor

    from reference_models.cache import cache_dir as resolve_cache

    for name, x in (("samples", samples), ("real", real)):
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or len(x) < 2:
            raise ValueError(f"{name} must be an image tensor shaped (N, C, H, W) with N >= 2")
    if samples.shape[1:] != real.shape[1:]:
        raise ValueError(f"samples {tuple(samples.shape[1:])} and real {tuple(real.shape[1:])} differ in shape")
    if not torch.isfinite(samples).all():
        raise ValueError("samples contain NaN or Inf")
    name, weights, tag, convert = _extractor_for(tuple(samples.shape[1:]), cache_dir, inception_weights)
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    provided = FEATURE_EXTRACTORS_REGISTRY[name].get_provided_features_list()
    layer = feature_layer or FEATURE_EXTRACTORS_REGISTRY[name].get_default_feature_layer_for_metric("fid")
    if layer not in provided:
        raise ValueError(f"unknown feature layer {layer!r} for {name}; valid: {', '.join(provided)}")
    tag = f"{tag}-{layer}"
    extractor = create_feature_extractor(name, [layer], cuda=str(device).startswith("cuda"), verbose=False,
                                         feature_extractor_weights_path=weights)
    f_samples = _features(convert(samples.detach().cpu()), extractor, device)
    real_in = convert(real.detach().cpu())
    if real_cache_name:
        path = resolve_cache(cache_dir) / "fidelity" / f"{real_cache_name}-{tag}.safetensors"
        f_real = _cached_real_features(real_in, path, lambda: _features(real_in, extractor, device))
    else:
        f_real = _features(real_in, extractor, device)
    f_samples, f_real = f_samples.double(), f_real.double()
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):  # small matrices: threads only contend (10x slower on a busy CPU)
        fid = fid_statistics_to_metric(fid_features_to_statistics(f_samples), fid_features_to_statistics(f_real),
                                       False)
        kid = kid_features_to_metric(f_samples, f_real, kid_subsets=kid_subsets, verbose=False,
                                     kid_subset_size=min(1000, len(f_samples), len(f_real)))
    return {"fid": float(fid[KEY_METRIC_FID]), "kid": float(kid[KEY_METRIC_KID_MEAN])}
