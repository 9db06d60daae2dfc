"""The digit feature extractor for FID/KID: a small CNN classifier of the 8x8 digits, registered with torch-fidelity.

FID and KID need features that separate real images from poor samples; Inception-v3 is meaningless
at 8x8, so we use the penultimate layer (64 features) of a classifier trained on the digits' train
split (as FID on MNIST is usually computed with an MNIST classifier). It is trained from a seed in
seconds, cached like the models, and reaches >= 95% accuracy on the held-out split.
"""
from __future__ import annotations

import hashlib
import pathlib
import sys
import time

import torch
from torch import nn

from . import cache, checkpoints, digits
from .threads import torch_threads

EXTRACTOR_NAME = "samplerbench-digits-cnn"
FEATURES = ("penultimate", "logits")
ARCH = {"type": "digit-cnn", "channels": [16, 32, 32], "features": 64, "classes": 10}
TRAIN = {"seed": 0, "epochs": 15, "batch_size": 64, "lr": 3e-3}
MIN_ACCURACY = 0.95


class DigitCNN(nn.Module):
    """conv(16)-conv(32)-pool-conv(32)-pool-fc(64)-fc(10), ReLU; input (B, 1, 8, 8) in [-1, 1]."""

    def __init__(self, channels=(16, 32, 32), features: int = 64, classes: int = 10, **_):
        super().__init__()
        c1, c2, c3 = channels
        self.body = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(4 * c3, features), nn.ReLU())
        self.head = nn.Linear(features, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def classifier_path(cache_dir=None) -> pathlib.Path:
    return cache.cache_dir(cache_dir) / "classifier" / "digits-cnn.safetensors"


def _shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random translations by -1, 0 or +1 pixel per axis (zero padding is the background value -1)."""
    pad = torch.nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)
    dx, dy = torch.randint(0, 3, (2, len(x)), generator=generator)
    rows = torch.arange(8)[None, :] + dy[:, None]
    cols = torch.arange(8)[None, :] + dx[:, None]
    return pad[torch.arange(len(x))[:, None, None], 0, rows[:, :, None], cols[:, None, :]][:, None]


@torch.no_grad()
def accuracy(net: DigitCNN, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((net(x).argmax(1) == y).double().mean())


def train_classifier(cache_dir=None, epochs: int | None = None, seed: int | None = None, progress: bool = True,
                     out_path=None) -> pathlib.Path:
    """Train the digit CNN (Adam, random 1-pixel shifts, one CPU thread: deterministic) and cache it."""
    epochs = TRAIN["epochs"] if epochs is None else int(epochs)
    seed = TRAIN["seed"] if seed is None else int(seed)
    with torch_threads(1):
        start, cpu_start = time.perf_counter(), time.process_time()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = DigitCNN(**ARCH)
        gen = torch.Generator().manual_seed(seed)
        x, y = digits.train_split()
        opt = torch.optim.Adam(net.parameters(), lr=TRAIN["lr"])
        bs, n_batches = TRAIN["batch_size"], -(-len(x) // TRAIN["batch_size"])
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, TRAIN["lr"], total_steps=max(1, epochs * n_batches))
        epochs_it = range(epochs)
        if progress:
            from tqdm.auto import tqdm

            epochs_it = tqdm(epochs_it, desc="train digit classifier", file=sys.stderr)
        for _ in epochs_it:
            perm = torch.randperm(len(x), generator=gen)
            for i in range(n_batches):
                idx = perm[i * bs:(i + 1) * bs]
                loss = nn.functional.cross_entropy(net(_shift(x[idx], gen)), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        net.eval()
        xt, yt = digits.test_split()
        config = {"name": "digits-cnn", "architecture": ARCH, "train": {**TRAIN, "seed": seed, "epochs": epochs},
                  "test_accuracy": accuracy(net, xt, yt), "train_accuracy": accuracy(net, x, y),
                  "train_time_s": round(time.perf_counter() - start, 2),
                  "train_cpu_s": round(time.process_time() - cpu_start, 2), "versions": {"torch": torch.__version__}}
    return checkpoints.save_checkpoint(out_path or classifier_path(cache_dir), net.state_dict(), config)


def load_classifier(cache_dir=None, train: bool = True, progress: bool = True, path=None) -> tuple[DigitCNN, dict]:
    """The cached digit CNN (eval mode) and its config; trains it first if missing and `train`."""
    path = pathlib.Path(path) if path is not None else classifier_path(cache_dir)
    if not path.exists():
        if not train:
            raise FileNotFoundError(f"the digit classifier is not trained yet (no {path}); load it with train=True")
        print(f"samplerbench: training the digit classifier for FID into {path}", file=sys.stderr, flush=True)
        train_classifier(cache_dir, progress=progress, out_path=path)
    state, config = checkpoints.load_checkpoint(path, {"name": "digits-cnn", "architecture": ARCH})
    net = DigitCNN(**ARCH)
    checkpoints.load_state_into(net, state, path)
    return net.eval().requires_grad_(False), config


def fingerprint(path) -> str:
    """First 12 hex digits of the SHA-256 of a weights file: names cached statistics of these features."""
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()[:12]


def register_with_torch_fidelity() -> str:
    """Register the digit CNN as torch-fidelity feature extractor `EXTRACTOR_NAME` (once); returns the name."""
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    if EXTRACTOR_NAME in FEATURE_EXTRACTORS_REGISTRY:
        return EXTRACTOR_NAME

    class DigitFeatureExtractor(FeatureExtractorBase):
        """Penultimate features / logits of the digit CNN; input (B, 1, 8, 8) floats in [-1, 1] or uint8."""

        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            self.cnn, _ = load_classifier(train=False, path=feature_extractor_weights_path)

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
            return torch.zeros(1, 1, 8, 8)

        def forward(self, x):
            if x.ndim != 4 or tuple(x.shape[1:]) != (1, 8, 8):
                raise ValueError(f"the digit feature extractor takes (B, 1, 8, 8) images, got {tuple(x.shape)}")
            x = x.float() / 127.5 - 1.0 if x.dtype == torch.uint8 else x.float()
            feats = self.cnn.features(x)
            out = {"penultimate": feats, "logits": self.cnn.head(feats)}
            return tuple(out[k] for k in self.features_list)

    register_feature_extractor(EXTRACTOR_NAME, DigitFeatureExtractor)
    return EXTRACTOR_NAME
