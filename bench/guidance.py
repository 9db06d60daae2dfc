"""The guidance axis of a run (`bench run --guidance 1,2,4,8`): parsing, which models take it, per-sample labels and
the classifier that scores whether a guided sample is of its intended class."""
from __future__ import annotations

import argparse
import math

import torch

from reference_models import ReferenceModel
from reference_models.guided import CONDITIONAL_MODELS

DEFAULT_KIND = "cfg"


def scales(text: str) -> list[float]:
    """--guidance: comma-separated finite scales w >= 0, duplicates dropped (order kept)."""
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise argparse.ArgumentTypeError("give at least one guidance scale")
    out = []
    for s in items:
        try:
            w = float(s)
        except ValueError:
            w = math.nan
        if not (math.isfinite(w) and w >= 0):
            raise argparse.ArgumentTypeError(f"guidance scales must be finite numbers >= 0 (w = 1: the conditional "
                                             f"model, w = 0: the unconditional one), got {s!r}")
        out.append(w)
    return list(dict.fromkeys(out))


scales.__name__ = "guidance scales"


def refusal(planned, kind: str) -> str | None:
    """Why these planned models cannot be guided (None when all can): every model needs classes, and classifier
    guidance needs a classifier of noisy samples for the model's schedules."""
    bad = [p.name for p in planned if p.user or p.name not in CONDITIONAL_MODELS]
    if bad:
        return (f"--guidance needs class-conditional models; {', '.join(bad)} {'has' if len(bad) == 1 else 'have'} no "
                f"classes; valid: {', '.join(CONDITIONAL_MODELS)}")
    for p in planned:
        allowed = CONDITIONAL_MODELS[p.name].get(kind)
        off = [s for s in p.schedules if allowed is not None and s not in allowed]
        if off:
            return (f"--guidance-kind {kind} on {p.name} runs on the {', '.join(allowed)} schedule(s) only, not "
                    f"{', '.join(off)}")
    return None


def sample_labels(seed: int, indices, classes: int) -> torch.Tensor:
    """One class per sample, uniform over `classes`, from (run seed, sample index): the same for every solver and
    batch size (numpy's SeedSequence, stream LABELS of bench.sweep)."""
    from .sweep import LABELS, sample_seeds

    return torch.tensor([s % classes for s in sample_seeds(seed, LABELS, indices)], dtype=torch.int64)


def label_classifier(ref: ReferenceModel, cache_dir=None, device: str = "cpu"):
    """samples (in [-1, 1] for images) -> predicted labels: the Bayes classifier of an exact mixture at t_end (the
    most probable class under p(c | x)), else the digits classifier of the FID features (8x8 digits). None where
    neither applies."""
    if ref.mixture is not None and ref.mixture.num_classes:
        sched = ref.schedule

        def exact(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return ref.mixture.class_log_posterior(x.double().cpu(), sched, sched.default_t_end).argmax(1)
        return exact
    if ref.metric == "image" and tuple(ref.shape) == (1, 8, 8):
        from reference_models.features import digit_labeller

        return digit_labeller(cache_dir=cache_dir, device=device)
    return None
