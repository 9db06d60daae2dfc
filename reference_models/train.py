"""Training the reference models: one spec per name, one denoising loop (AdamW, EMA, tqdm), safe checkpoints.

The loss is the denoising loss of the chosen target (eps, x0, v or flow; Ho et al. 2020, Salimans &
Ho 2022, Lipman et al. 2023) in the scaled form of `nets.Denoiser`. Times are drawn uniformly in log-SNR
lambda on [lambda(T), lambda(t_end)], the variable the solvers step in (DPM-Solver, Lu et al. 2022), so
every noise level a sampler visits is trained equally; on FlowSchedule (lambda(T) = -inf) uniformly in t on
[0, 1), the flow-matching recipe (Liu et al. 2022, Lipman et al. 2023). Runs are deterministic on CPU for a seed.
A class-conditional spec (`classes` > 0) draws (images, labels) and replaces a `label_dropout` fraction of the labels
by the null label `classes`, so that one network gives both predictions of classifier-free guidance (Ho & Salimans
2022).
"""
from __future__ import annotations

import copy
import math
import operator
import pathlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from solvers.noise import randn

from . import cache, checkpoints, datasets, digits, toy2d
from .nets import TARGETS, Denoiser, build_net
from .threads import torch_threads

Batcher = Callable[[int, torch.Generator], torch.Tensor]  # (n, generator) -> n training points (and labels)


@dataclass(frozen=True)
class TrainSpec:
    name: str
    shape: tuple[int, ...]
    arch: dict
    sigma_data: float  # data standard deviation used by the preconditioning
    steps: int  # default number of optimiser steps
    batch_size: int
    lr: float
    ema_decay: float
    make_batcher: Callable[[str | None], Batcher] = field(repr=False)  # data_root -> batch drawer
    description: str = ""
    warmup: int = 100
    classes: int = 0  # > 0: class-conditional; the batcher returns (x, labels) and label `classes` is the null label
    label_dropout: float = 0.0  # fraction of training labels replaced by the null label


def _labelled_batcher(pool: torch.Tensor, labels: torch.Tensor) -> Batcher:
    """Draw (images, labels) with replacement from in-memory tensors."""

    def draw(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, len(pool), (n,), generator=generator)
        return pool[idx].float(), labels[idx]

    return draw


def drop_labels(labels: torch.Tensor, p: float, null_label: int, generator: torch.Generator) -> torch.Tensor:
    """`labels` with each one replaced by `null_label` with probability p (classifier-free guidance's dropout)."""
    drop = torch.rand(labels.shape, generator=generator) < p
    return torch.where(drop.to(labels.device), torch.full_like(labels, null_label), labels)


def _pool_batcher(pool: torch.Tensor, flip: bool = False) -> Batcher:
    """Draw batches with replacement from an in-memory tensor (uint8 images become [-1, 1] floats)."""

    def draw(n: int, generator: torch.Generator) -> torch.Tensor:
        x = pool[torch.randint(0, len(pool), (n,), generator=generator)]
        x = x.float() / 127.5 - 1.0 if x.dtype == torch.uint8 else x.float()
        if flip:  # random horizontal flips, as DDPM trains on CIFAR-10
            mask = torch.rand(n, generator=generator) < 0.5
            x = torch.where(mask[:, None, None, None], x.flip(-1), x)
        return x

    return draw


_TOY_ARCH = {"type": "mlp", "dim": 2, "hidden": 128, "depth": 3, "n_freq": 16, "n_fourier": 0, "fourier_scale": 1.0}
# 8gaussians' angular structure needs random Fourier input features (without them the MLP learns a
# ring: SWD ratio 3.3); on the other sets they hurt (swissroll 1.4 -> 2.7), so only it gets them.
_TOY_FOURIER = {"8gaussians": 32}
_DIGITS_ARCH = {"type": "unet2d", "sample_size": 8, "in_channels": 1, "out_channels": 1,
                "block_out_channels": [32, 64], "layers_per_block": 1, "norm_num_groups": 8,
                "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
                "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]}
DIGIT_CLASSES = 10  # labels 0..9; label 10 is the null (unconditional) label
_DIGITS_COND_ARCH = {**_DIGITS_ARCH, "num_class_embeds": DIGIT_CLASSES + 1}
# DDPM's CIFAR-10 network (Ho et al. 2020, 35.7M parameters), as in google/ddpm-cifar10-32.
_CIFAR_ARCH = {"type": "unet2d", "sample_size": 32, "in_channels": 3, "out_channels": 3,
               "block_out_channels": [128, 256, 256, 256], "layers_per_block": 2,
               "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
               "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]}
_MNIST_ARCH = {"type": "unet2d", "sample_size": 28, "in_channels": 1, "out_channels": 1,
               "block_out_channels": [32, 64, 128], "layers_per_block": 2,
               "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
               "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"]}


def _toy(key: str) -> TrainSpec:
    sampler = toy2d.SAMPLERS[key]
    arch = {**_TOY_ARCH, "n_fourier": _TOY_FOURIER.get(key, 0)}
    return TrainSpec(f"toy2d-{key}", (2,), arch, sigma_data=1.0, steps=2000, batch_size=512, lr=2e-3,
                     ema_decay=0.995, make_batcher=lambda root: sampler,
                     description=f"MLP on the 2-D {key} set (fresh data every batch)")


SPECS: dict[str, TrainSpec] = {s.name: s for s in [
    *(_toy(k) for k in toy2d.SAMPLERS),
    TrainSpec("digits", digits.SHAPE, _DIGITS_ARCH, sigma_data=0.5, steps=1200, batch_size=64, lr=2e-3,
              ema_decay=0.995, make_batcher=lambda root: _pool_batcher(digits.train_split()[0]),
              description="small U-Net on scikit-learn's 8x8 digits (train split)"),
    TrainSpec("digits-cond", digits.SHAPE, _DIGITS_COND_ARCH, sigma_data=0.5, steps=2000, batch_size=64,
              lr=2e-3, ema_decay=0.995, make_batcher=lambda root: _labelled_batcher(*digits.train_split()),
              classes=DIGIT_CLASSES, label_dropout=0.1,
              description="class-conditional U-Net on the 8x8 digits (label 10: unconditional; 10% label dropout)"),
    TrainSpec("cifar10", (3, 32, 32), _CIFAR_ARCH, sigma_data=0.5, steps=800_000, batch_size=128, lr=2e-4,
              ema_decay=0.9999, warmup=5000,
              make_batcher=lambda root: _pool_batcher(datasets.cifar10(root, train=True), flip=True),
              description="DDPM's CIFAR-10 U-Net (torchvision download; a GPU job)"),
    TrainSpec("mnist", (1, 28, 28), _MNIST_ARCH, sigma_data=0.5, steps=100_000, batch_size=128, lr=2e-4,
              ema_decay=0.9999, warmup=1000,
              make_batcher=lambda root: _pool_batcher(datasets.mnist(root, train=True)),
              description="U-Net on MNIST (torchvision download; a GPU job)"),
]}


def get_spec(name: str) -> TrainSpec:
    if name not in SPECS:
        raise ValueError(f"no training configuration for {name!r}; valid: {', '.join(SPECS)}")
    return SPECS[name]


def expected_config(spec: TrainSpec, schedule: str, prediction: str) -> dict:
    """The config entries a checkpoint must carry to be used for this request."""
    config = {"name": spec.name, "schedule": schedule, "prediction": prediction, "architecture": spec.arch,
              "sigma_data": spec.sigma_data, "shape": list(spec.shape)}
    if spec.classes:  # only conditional specs carry these: unconditional configs (and fingerprints) stay as they were
        config.update(classes=spec.classes, null_label=spec.classes, label_dropout=spec.label_dropout)
    return config


def build_denoiser(spec: TrainSpec, schedule: str, prediction: str, seed: int | None = None) -> Denoiser:
    """A fresh network for `spec` (initialised from `seed` without touching the global RNG) in its wrapper."""
    from .registry import make_schedule

    if prediction not in TARGETS:
        raise ValueError(f"trained models predict one of {', '.join(TARGETS)}; got {prediction!r}")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        net = build_net(spec.arch)
    return Denoiser(net, make_schedule(schedule), prediction, spec.sigma_data)


def sample_times(den: Denoiser, n: int, generator: torch.Generator) -> torch.Tensor:
    """Times uniform in lambda between the schedule's T and its default t_end (float64, shape (n,)); on
    FlowSchedule, uniform in t on [0, 1)."""
    s = den.schedule
    if s.kind == "flow":
        return torch.rand(n, generator=generator, dtype=torch.float64)
    lam_hi, lam_lo = s.lambda_(s.default_t_end), s.lambda_(s.T)
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    return s.t_of_lambda(lam_lo + u * (lam_hi - lam_lo)).clamp(s.default_t_end, s.T)


def denoising_loss(den: Denoiser, x0: torch.Tensor, generator: torch.Generator,
                   labels: torch.Tensor | None = None) -> torch.Tensor:
    """E || r(alpha x0 + sigma eps, t) - target / c_out ||^2 over a batch, t from `sample_times`; `labels` (B,) for a
    conditional network."""
    t = sample_times(den, len(x0), generator)
    eps = randn(tuple(x0.shape), generator=generator).to(x0.device)
    shape = (-1,) + (1,) * (x0.ndim - 1)
    a, s = (c.reshape(shape).to(device=x0.device, dtype=x0.dtype) for c in (den.schedule.alpha(t), den.schedule.sigma(t)))
    xt = a * x0 + s * eps
    return torch.mean((den.raw(xt, t, labels) - den.target(x0, eps, t)) ** 2)


MAX_SEED = 2**63 - 1  # seeds are stored in Int64 columns and seed torch generators


def train(name: str, schedule: str = "vp", prediction: str = "eps", steps: int | None = None, seed: int = 0,
          cache_dir=None, device: str = "cpu", progress: bool = True, batch_size: int | None = None,
          data_root=None, out_path=None):
    """Train `name` and write its EMA weights + config into the cache; returns the checkpoint path.

    Writers of one checkpoint take turns (a lock file beside it): a call that waited while another
    process wrote a checkpoint with the same settings (name, schedule, prediction, steps, seed,
    batch size) returns that checkpoint instead of training again.
    """
    spec, steps, batch_size = _check_request(name, schedule, prediction, steps, seed, batch_size)
    path = pathlib.Path(out_path) if out_path else cache.checkpoint_path(name, schedule, prediction, cache_dir)
    before = _stamp(path)
    with checkpoints.file_lock(path):
        if before != _stamp(path):
            same = {**expected_config(spec, schedule, prediction), "steps": steps, "seed": seed,
                    "batch_size": batch_size}
            try:
                checkpoints.load_checkpoint(path, same)
                print(f"samplerbench: {path} was just trained by another process with the same settings; using it",
                      file=sys.stderr, flush=True)
                return path
            except checkpoints.CheckpointError:
                pass
        return _train_unlocked(spec, schedule, prediction, steps, seed, device, progress, batch_size, data_root, path)


def _check_request(name, schedule, prediction, steps, seed, batch_size):
    from .registry import SCHEDULES

    spec = get_spec(name)
    steps = spec.steps if steps is None else steps
    batch_size = spec.batch_size if batch_size is None else batch_size
    checked = []
    for what, v, lo, hi in (("steps", steps, 1, None), ("batch_size", batch_size, 1, None), ("seed", seed, 0, MAX_SEED)):
        try:
            n = None if isinstance(v, bool) else operator.index(v)
        except TypeError:
            n = None
        if n is None or n < lo or (hi is not None and n > hi):
            span = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise ValueError(f"{what} must be an integer {span}, got {v!r}")
        checked.append(n)
    steps, batch_size, _ = checked
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    if prediction not in TARGETS:
        raise ValueError(f"trained models predict one of {', '.join(TARGETS)}; got {prediction!r}")
    return spec, steps, batch_size


def _stamp(path: pathlib.Path):
    """What identifies one version of a file: (inode, size, mtime), or None if there is none."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _train_unlocked(spec, schedule, prediction, steps, seed, device, progress, batch_size, data_root, path):
    # CPU: one thread, reproducible across machines and far faster on a shared CPU
    with torch_threads(1 if str(device) == "cpu" else None):
        return _train(spec, schedule, prediction, steps, seed, device, progress, batch_size, data_root, path)


def _train(spec, schedule, prediction, steps, seed, device, progress, batch_size, data_root, path):
    name = spec.name
    den = build_denoiser(spec, schedule, prediction, seed).to(device).train()
    ema = copy.deepcopy(den.net).requires_grad_(False)
    opt = torch.optim.AdamW(den.net.parameters(), lr=spec.lr, weight_decay=1e-4)
    warm = min(spec.warmup, max(1, steps // 10))
    lr_at = lambda k: spec.lr * min(1.0, (k + 1) / warm) * 0.5 * (1 + math.cos(math.pi * k / steps))  # noqa: E731
    gen = torch.Generator().manual_seed(seed)
    draw = spec.make_batcher(data_root)
    start, cpu_start, running = time.perf_counter(), time.process_time(), None
    bar = _progress(range(steps), progress, f"train {name} ({schedule}, {prediction})")
    for k in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(k)
        if spec.classes:
            x0, labels = draw(batch_size, gen)
            labels = drop_labels(labels, spec.label_dropout, spec.classes, gen).to(device)
            loss = denoising_loss(den, x0.to(device), gen, labels)
        else:
            loss = denoising_loss(den, draw(batch_size, gen).to(device), gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(den.net.parameters(), 1.0)
        opt.step()
        decay = min(spec.ema_decay, (1 + k) / (10 + k))  # EMA warm-up
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), den.net.parameters()):
                pe.lerp_(p, 1 - decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if hasattr(bar, "set_postfix") and (k % 20 == 0 or k == steps - 1):
            bar.set_postfix(loss=f"{running:.4f}")
    config = {**expected_config(spec, schedule, prediction), "schedule_params": den.schedule.describe(),
              "steps": steps, "seed": seed, "batch_size": batch_size, "lr": spec.lr, "ema_decay": spec.ema_decay,
              "optimizer": "AdamW", "final_loss": running, "train_time_s": round(time.perf_counter() - start, 2),
              "train_cpu_s": round(time.process_time() - cpu_start, 2),
              "device": str(device), "versions": _versions()}
    return checkpoints.save_checkpoint(path, ema.state_dict(), config)


def load_trained(name: str, schedule: str = "vp", prediction: str = "eps", cache_dir=None, device: str = "cpu",
                 train_missing: bool = True, progress: bool = True) -> tuple[Denoiser, dict]:
    """The cached EMA network of `name` in eval mode with its config; trains it first if missing and allowed."""
    spec = get_spec(name)
    if prediction not in TARGETS:
        raise ValueError(f"trained models predict one of {', '.join(TARGETS)}; got {prediction!r}")
    path = cache.checkpoint_path(name, schedule, prediction, cache_dir)
    if not path.exists():
        if not train_missing:
            raise FileNotFoundError(f"model {name!r} ({schedule}, {prediction}) is not trained yet (no {path}); run "
                                    f"`python -m bench train {name} --schedule {schedule} --prediction {prediction}` "
                                    "or load it with train=True")
        _, steps, batch_size = _check_request(name, schedule, prediction, None, 0, None)
        with checkpoints.file_lock(path):
            if not path.exists():  # else another process trained it while we waited
                print(f"samplerbench: {name} ({schedule}, {prediction}) is not in the cache; training it now "
                      f"({spec.steps} steps) into {path}", file=sys.stderr, flush=True)
                _train_unlocked(spec, schedule, prediction, steps, 0, "cpu", progress, batch_size, None, path)
    state, config = checkpoints.load_checkpoint(path, expected_config(spec, schedule, prediction))
    den = build_denoiser(spec, schedule, prediction)
    checkpoints.load_state_into(den.net, state, path)
    return den.to(device).eval().requires_grad_(False), config


def _progress(it, enabled: bool, desc: str):
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, file=sys.stderr, dynamic_ncols=True)


def _versions() -> dict:
    from importlib import metadata

    out = {"torch": torch.__version__}
    for pkg in ("samplerbench", "diffusers"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out
