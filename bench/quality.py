"""Sample-quality metrics, pure functions: sliced Wasserstein, MMD, and FID/KID through torch-fidelity.

x and y are (N, ...) tensors, flattened to (N, D). FID (Heusel et al. 2017) and KID (Binkowski et
al. 2018) use torch-fidelity's feature extractors and formulas: for 1x8x8 digits and 1x28x28 MNIST the
penultimate features of a classifier (reference_models.features), for 3-channel images of any size
Inception-v3. `extractor_problem` says, without downloading, whether an image shape has features;
`sample_features` / `real_statistics` compute them (the real ones cached by content hash), and
`Frechet.from_stats` scores against precomputed statistics.
"""
from __future__ import annotations

import functools
import math
import os
import pathlib

import numpy as np
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
    return float(torch.sqrt(((projected_quantiles(x @ dirs, k) - projected_quantiles(y @ dirs, k)) ** 2).mean()))


def projected_quantiles(proj: torch.Tensor, k: int) -> torch.Tensor:
    """The empirical quantile function of each column of the projections `proj` (N, P) at k levels."""
    return _quantiles(torch.sort(proj, dim=0).values, k)


def mmd_kernel(y: torch.Tensor, scales=(0.1, 0.3, 1.0, 3.0)):
    """The MMD's kernel: a sum of Gaussians with bandwidths `scales` times the spread of y,
    s^2 = E||y - mean(y)||^2, so the kernel depends on the reference data only and values are comparable
    across sample sets. Returns k(a, b) -> the (len(a), len(b)) Gram matrix (float64)."""
    spread2 = float(((y - y.mean(0)) ** 2).sum(1).mean())
    inv = [1.0 / (2.0 * s * s * max(spread2, 1e-300)) for s in scales]

    def k(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d2 = ((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2.0 * a @ b.T).clamp_min(0)
        return sum(torch.exp(-c * d2) for c in inv)

    return k


def mmd(x: torch.Tensor, y: torch.Tensor, scales=(0.1, 0.3, 1.0, 3.0), block: int = 2048) -> float:
    """Unbiased squared maximum mean discrepancy (Gretton et al. 2012) with `mmd_kernel`."""
    x, y = _flat(x, "x"), _flat(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y have different dimensions: {x.shape[1]} and {y.shape[1]}")
    kernel = mmd_kernel(y, scales)

    def ksum(a: torch.Tensor, b: torch.Tensor, same: bool) -> float:
        total = 0.0
        for i in range(0, len(a), block):
            kern = kernel(a[i:i + block], b)
            if same:  # drop the diagonal k(a_i, a_i) for the unbiased estimate
                idx = torch.arange(len(kern))
                kern[idx, i + idx] = 0.0
            total += float(kern.sum())
        return total

    n, m = len(x), len(y)
    return ksum(x, x, True) / (n * (n - 1)) + ksum(y, y, True) / (m * (m - 1)) - 2.0 * ksum(x, y, False) / (n * m)


from bench.inception import WEIGHTS_ENV as INCEPTION_WEIGHTS_ENV  # noqa: E402,F401  (re-exported)


class _Images(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor):
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


_CLASSIFIERS = {(1, 8, 8): "digits", (1, 28, 28): "mnist"}
SUPPORTED_SHAPES = ("(1, 8, 8) digits (the digit classifier), (1, 28, 28) MNIST images (the MNIST classifier) and "
                    "3-channel images (3, H, W) of any size (Inception-v3, which resizes them to 299x299)")


class NoFeatureExtractor(ValueError):
    """No FID/KID feature extractor for these samples (shape unsupported, or its weights or data are missing)."""


class MissingExtractorFiles(NoFeatureExtractor, FileNotFoundError):
    """The extractor exists for this shape but a file it needs (weights, training data) is not on disk."""


def extractor_problem(shape, cache_dir=None, inception_weights=None) -> str | None:
    """None when FID/KID features exist for samples of `shape`, else one line saying why not. Never downloads."""
    shape = tuple(int(s) for s in shape)
    if shape in _CLASSIFIERS:
        from reference_models import features

        problem = features.mnist_problem(cache_dir) if _CLASSIFIERS[shape] == "mnist" else None
        return None if problem is None else f"no FID/KID for {shape} images: {problem}"
    if len(shape) == 3 and shape[0] == 3 and min(shape) >= 1:
        from bench import inception

        try:
            inception.weights_path(inception_weights, download=False)
        except FileNotFoundError as exc:
            if inception_weights or os.environ.get(inception.WEIGHTS_ENV):
                return f"no FID/KID for {shape} images: {exc}"
            hub = inception.hub_weights_path()
            return (f"no FID/KID for {shape} images: Inception-v3's weights file {hub.name} is not on disk; "
                    f"download it from {inception.url()} into {hub.parent}/ (torch hub's checkpoints directory), "
                    f"or put it anywhere and set ${inception.WEIGHTS_ENV} to its path")
        return None
    return f"no FID feature extractor for samples shaped {shape}; FID/KID are defined for {SUPPORTED_SHAPES}"


def _extractor_for(shape: tuple[int, ...], cache_dir, inception_weights) -> tuple[str, str | None, str, callable]:
    """(torch-fidelity extractor name, weights path, cache tag, input conversion) for images of `shape`."""
    problem = extractor_problem(shape, cache_dir, inception_weights)
    if problem is not None:
        raise (NoFeatureExtractor if problem.startswith("no FID feature extractor") else MissingExtractorFiles)(problem)
    if shape in _CLASSIFIERS:
        from reference_models import features

        dataset = _CLASSIFIERS[shape]
        net_path = features.classifier_path(cache_dir, dataset)
        features.load_classifier(cache_dir, dataset=dataset)  # trains and caches it on first use
        name = features.register_with_torch_fidelity(dataset)
        return name, str(net_path), _sha(net_path), lambda x: x.float().clamp(-1, 1)
    # 3 x H x W: torch-fidelity's Inception-v3, its weights loaded without unpickling (bench.inception)
    from bench import inception

    weights = inception.weights_path(inception_weights, download=False)
    custom = weights != inception.hub_weights_path()
    tag = "inception-v3-compat" + (f"-{_sha(weights)}" if custom else "")
    to_uint8 = lambda x: ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # noqa: E731
    return inception.register_with_torch_fidelity(), str(weights), tag, to_uint8


def _stamp(path) -> tuple[str, int, int]:
    """(path, size, mtime in ns): names one version of a file for the memos below."""
    st = pathlib.Path(path).stat()
    return str(path), st.st_size, st.st_mtime_ns


def _sha(path) -> str:
    return _sha_of(_stamp(path))


@functools.lru_cache(maxsize=8)
def _sha_of(stamp) -> str:
    import hashlib

    return hashlib.sha256(pathlib.Path(stamp[0]).read_bytes()).hexdigest()[:12]


@functools.lru_cache(maxsize=4)
def _created(name: str, layer: str, cuda: bool, weights_stamp):
    """One torch-fidelity extractor per (name, layer, device, weights file version): a sweep reuses it per cell."""
    from torch_fidelity.utils import create_feature_extractor

    return create_feature_extractor(name, [layer], cuda=cuda, verbose=False,
                                    feature_extractor_weights_path=weights_stamp[0])


def _features(x: torch.Tensor, extractor, device: str) -> torch.Tensor:
    from torch_fidelity.utils import get_featuresdict_from_dataset

    feats = get_featuresdict_from_dataset(_Images(x), extractor, batch_size=256, cuda=str(device).startswith("cuda"),
                                          save_cpu_ram=True, verbose=False)
    return feats[extractor.features_list[0]]


def _digest(x: torch.Tensor) -> str:
    """SHA-256 of a tensor's content: dtype, shape and C-order bytes."""
    import hashlib

    x = x.detach().cpu().contiguous()
    h = hashlib.sha256(f"{x.dtype}|{tuple(x.shape)}|".encode())
    h.update(x.numpy().tobytes())
    return h.hexdigest()


def _cached_real_features(real: torch.Tensor, path: pathlib.Path, compute) -> tuple[torch.Tensor, bool]:
    """(features of `real`, cache hit): read from `path` when it holds those of the same data (SHA-256), else
    computed and stored (safetensors, atomically)."""
    import sys

    from safetensors import SafetensorError
    from safetensors.torch import load_file, save

    from reference_models.checkpoints import atomic_write_bytes

    digest = _digest(real)
    if path.is_file():
        try:
            stored = load_file(str(path))
            if bytes(stored["sha256"].tolist()).hex() == digest:
                return stored["features"], True
            print(f"samplerbench: {path} holds features of other data; recomputing", file=sys.stderr)
        except (SafetensorError, KeyError, OSError, ValueError) as exc:
            print(f"samplerbench: cached features {path} are unreadable ({exc}); recomputing", file=sys.stderr)
    feats = compute()
    tensors = {"features": feats.contiguous(), "sha256": torch.tensor(list(bytes.fromhex(digest)), dtype=torch.uint8)}
    atomic_write_bytes(path, save(tensors))
    return feats, False


def _extractor(shape, cache_dir, device, inception_weights, feature_layer):
    """(torch-fidelity extractor, input conversion, cache tag naming the weights and the layer) for `shape`."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    name, weights, tag, convert = _extractor_for(tuple(shape), cache_dir, inception_weights)
    provided = FEATURE_EXTRACTORS_REGISTRY[name].get_provided_features_list()
    layer = feature_layer or FEATURE_EXTRACTORS_REGISTRY[name].get_default_feature_layer_for_metric("fid")
    if layer not in provided:
        raise ValueError(f"unknown feature layer {layer!r} for {name}; valid: {', '.join(provided)}")
    extractor = _created(name, layer, str(device).startswith("cuda"), _stamp(weights))
    return extractor, convert, f"{tag}-{layer}"


def _check_images(x, name: str, least: int) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or len(x) < least:
        raise ValueError(f"{name} must be an image tensor shaped (N, C, H, W) with N >= {least}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or Inf")


def sample_features(x: torch.Tensor, cache_dir=None, device: str = "cpu", inception_weights=None,
                    feature_layer: str | None = None) -> torch.Tensor:
    """FID features (N, F) float64 of images `x` (N, C, H, W) in [-1, 1]; NoFeatureExtractor (a ValueError) when
    there is none for their shape (see `extractor_problem`)."""
    _check_images(x, "samples", 1)
    extractor, convert, _ = _extractor(x.shape[1:], cache_dir, device, inception_weights, feature_layer)
    return _features(convert(x.detach().cpu()), extractor, device).double()


def real_statistics(real, cache_dir=None, device: str = "cpu", inception_weights=None,
                    feature_layer: str | None = None) -> tuple[torch.Tensor, bool]:
    """(features (N, F) float64 of the real images, cache hit). `real`: images (N, C, H, W) in [-1, 1], or a
    RealData (all its images). Cached in <cache dir>/fidelity/real-<content hash>-<extractor tag>.safetensors,
    keyed by the SHA-256 of the extractor's input tensor and the extractor's weights and layer."""
    from reference_models.cache import cache_dir as resolve_cache
    from reference_models.data_files import RealData

    if isinstance(real, RealData):
        real = real.all()
    _check_images(real, "real", 2)
    extractor, convert, tag = _extractor(real.shape[1:], cache_dir, device, inception_weights, feature_layer)
    real_in = convert(real.detach().cpu())
    path = resolve_cache(cache_dir) / "fidelity" / f"real-{_digest(real_in)[:16]}-{tag}.safetensors"
    feats, hit = _cached_real_features(real_in, path, lambda: _features(real_in, extractor, device))
    return feats.double(), hit


def image_features(samples: torch.Tensor, real: torch.Tensor, cache_dir=None, device: str = "cpu",
                   real_cache_name: str | None = None, inception_weights=None,
                   feature_layer: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (float64) of `samples` and `real` (both (N, C, H, W) in [-1, 1]) under the FID extractor.

    1x8x8 / 1x28x28: penultimate features of the digit / MNIST classifier; 3xHxW: Inception-v3 pool
    features (weights in torch hub's cache, or `inception_weights` / $SAMPLERBENCH_INCEPTION_WEIGHTS;
    never downloaded here: `extractor_problem` says what is missing).
    With `real_cache_name` the real features are cached under <cache dir>/fidelity, keyed by the
    extractor's weights and checked against the real data's hash. `feature_layer` overrides the
    extractor's layer (Inception: '64', '192', '768', '2048'; digits: 'penultimate').
    """
    from reference_models.cache import cache_dir as resolve_cache

    for name, x in (("samples", samples), ("real", real)):
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or len(x) < 2:
            raise ValueError(f"{name} must be an image tensor shaped (N, C, H, W) with N >= 2")
    if samples.shape[1:] != real.shape[1:]:
        raise ValueError(f"samples {tuple(samples.shape[1:])} and real {tuple(real.shape[1:])} differ in shape")
    if not torch.isfinite(samples).all():
        raise ValueError("samples contain NaN or Inf")
    extractor, convert, tag = _extractor(samples.shape[1:], cache_dir, device, inception_weights, feature_layer)
    f_samples = _features(convert(samples.detach().cpu()), extractor, device)
    real_in = convert(real.detach().cpu())
    if real_cache_name:
        path = resolve_cache(cache_dir) / "fidelity" / f"{real_cache_name}-{tag}.safetensors"
        f_real = _cached_real_features(real_in, path, lambda: _features(real_in, extractor, device))[0]
    else:
        f_real = _features(real_in, extractor, device)
    return f_samples.double(), f_real.double()


class Frechet:
    """FID against fixed real features (Heusel et al. 2017): |mu - mu_r|^2 + tr(S + S_r - 2 (S_r^1/2 S S_r^1/2)^1/2).

    The trace of the matrix square root is the sum of the square roots of the eigenvalues of the
    symmetric S_r^1/2 S S_r^1/2 (equal to tr sqrtm(S S_r)), so a bootstrap replicate costs one
    symmetric eigendecomposition.
    """

    def __init__(self, real: torch.Tensor):
        r = real.double().cpu().numpy()
        self._set(r.mean(0), np.cov(r, rowvar=False))

    @classmethod
    def from_stats(cls, mu, sigma) -> "Frechet":
        """FID against precomputed real statistics: feature mean `mu` (F,) and covariance `sigma` (F, F)."""
        mu, sigma = np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
        if mu.ndim != 1 or len(mu) < 1 or sigma.shape != (len(mu), len(mu)):
            raise ValueError(f"FID statistics need mu shaped (F,) and sigma (F, F); got mu {mu.shape} and "
                             f"sigma {sigma.shape}")
        if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
            raise ValueError("the FID statistics contain NaN or Inf")
        self = cls.__new__(cls)
        self._set(mu, sigma)
        return self

    def _set(self, mu: np.ndarray, cov: np.ndarray) -> None:
        self.mu, self.cov = mu, np.atleast_2d(cov)
        w, v = np.linalg.eigh(self.cov)
        self.root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T

    @property
    def dim(self) -> int:
        return len(self.mu)

    def __call__(self, f: np.ndarray) -> float:
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise ValueError(f"the samples' features are shaped {tuple(f.shape)} but the real statistics have "
                             f"{self.dim} features; both must come from the same extractor and layer")
        mu, cov = f.mean(0), np.cov(f, rowvar=False)
        inner = np.linalg.eigvalsh(self.root @ cov @ self.root)
        value = ((mu - self.mu) ** 2).sum() + np.trace(cov) + np.trace(self.cov) - 2.0 * np.sqrt(np.clip(inner, 0, None)).sum()
        return float(max(value, 0.0))  # identical sets: 0 up to rounding, which must not make it negative


def u_statistic(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> tuple[float, float]:
    """Unbiased MMD^2 from Gram matrices (diagonals of kxx and kyy ignored) and its standard error from the
    U-statistic's first-order (Hoeffding) variance, 4 Var(h1(x))/n + 4 Var(h1(y))/m."""
    n, m = len(kxx), len(kyy)
    kxx, kyy = kxx.copy(), kyy.copy()
    np.fill_diagonal(kxx, 0.0)
    np.fill_diagonal(kyy, 0.0)
    value = kxx.sum() / (n * (n - 1)) + kyy.sum() / (m * (m - 1)) - 2.0 * kxy.mean()
    hx = kxx.sum(1) / (n - 1) - kxy.mean(1)
    hy = kyy.sum(1) / (m - 1) - kxy.mean(0)
    return float(value), math.sqrt(4.0 * hx.var(ddof=1) / n + 4.0 * hy.var(ddof=1) / m)


def kid_with_stderr(f: np.ndarray, real: np.ndarray) -> tuple[float, float]:
    """KID (Binkowski et al. 2018): unbiased MMD^2 with the kernel (a.b / d + 1)^3 over all samples, with its
    standard error (`u_statistic`)."""
    d = f.shape[1]
    return u_statistic(*((a @ b.T / d + 1.0) ** 3 for a, b in ((f, f), (real, real), (f, real))))


def fid_kid(samples: torch.Tensor, real: torch.Tensor, cache_dir=None, device: str = "cpu",
            real_cache_name: str | None = None, inception_weights=None, feature_layer: str | None = None) -> dict:
    """FID and KID of `samples` against `real` (both (N, C, H, W) in [-1, 1]); see `image_features`."""
    f, r = image_features(samples, real, cache_dir, device, real_cache_name, inception_weights, feature_layer)
    f, r = f.numpy(), r.numpy()
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):  # small matrices: threads only contend (10x slower on a busy CPU)
        return {"fid": Frechet(torch.from_numpy(r))(f), "kid": kid_with_stderr(f, r)[0]}
