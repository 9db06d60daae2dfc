"""Class-conditional trained models: fn(x, t, labels), with the null label giving the unconditional prediction.

One network trained with label dropout (`train.TrainSpec.label_dropout`) gives both predictions that
classifier-free guidance combines (Ho & Salimans 2022): eps_u = fn(x, t, null), eps_c = fn(x, t, y).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from .train import get_spec, load_trained

CondFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def check_labels(labels, n: int, null_label: int) -> torch.Tensor:
    """`labels` as a (n,) int64 tensor with values in 0..null_label, else ValueError saying what is wrong."""
    labels = torch.as_tensor(labels)
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"labels must be integers (int64), got dtype {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) for a batch of {n}, got {tuple(labels.shape)}")
    if n and (int(labels.min()) < 0 or int(labels.max()) > null_label):
        bad = labels[(labels < 0) | (labels > null_label)]
        raise ValueError(f"labels must lie in 0..{null_label} (classes 0..{null_label - 1}, {null_label} = "
                         f"unconditional); got {sorted(set(bad.tolist()))[:5]}")
    return labels.long()


def load_conditional(name: str = "digits-cond", schedule: str = "vp", prediction: str = "eps", cache_dir=None,
                     device="cpu", train: bool = True, progress: bool = True) -> tuple[CondFn, int, int, dict]:
    """(fn, null_label, classes, config) of a class-conditional trained model; fn(x, t, labels) runs under
    torch.inference_mode, labels (B,) int64 in 0..classes (label `classes` = unconditional). Trains it first if it is
    not cached and `train` is true."""
    spec = get_spec(name)
    if not spec.classes:
        raise ValueError(f"model {name!r} is not class-conditional")
    den, config = load_trained(name, schedule, prediction, cache_dir=cache_dir, device=device, train_missing=train,
                               progress=progress)
    null = spec.classes

    def fn(x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = check_labels(labels, len(x), null)
        with torch.inference_mode():
            return den(x, t, labels.to(x.device))

    fn.denoiser = den  # for fingerprints and inspection
    return fn, null, spec.classes, config
