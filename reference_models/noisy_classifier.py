"""A time-dependent classifier of noisy 8x8 digits, p(y | x_t), for classifier guidance (Dhariwal & Nichol 2021).

It sees x_t = alpha(t) x0 + sigma(t) eps scaled to unit variance (c_in of `nets.Denoiser`) and is conditioned on the
same noise level n = -lambda(t); trained with cross-entropy at times drawn as the denoisers' (`train.sample_times`:
uniform in lambda), on the digits' train split. No random shifts: the held-out digits are centred like the train ones,
and shift invariance costs accuracy at mid noise (t = 0.5: 21% with shifts, 27% without). Cached like the models
(safetensors, config in the header). The loaded classifier is not under inference_mode: guidance differentiates
it w.r.t. x.
"""
from __future__ import annotations

import copy
import hashlib
import math
import pathlib
import sys
import time

import torch
from torch import nn

from . import cache, checkpoints, digits
from .nets import N_MAX, FourierNoiseEmbedding
from .threads import torch_threads

NAME = "noisy-digits-cnn"
ARCH = {"type": "noisy-digit-cnn", "channels": [32, 64, 64], "hidden": 128, "n_freq": 16, "classes": 10}
TRAIN = {"seed": 0, "steps": 2000, "batch_size": 128, "lr": 2e-3, "ema_decay": 0.995, "warmup": 100}
SIGMA_DATA = 0.5
EVAL_TIMES = (0.05, 0.5, 0.9)  # accuracies on the held-out split recorded in the config
EVAL_SEED = 1234


class NoisyDigitCNN(nn.Module):
    """conv-GN(+emb)-SiLU x2, pool, conv-GN(+emb)-SiLU, pool, fc(+emb)-SiLU, fc(classes); emb from the noise level."""

    def __init__(self, channels=(32, 64, 64), hidden: int = 128, n_freq: int = 16, classes: int = 10, **_):
        super().__init__()
        c1, c2, c3 = channels
        self.embed = FourierNoiseEmbedding(n_freq)
        self.temb = nn.Sequential(nn.Linear(2 * n_freq, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.convs = nn.ModuleList([nn.Conv2d(1, c1, 3, padding=1), nn.Conv2d(c1, c2, 3, padding=1),
                                    nn.Conv2d(c2, c3, 3, padding=1)])
        self.norms = nn.ModuleList([nn.GroupNorm(8, c) for c in (c1, c2, c3)])
        self.shifts = nn.ModuleList([nn.Linear(hidden, c) for c in (c1, c2, c3)])
        self.fc = nn.Linear(4 * c3, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        emb = self.temb(self.embed(n))
        h = x
        for i, (conv, norm, shift) in enumerate(zip(self.convs, self.norms, self.shifts)):
            h = nn.functional.silu(norm(conv(h)) + shift(emb)[:, :, None, None])
            if i >= 1:
                h = nn.functional.max_pool2d(h, 2)  # 8 -> 4 -> 2
        return self.head(nn.functional.silu(self.fc(h.flatten(1)) + emb))


class NoisyClassifier(nn.Module):
    """logits(x_t, t): the network on c_in(t) x_t and n(t) = -lambda(t); t a (B,) tensor or a number."""

    def __init__(self, net: nn.Module, schedule, sigma_data: float = SIGMA_DATA):
        super().__init__()
        self.net, self.schedule, self.sigma_data = net, schedule, float(sigma_data)

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        t64 = torch.as_tensor(t, dtype=torch.float64).detach().cpu().expand(len(x))
        a, s = self.schedule.alpha(t64), self.schedule.sigma(t64)
        c_in = torch.rsqrt(a**2 * self.sigma_data**2 + s**2)
        n = self.schedule.lambda_(t64).neg().clamp(-N_MAX, N_MAX)
        p = next(self.net.parameters())
        xin = x.to(p.dtype) * c_in.reshape(-1, 1, 1, 1).to(device=x.device, dtype=p.dtype)
        return self.net(xin, n.to(device=x.device, dtype=p.dtype))


def classifier_path(schedule: str = "vp", cache_dir=None) -> pathlib.Path:
    return cache.cache_dir(cache_dir) / "classifier" / f"{NAME}-{schedule}.safetensors"


def expected_config(schedule: str) -> dict:
    return {"name": NAME, "schedule": schedule, "architecture": ARCH, "sigma_data": SIGMA_DATA}


def build(schedule: str = "vp", seed: int | None = None) -> NoisyClassifier:
    """A fresh classifier (initialised from `seed` without touching the global RNG)."""
    from .registry import make_schedule

    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        net = NoisyDigitCNN(**ARCH)
    return NoisyClassifier(net, make_schedule(schedule))


def noisy(clf: NoisyClassifier, x0: torch.Tensor, t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """x_t = alpha(t) x0 + sigma(t) eps for (B,) float64 times t."""
    eps = torch.randn(x0.shape, generator=generator)
    a, s = (c.reshape(-1, 1, 1, 1).float() for c in (clf.schedule.alpha(t), clf.schedule.sigma(t)))
    return a * x0 + s * eps


@torch.no_grad()
def noisy_accuracy(clf: NoisyClassifier, x0: torch.Tensor, y: torch.Tensor, t: float, seed: int = EVAL_SEED) -> float:
    """Fraction of `x0` noised to time t (one noise draw from `seed`) classified as `y`."""
    tt = torch.full((len(x0),), float(t), dtype=torch.float64)
    xt = noisy(clf, x0, tt, torch.Generator().manual_seed(seed))
    return float((clf(xt, tt).argmax(1) == y).float().mean())


def train_noisy_classifier(schedule: str = "vp", cache_dir=None, steps: int | None = None, seed: int | None = None,
                           progress: bool = True, out_path=None) -> pathlib.Path:
    """Train the noisy classifier (AdamW, warm-up + cosine, EMA, one CPU thread) and cache it with its accuracies."""
    from .train import sample_times

    steps = TRAIN["steps"] if steps is None else int(steps)
    seed = TRAIN["seed"] if seed is None else int(seed)
    x, y = digits.train_split()
    xt, yt = digits.test_split()
    with torch_threads(1):
        start, cpu_start = time.perf_counter(), time.process_time()
        clf = build(schedule, seed).train()
        ema = copy.deepcopy(clf.net).requires_grad_(False)
        opt = torch.optim.AdamW(clf.net.parameters(), lr=TRAIN["lr"], weight_decay=1e-4)
        warm = min(TRAIN["warmup"], max(1, steps // 10))
        gen = torch.Generator().manual_seed(seed)
        it = range(steps)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, desc=f"train {NAME} ({schedule})", file=sys.stderr, dynamic_ncols=True)
        for k in it:
            for group in opt.param_groups:
                group["lr"] = TRAIN["lr"] * min(1.0, (k + 1) / warm) * 0.5 * (1 + math.cos(math.pi * k / steps))
            idx = torch.randint(0, len(x), (TRAIN["batch_size"],), generator=gen)
            x0 = x[idx]
            t = sample_times(clf, len(x0), gen)
            loss = nn.functional.cross_entropy(clf(noisy(clf, x0, t, gen), t), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(clf.net.parameters(), 1.0)
            opt.step()
            decay = min(TRAIN["ema_decay"], (1 + k) / (10 + k))
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), clf.net.parameters()):
                    pe.lerp_(p, 1 - decay)
        train_time, train_cpu = time.perf_counter() - start, time.process_time() - cpu_start
        clf.net = ema.eval()
        acc = {f"{t:g}": noisy_accuracy(clf, xt, yt, t) for t in EVAL_TIMES}
    config = {**expected_config(schedule), "schedule_params": clf.schedule.describe(),
              "train": {**TRAIN, "steps": steps, "seed": seed}, "test_accuracy_at_t": acc,
              "train_time_s": round(train_time, 2), "train_cpu_s": round(train_cpu, 2),
              "versions": {"torch": torch.__version__}}
    return checkpoints.save_checkpoint(out_path or classifier_path(schedule, cache_dir), ema.state_dict(), config)


def load_noisy_classifier(schedule: str = "vp", cache_dir=None, device="cpu", train: bool = True,
                          progress: bool = True) -> NoisyClassifier:
    """The cached noisy classifier: classifier(x, t) -> logits (B, 10), eval mode, weights frozen but differentiable
    w.r.t. x (not under inference_mode). Its config is `.config`, its sha256 `.fingerprint`. Trains it first if missing
    and `train` is true."""
    path = classifier_path(schedule, cache_dir)
    if not path.exists():
        if not train:
            raise FileNotFoundError(f"the noisy digit classifier ({schedule}) is not trained yet (no {path}); "
                                    "load it with train=True")
        with checkpoints.file_lock(path):
            if not path.exists():
                print(f"samplerbench: training the noisy digit classifier ({schedule}) into {path}", file=sys.stderr,
                      flush=True)
                train_noisy_classifier(schedule, cache_dir, progress=progress, out_path=path)
    state, config = checkpoints.load_checkpoint(path, expected_config(schedule))
    clf = build(schedule)
    checkpoints.load_state_into(clf.net, state, path)
    clf.config = config
    clf.fingerprint = _fingerprint(clf, config)
    return clf.to(device).eval().requires_grad_(False)


def _fingerprint(clf: NoisyClassifier, config: dict) -> str:
    from .registry import canonical_json
    from .user import state_digest

    h = hashlib.sha256(canonical_json({"config": config, "schedule": clf.schedule.describe()}))
    state_digest(clf.net, h)
    return h.hexdigest()
