"""Named reference models: each name gives a ready `solvers.Model`, real data and its shape.

Exact models (closed-form score): gmm2d, gmm-digits. Trained models (learned score, trained here
from a seed on first use and cached): toy2d-*, digits; cifar10 and mnist need torchvision
downloads and are meant for a GPU.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from solvers import PREDICTIONS, FlowSchedule, Model, Schedule, VESchedule, VPSchedule

from . import digits, toy2d
from .gmm import GaussianMixture

SCHEDULES = ("vp", "ve", "flow")
# What the registered models predict on each schedule when a run does not say: the velocity on flow (a model
# predicting eps gives no x0 at t = 1, where flow samplers start), else eps.
PREDICTION_ON = {"flow": "flow"}


def prediction_for(schedule: str, prediction: str = "eps") -> str:
    """The prediction a registered model takes on `schedule`: "flow" on the flow schedule, else `prediction`."""
    return PREDICTION_ON.get(schedule, prediction)


@dataclass
class ReferenceModel:
    name: str
    model: Model  # ready to sample: schedule, prediction kind, evaluation counter
    shape: tuple[int, ...]  # one sample's shape
    kind: str  # "exact" (closed-form score), "trained" or "user" (a user's model, diffusers included)
    metric: str  # headline quality metric family: "2d" (SWD/MMD) or "image" (FID/KID)
    # n held-out real data points; None: no real samples (a user's model without data, or statistics only)
    data: Callable[[int, torch.Generator | None], torch.Tensor] | None = None
    mixture: GaussianMixture | None = None  # exact models: closed-form densities
    info: dict = field(default_factory=dict)  # trained models: the checkpoint's config (steps, seed, ...)
    # a second real sample, independent of `data`, for the noise floor (data vs data); default: `data` itself
    train_data: Callable[[int, torch.Generator | None], torch.Tensor] | None = None
    sample_range: tuple[float, float] = (-1.0, 1.0)  # where samples live: DDPM pipelines -1..1, score_sde VE 0..1
    fid_stats: object | None = None  # precomputed real statistics (mean, covariance) where the data are only those
    fingerprint: str = ""  # sha256 hex of what makes the model: weights or mixture, config, schedule
    source: str = ""  # the spec it came from: a registered name, "diffusers:PATH", "pkg.mod:make", "f.py:make"
    real_data: object | None = None  # the reference_models.data_files.RealData its data were read from, if any
    classes: int = 0  # class-conditional models: the number of classes (labels 0 .. classes - 1); 0: none
    conditional: Callable | None = None  # trained class-conditional models: fn(x, t, labels) -> prediction
    null_label: int | None = None  # the label of `conditional` that means "no class" (classifier-free guidance)

    def guided(self, scale: float, kind: str = "cfg", *, cache_dir=None, device: str = "cpu", progress: bool = True):
        """This model guided at `scale` (kind "cfg" or "classifier"): reference_models.guided.guided_reference."""
        from .guided import guided_reference

        return guided_reference(self, scale, kind, cache_dir=cache_dir, device=device, progress=progress)

    def floor_data(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n real points independent of `data`'s draws: the training split where the model has one (digits),
        else fresh draws from the same source (generated 2-D sets, exact mixtures)."""
        draw = self.train_data or self.data
        if draw is None:
            raise ValueError(f"model {self.name!r} has no real data samples; give it some "
                             "(reference_models.user_model(..., data=...) or --data PATH)")
        return draw(n, generator)

    @property
    def schedule(self) -> Schedule:
        return self.model.schedule

    @property
    def schedule_name(self) -> str:
        """The schedule's family label ("vp", "ve", "subvp", ...), the `schedule` column of a result row."""
        return self.model.schedule.kind


@dataclass(frozen=True)
class Entry:
    kind: str
    metric: str
    shape: tuple[int, ...]
    description: str


def make_schedule(name: str) -> Schedule:
    """The schedules reference models are built on: score_sde's VP linear and VE (sigma 0.01..50), rectified flow."""
    if name == "vp":
        return VPSchedule.linear(0.1, 20.0)
    if name == "ve":
        return VESchedule(0.01, 50.0)
    if name == "flow":
        return FlowSchedule()
    raise ValueError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)}")


def gmm2d() -> GaussianMixture:
    """8 equal modes on a circle of radius 2, each with standard deviation 0.25 per axis."""
    ang = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = 2.0 * torch.stack([torch.cos(ang), torch.sin(ang)], dim=1)
    return GaussianMixture(means, torch.full((8,), 0.25**2), classes=torch.arange(8))  # class k = mode k


_EXACT: dict[str, tuple[Callable[[], GaussianMixture], Callable | None]] = {
    "gmm2d": (gmm2d, None),  # data: exact draws from the mixture
    "gmm-digits": (digits.digits_mixture, digits.held_out),  # data: held-out real digits
}

MODELS: dict[str, Entry] = {
    "gmm2d": Entry("exact", "2d", (2,), "8 Gaussians on a circle (8 classes, one per mode), exact score"),
    "gmm-digits": Entry("exact", "image", digits.SHAPE,
                        f"{digits.GMM_COMPONENTS}-component full-covariance mixture fitted to the 8x8 digits "
                        f"({digits.GMM_PER_CLASS} per digit class), exact score"),
    **{f"toy2d-{k}": Entry("trained", "2d", (2,), f"MLP trained on the 2-D {k} set") for k in toy2d.SAMPLERS},
    "digits": Entry("trained", "image", digits.SHAPE, "small U-Net trained on the 8x8 digits"),
    "digits-cond": Entry("trained", "image", digits.SHAPE,
                         "class-conditional U-Net on the 8x8 digits (label 10 = unconditional), for guidance"),
    "cifar10": Entry("trained", "image", (3, 32, 32), "DDPM U-Net on CIFAR-10 (downloads data; GPU job)"),
    "mnist": Entry("trained", "image", (1, 28, 28), "U-Net on MNIST (downloads data; GPU job)"),
}

# Noise floor's second real sample where it is not a fresh draw of `data`: the digits' training split.
_TRAIN_DATA = {"gmm-digits": digits.train_draw, "digits": digits.train_draw, "digits-cond": digits.train_draw}

# What `python -m bench run` sweeps by default: the exact models and the small trained ones, on VP; and the models
# of DEFAULT_FLOW_MODELS on the flow schedule too (the exact 8-mode mixture and the MLP trained on its data).
DEFAULT_MODELS = ["gmm2d", "gmm-digits", *(f"toy2d-{k}" for k in toy2d.SAMPLERS), "digits"]
DEFAULT_FLOW_MODELS = ["gmm2d", "toy2d-8gaussians"]


def default_schedules(name: str) -> list[str]:
    """The schedules a run without --schedules gives the registered model `name`: vp (and flow for those of
    DEFAULT_FLOW_MODELS)."""
    return ["vp", "flow"] if name in DEFAULT_FLOW_MODELS else ["vp"]


def list_models() -> list[str]:
    return list(MODELS)


def describe(name: str) -> Entry:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")
    return MODELS[name]


@functools.lru_cache(maxsize=2)
def _image_test_split(name: str) -> torch.Tensor:
    from .datasets import LOADERS

    return LOADERS[name](train=False).float() / 127.5 - 1.0


def _trained_data(name: str) -> Callable:
    if name.startswith("toy2d-"):
        return toy2d.SAMPLERS[name.removeprefix("toy2d-")]
    if name in ("digits", "digits-cond"):
        return digits.held_out
    return lambda n, generator=None: digits.draw(_image_test_split(name), n, generator)


def load(name: str, schedule: str = "vp", prediction: str = "eps", cache_dir=None, device="cpu", train: bool = True,
         progress: bool = True) -> ReferenceModel:
    """Build a named reference model.

    Trained models are read from the cache (`cache_dir`, else $SAMPLERBENCH_CACHE, else
    ~/.cache/samplerbench); a missing one is trained first when `train` is true (it says so on
    stderr) and is an error otherwise. Exact models ignore cache_dir, device, train and progress.
    """
    entry = describe(name)
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    if entry.kind == "exact":
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; valid: {', '.join(PREDICTIONS)}")
        make, data = _EXACT[name]
        mixture = make()
        data = data or (lambda n, generator=None: mixture.sample(n, generator))
        sched = make_schedule(schedule)
        return ReferenceModel(name, mixture.model(sched, prediction), mixture.shape, "exact", entry.metric, data,
                              mixture, train_data=_TRAIN_DATA.get(name), fingerprint=mixture_fingerprint(mixture, sched),
                              source=name, classes=mixture.num_classes)
    from .train import get_spec, load_trained

    if get_spec(name).classes:
        return _load_conditional_record(name, entry, schedule, prediction, cache_dir, device, train, progress)
    den, config = load_trained(name, schedule, prediction, cache_dir=cache_dir, device=device,
                               train_missing=train, progress=progress)

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return den(x, t)

    return ReferenceModel(name, Model(fn, den.schedule, prediction), entry.shape, "trained", entry.metric,
                          _trained_data(name), None, config, train_data=_TRAIN_DATA.get(name),
                          fingerprint=trained_fingerprint(config, den), source=name)


def _load_conditional_record(name, entry, schedule, prediction, cache_dir, device, train, progress) -> ReferenceModel:
    """A class-conditional model's record: `model` is its unconditional prediction (the null label), `conditional`
    the fn(x, t, labels) that guidance combines."""
    from .conditional import load_conditional

    cond, null, classes, config = load_conditional(name, schedule, prediction, cache_dir=cache_dir, device=device,
                                                   train=train, progress=progress)

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return cond(x, t, torch.full((len(x),), null, dtype=torch.int64))

    return ReferenceModel(name, Model(fn, cond.denoiser.schedule, prediction), entry.shape, "trained", entry.metric,
                          _trained_data(name), None, config, train_data=_TRAIN_DATA.get(name),
                          fingerprint=trained_fingerprint(config, cond.denoiser), source=name, classes=classes,
                          conditional=cond, null_label=null)


def canonical_json(obj) -> bytes:
    """The bytes a fingerprint hashes for a JSON-able description: sorted keys, str() for anything else."""
    return json.dumps(obj, sort_keys=True, default=str).encode()


def mixture_fingerprint(mixture: GaussianMixture, schedule: Schedule) -> str:
    """sha256 of the mixture's means, weights and covariances (10 significant digits, so that last-bit differences of
    the eigendecomposition between machines do not change it), its class map if it has one, and the schedule's
    description."""
    covs = mixture.evecs @ torch.diag_embed(mixture.evals) @ mixture.evecs.transpose(1, 2)
    h = hashlib.sha256(canonical_json(schedule.describe()))
    for t in (mixture.means, mixture.log_weights.exp(), covs):
        h.update(" ".join(f"{v:.10g}" for v in t.flatten().tolist()).encode())
    if mixture.classes is not None:  # a regrouped mixture is another model (its guided references differ)
        h.update(("classes " + " ".join(map(str, mixture.classes.tolist()))).encode())
    return h.hexdigest()


def trained_fingerprint(config: dict, net: torch.nn.Module) -> str:
    """sha256 of the checkpoint's config, the schedule's description and the weights (a retrained network differs)."""
    from .user import state_digest

    h = hashlib.sha256(canonical_json({"config": config, "schedule": net.schedule.describe()}))
    state_digest(net, h)
    return h.hexdigest()
