"""Classifier feature extractors for FID/KID where Inception-v3 does not fit: 8x8 digits and 28x28 MNIST.

FID and KID need features that separate real images from poor samples; Inception-v3 is meaningless
at 8x8 and trained on colour photographs, so, as FID on MNIST is usually computed, we use the
penultimate layer of a small CNN classifier trained on the dataset's train split. One training path
serves both (`fit_classifier` on (images, labels) tensors): the digits classifier trains from
scikit-learn's bundled digits in seconds (>= 95% held-out accuracy); the MNIST one from MNIST files
already on disk (torchvision's layout, nothing is downloaded here) in a few CPU minutes (>= 98%).
Both are cached like the models and registered with torch-fidelity.
"""
from __future__ import annotations

import hashlib
import pathlib
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from . import cache, checkpoints, digits
from .threads import torch_threads

EXTRACTOR_NAME = "samplerbench-digits-cnn"
FEATURES = ("penultimate", "logits")
ARCH = {"type": "digit-cnn", "channels": [16, 32, 32], "features": 64, "classes": 10}
TRAIN = {"seed": 0, "epochs": 15, "batch_size": 64, "lr": 3e-3}
MIN_ACCURACY = 0.95
MNIST_ARCH = {"type": "image-cnn", "size": 28, "channels": [16, 32, 32], "features": 64, "classes": 10}
MNIST_TRAIN = {"seed": 0, "epochs": 3, "batch_size": 128, "lr": 3e-3}
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")


class ClassifierCNN(nn.Module):
    """conv(c1)-conv(c2)-pool-conv(c3)-pool-fc(features)-fc(classes), ReLU; input (B, 1, size, size) in [-1, 1]."""

    def __init__(self, channels=(16, 32, 32), features: int = 64, classes: int = 10, size: int = 8, **_):
        super().__init__()
        c1, c2, c3 = channels
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear((size // 4) ** 2 * c3, features), nn.ReLU())
        self.head = nn.Linear(features, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


DigitCNN = ClassifierCNN  # the 8x8 digits' network (its ARCH has no size: 8)


@dataclass(frozen=True)
class Classifier:
    """One dataset's classifier: its architecture, training settings and labelled (train, test) splits."""

    dataset: str
    extractor: str  # torch-fidelity name
    shape: tuple[int, int, int]
    arch: dict
    train: dict
    min_accuracy: float
    splits: Callable = field(repr=False)  # cache_dir -> (x_train, y_train, x_test, y_test), images in [-1, 1]

    @property
    def name(self) -> str:
        return f"{self.dataset}-cnn"


def mnist_roots(cache_dir=None) -> list[pathlib.Path]:
    """Where MNIST is looked for: <cache dir>/datasets, then the default data root (reference_models.datasets)."""
    from .datasets import default_root

    roots = [cache.cache_dir(cache_dir) / "datasets", pathlib.Path(default_root())]
    return list(dict.fromkeys(roots))


def _mnist_root(cache_dir=None) -> pathlib.Path | None:
    for root in mnist_roots(cache_dir):
        if all((root / "MNIST" / "raw" / f).is_file() for f in MNIST_FILES):
            return root
    return None


def mnist_problem(cache_dir=None) -> str | None:
    """None when the MNIST classifier is cached or MNIST is on disk to train it; else one line saying what is missing."""
    if classifier_path(cache_dir, "mnist").is_file() or _mnist_root(cache_dir) is not None:
        return None
    where = " or ".join(str(r / "MNIST" / "raw") for r in mnist_roots(cache_dir))
    return (f"the MNIST classifier for FID/KID needs MNIST, which is not on disk (no {', '.join(MNIST_FILES)} in "
            f"{where}); fetch it once with python -c \"import torchvision; torchvision.datasets.MNIST("
            f"'{mnist_roots(cache_dir)[0]}', download=True)\" on a machine with network access")


def _mnist_splits(cache_dir=None):
    import torchvision

    from .datasets import to_uint8_nchw

    root = _mnist_root(cache_dir)
    if root is None:
        raise FileNotFoundError(mnist_problem(cache_dir))
    out = []
    for train in (True, False):
        ds = torchvision.datasets.MNIST(str(root), train=train, download=False)
        out += [to_uint8_nchw(ds).float() / 127.5 - 1.0, ds.targets.long().clone()]
    return tuple(out)


def _digit_splits(cache_dir=None):
    return (*digits.train_split(), *digits.test_split())


CLASSIFIERS = {
    "digits": Classifier("digits", EXTRACTOR_NAME, digits.SHAPE, ARCH, TRAIN, MIN_ACCURACY, _digit_splits),
    "mnist": Classifier("mnist", "samplerbench-mnist-cnn", (1, 28, 28), MNIST_ARCH, MNIST_TRAIN, 0.98, _mnist_splits),
}


def _spec(dataset: str) -> Classifier:
    if dataset not in CLASSIFIERS:
        raise ValueError(f"unknown classifier dataset {dataset!r}; valid: {', '.join(CLASSIFIERS)}")
    return CLASSIFIERS[dataset]


def classifier_path(cache_dir=None, dataset: str = "digits") -> pathlib.Path:
    return cache.cache_dir(cache_dir) / "classifier" / f"{_spec(dataset).name}.safetensors"


def _shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random translations by -1, 0 or +1 pixel per axis (zero padding is the background value -1)."""
    h, w = x.shape[-2:]
    pad = torch.nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)
    dx, dy = torch.randint(0, 3, (2, len(x)), generator=generator)
    rows = torch.arange(h)[None, :] + dy[:, None]
    cols = torch.arange(w)[None, :] + dx[:, None]
    return pad[torch.arange(len(x))[:, None, None], 0, rows[:, :, None], cols[:, None, :]][:, None]


@torch.no_grad()
def accuracy(net: ClassifierCNN, x: torch.Tensor, y: torch.Tensor, batch: int = 2048) -> float:
    hits = sum(int((net(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return hits / len(x)


def fit_classifier(x: torch.Tensor, y: torch.Tensor, arch: dict, epochs: int, batch_size: int, lr: float,
                   seed: int = 0, progress: bool = False, desc: str = "train classifier") -> ClassifierCNN:
    """Train a ClassifierCNN on images `x` (N, 1, H, W) in [-1, 1] and labels `y` (N,): Adam with a one-cycle
    learning rate, random 1-pixel shifts, one CPU thread (deterministic for a seed). Returns it in eval mode."""
    if x.ndim != 4 or x.shape[1] != 1 or y.shape != (len(x),):
        raise ValueError(f"fit_classifier takes images (N, 1, H, W) and labels (N,), got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    with torch_threads(1):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = ClassifierCNN(**arch)
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        n_batches = -(-len(x) // batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=max(1, epochs * n_batches))
        epochs_it = range(epochs)
        if progress:
            from tqdm.auto import tqdm

            epochs_it = tqdm(epochs_it, desc=desc, file=sys.stderr)
        for _ in epochs_it:
            perm = torch.randperm(len(x), generator=gen)
            for i in range(n_batches):
                idx = perm[i * batch_size:(i + 1) * batch_size]
                loss = nn.functional.cross_entropy(net(_shift(x[idx], gen)), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    return net.eval()


def train_classifier(cache_dir=None, epochs: int | None = None, seed: int | None = None, progress: bool = True,
                     out_path=None, dataset: str = "digits") -> pathlib.Path:
    """Train the classifier of `dataset` (`fit_classifier` on its train split) and cache it with its accuracies."""
    spec = _spec(dataset)
    epochs = spec.train["epochs"] if epochs is None else int(epochs)
    seed = spec.train["seed"] if seed is None else int(seed)
    x, y, xt, yt = spec.splits(cache_dir)
    start, cpu_start = time.perf_counter(), time.process_time()
    net = fit_classifier(x, y, spec.arch, epochs, spec.train["batch_size"], spec.train["lr"], seed, progress,
                         desc=f"train {dataset} classifier")
    with torch_threads(1):
        config = {"name": spec.name, "architecture": spec.arch, "train": {**spec.train, "seed": seed, "epochs": epochs},
                  "test_accuracy": accuracy(net, xt, yt), "train_accuracy": accuracy(net, x, y),
                  "train_time_s": round(time.perf_counter() - start, 2),
                  "train_cpu_s": round(time.process_time() - cpu_start, 2), "versions": {"torch": torch.__version__}}
    return checkpoints.save_checkpoint(out_path or classifier_path(cache_dir, dataset), net.state_dict(), config)


def load_classifier(cache_dir=None, train: bool = True, progress: bool = True, path=None,
                    dataset: str = "digits") -> tuple[ClassifierCNN, dict]:
    """The cached classifier of `dataset` (eval mode) and its config; trains it first if missing and `train`."""
    spec = _spec(dataset)
    path = pathlib.Path(path) if path is not None else classifier_path(cache_dir, dataset)
    if not path.exists():
        if not train:
            what = "digit" if dataset == "digits" else dataset
            raise FileNotFoundError(f"the {what} classifier is not trained yet (no {path}); load it with train=True")
        print(f"samplerbench: training the {dataset} classifier for FID into {path}", file=sys.stderr, flush=True)
        with checkpoints.file_lock(path):
            if not path.exists():
                train_classifier(cache_dir, progress=progress, out_path=path, dataset=dataset)
    state, config = checkpoints.load_checkpoint(path, {"name": spec.name, "architecture": spec.arch})
    net = ClassifierCNN(**spec.arch)
    checkpoints.load_state_into(net, state, path)
    return net.eval().requires_grad_(False), config


def fingerprint(path) -> str:
    """First 12 hex digits of the SHA-256 of a weights file: names cached statistics of these features."""
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()[:12]


def register_with_torch_fidelity(dataset: str = "digits") -> str:
    """Register the classifier of `dataset` as a torch-fidelity feature extractor (once); returns its name."""
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    spec = _spec(dataset)
    if spec.extractor in FEATURE_EXTRACTORS_REGISTRY:
        return spec.extractor

    class ClassifierFeatureExtractor(FeatureExtractorBase):
        """Penultimate features / logits of the classifier; input (B, *shape) floats in [-1, 1] or uint8."""

        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            self.cnn, _ = load_classifier(train=False, path=feature_extractor_weights_path, dataset=dataset)

        @staticmethod
        def get_provided_features_list():
            return FEATURES

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return {"isc": "logits", "fid": "penultimate", "kid": "penultimate", "prc": "penultimate"}[metric]

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, *spec.shape)

        def forward(self, x):
            if x.ndim != 4 or tuple(x.shape[1:]) != spec.shape:
                raise ValueError(f"the {dataset} feature extractor takes (B, {', '.join(map(str, spec.shape))}) "
                                 f"images, got {tuple(x.shape)}")
            x = x.float() / 127.5 - 1.0 if x.dtype == torch.uint8 else x.float()
            feats = self.cnn.features(x)
            out = {"penultimate": feats, "logits": self.cnn.head(feats)}
            return tuple(out[k] for k in self.features_list)

    register_feature_extractor(spec.extractor, ClassifierFeatureExtractor)
    return spec.extractor


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k / n (95% for the default z); (0, 1) when n = 0."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    return max(0.0, centre - half), min(1.0, centre + half)


def digit_labeller(cache_dir=None, device="cpu") -> Callable[[torch.Tensor], torch.Tensor]:
    """digits (B, 1, 8, 8) in [-1, 1] (clamped to it) -> the digits classifier's label (B,) of each; the classifier is
    loaded once (trained first if it is not cached)."""
    net = load_classifier(cache_dir, progress=False)[0].to(device)

    def labels(x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != digits.SHAPE:
            raise ValueError(f"the digits classifier takes digits (B, 1, 8, 8), got {tuple(x.shape)}")
        with torch.no_grad():
            return net(x.detach().to(device=device, dtype=torch.float32).clamp(-1, 1)).argmax(1).cpu()
    return labels


def label_accuracy(x: torch.Tensor, labels: torch.Tensor, cache_dir=None, device="cpu") -> tuple[float, float, float]:
    """(accuracy, lo, hi): the fraction of digits `x` (B, 1, 8, 8) in [-1, 1] that the digits classifier assigns to
    their intended `labels` (B,) (digit_labeller), with its 95% Wilson interval."""
    if labels.shape != (len(x),):
        raise ValueError(f"label_accuracy takes digits (B, 1, 8, 8) and labels (B,), got {tuple(x.shape)} and "
                         f"{tuple(labels.shape)}")
    k = int((digit_labeller(cache_dir, device)(x) == labels.detach().cpu()).sum())
    return (k / len(x) if len(x) else float("nan"), *wilson_interval(k, len(x)))
