"""CIFAR-10 and MNIST as uint8 image tensors (N, C, H, W), through torchvision's loaders (download=True).

Used for the `cifar10` and `mnist` training configurations and their held-out data. They need a
network the first time; the data go under <cache dir>/datasets unless a root is given.
"""
from __future__ import annotations

import numpy as np
import torch

from .cache import cache_dir


def default_root(root=None):
    return str(root) if root is not None else str(cache_dir() / "datasets")


def to_uint8_nchw(dataset) -> torch.Tensor:
    """Images of a torchvision dataset as uint8 (N, C, H, W): CIFAR's `.data` is NHWC numpy, MNIST's NHW torch."""
    data = dataset.data
    data = torch.from_numpy(np.asarray(data)) if not isinstance(data, torch.Tensor) else data
    if data.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {data.dtype}")
    if data.ndim == 3:
        return data[:, None].contiguous()
    if data.ndim == 4 and data.shape[-1] in (1, 3):
        return data.permute(0, 3, 1, 2).contiguous()
    raise ValueError(f"unexpected image array shape {tuple(data.shape)}")


def cifar10(root=None, train: bool = True) -> torch.Tensor:
    """CIFAR-10 train (50k) or test (10k) images, uint8 (N, 3, 32, 32)."""
    import torchvision

    return to_uint8_nchw(torchvision.datasets.CIFAR10(default_root(root), train=train, download=True))


def mnist(root=None, train: bool = True) -> torch.Tensor:
    """MNIST train (60k) or test (10k) images, uint8 (N, 1, 28, 28)."""
    import torchvision

    return to_uint8_nchw(torchvision.datasets.MNIST(default_root(root), train=train, download=True))


LOADERS = {"cifar10": cifar10, "mnist": mnist}
