"""`python -m bench list` and `python -m bench train NAME`: the reference models and their training."""
from __future__ import annotations

import argparse
import sys


def add_list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", default=None,
                        help="model cache (default: $SAMPLERBENCH_CACHE, else ~/.cache/samplerbench)")


def main_list(args) -> int:
    from reference_models import DEFAULT_MODELS, cache_dir, list_models
    from reference_models.cache import checkpoint_path
    from reference_models.registry import describe

    print(f"model cache: {cache_dir(args.cache_dir)}")
    print(f"{'name':<20} {'kind':<8} {'shape':<12} {'metric':<7} {'default':<8} {'cached (vp, eps)':<17} description")
    for name in list_models():
        e = describe(name)
        cached = "exact" if e.kind == "exact" else ("yes" if checkpoint_path(name, "vp", "eps", args.cache_dir).exists()
                                                   else "no")
        shape = "x".join(map(str, e.shape))
        default = "yes" if name in DEFAULT_MODELS else ""
        print(f"{name:<20} {e.kind:<8} {shape:<12} {e.metric:<7} {default:<8} {cached:<17} {e.description}")
    return 0


def device(text: str) -> str:
    """A torch device that exists here: cpu, or cuda[:N] / mps when available (an argparse type)."""
    import torch

    n_cuda = torch.cuda.device_count()
    mps = getattr(torch.backends, "mps", None)
    has_mps = mps is not None and mps.is_available()
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        dev = None
    if dev is not None and ((dev.type == "cpu" and dev.index in (None, 0)) or (dev.type == "mps" and has_mps)
                            or (dev.type == "cuda" and (dev.index or 0) < n_cuda)):
        return text
    valid = ["cpu", *(["cuda", *(f"cuda:{i}" for i in range(n_cuda))] if n_cuda else []), *(["mps"] if has_mps else [])]
    raise argparse.ArgumentTypeError(f"unknown or unavailable device {text!r}; valid here: {', '.join(valid)}")


device.__name__ = "device"


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from bench.cli import MAX_SEED, integer, writable_dir
    from reference_models.nets import TARGETS
    from reference_models.registry import SCHEDULES
    from reference_models.train import SPECS

    parser.add_argument("name", choices=list(SPECS), help="the trained model to train")
    parser.add_argument("--steps", type=integer(1), default=None, help="optimiser steps (default: the model's own)")
    parser.add_argument("--seed", type=integer(0, MAX_SEED), default=0,
                        help="seed of initialisation, data order and noise")
    parser.add_argument("--prediction", choices=list(TARGETS), default="eps",
                        help="what the network predicts (flow: the velocity, eps - x0 on --schedule flow)")
    parser.add_argument("--schedule", choices=list(SCHEDULES), default="vp",
                        help="noise schedule (flow: rectified flow, trained with t ~ U(0, 1))")
    parser.add_argument("--batch-size", type=integer(1), default=None, help="batch size (default: the model's own)")
    parser.add_argument("--device", type=device, default="cpu", help="torch device: cpu, cuda, cuda:N, mps")
    parser.add_argument("--data-root", default=None, help="cifar10/mnist: torchvision data root "
                        "(default: <cache dir>/datasets)")
    parser.add_argument("--cache-dir", type=writable_dir, default=None,
                        help="model cache (default: $SAMPLERBENCH_CACHE, else ~/.cache/samplerbench)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main_train(args) -> int:
    import json

    from reference_models.checkpoints import CheckpointError, load_checkpoint
    from reference_models.train import train

    try:
        path = train(args.name, args.schedule, args.prediction, steps=args.steps, seed=args.seed,
                     cache_dir=args.cache_dir, device=args.device, progress=not args.no_progress,
                     batch_size=args.batch_size, data_root=args.data_root)
        _, config = load_checkpoint(path)
    except (CheckpointError, OSError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    keep = ("name", "schedule", "prediction", "steps", "seed", "batch_size", "final_loss", "train_time_s")
    print(json.dumps({k: config[k] for k in keep}))
    print(f"wrote {path}")
    return 0
