"""Guided versions of the class-conditional reference models: classifier-free guidance (CFG) and classifier guidance.

The exact mixtures with classes (gmm2d: its 8 modes; gmm-digits: components grouped by digit) give the exact
conditional prediction and the exact p(c | x_t), so their guided PF-ODE has an exact (DOP853 float64) reference at any
scale. digits-cond is a U-Net trained with a null label (CFG); its classifier guidance uses a classifier trained on
noisy digits.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json

from solvers import GUIDANCE_KINDS, cfg, classifier_guidance

# Class-conditional registered models: name -> {guidance kind: the schedules it runs on (None: every one)}
CONDITIONAL_MODELS = {
    "gmm2d": {"cfg": None, "classifier": None},
    "gmm-digits": {"cfg": None, "classifier": None},
    "digits-cond": {"cfg": None, "classifier": ("vp",)},  # the noisy-digits classifier is trained on VP
}


def guided_reference(ref, scale: float, kind: str = "cfg", *, cache_dir=None, device: str = "cpu",
                     progress: bool = True):
    """A copy of the ReferenceModel `ref` whose model is guided at `scale` (labels set per batch: model.labels).

    The copy's fingerprint adds the guidance (kind, scale), so its cached reference solutions are its own.
    """
    if kind not in GUIDANCE_KINDS:
        raise ValueError(f"unknown guidance kind {kind!r}; valid: {', '.join(GUIDANCE_KINDS)}")
    if not ref.classes:
        raise ValueError(f"model {ref.name!r} has no classes: guidance needs a class-conditional model; valid: "
                         f"{', '.join(CONDITIONAL_MODELS)}")
    sched, pred, mix = ref.schedule, ref.model.prediction, ref.mixture
    if kind == "cfg":
        if mix is not None:
            fn, null = mix.conditional_fn(sched, pred), mix.num_classes
        elif ref.conditional is not None:
            fn, null = ref.conditional, ref.null_label
        else:
            raise ValueError(f"model {ref.name!r} has no conditional network for classifier-free guidance")
        model = cfg(fn, sched, pred, scale=scale, classes=ref.classes, null_label=null)
    else:
        if mix is not None:
            clf = mix.classifier_fn(sched)
        else:
            from .noisy_classifier import load_noisy_classifier

            allowed = CONDITIONAL_MODELS.get(ref.name, {}).get("classifier")
            if allowed is not None and sched.kind not in allowed:
                raise ValueError(f"classifier guidance of {ref.name!r} runs on the {', '.join(allowed)} schedule(s) "
                                 f"only (its noisy classifier is trained there), not {sched.kind}")
            clf = load_noisy_classifier(schedule=sched.kind, cache_dir=cache_dir, device=device, progress=progress)
        model = classifier_guidance(ref.model.fn, clf, sched, pred, scale=scale, classes=ref.classes)
    guidance = {"guidance_kind": kind, "guidance": float(scale)}
    fingerprint = hashlib.sha256(json.dumps({"model": ref.fingerprint, **guidance}, sort_keys=True).encode())
    return dataclasses.replace(ref, model=model, fingerprint=fingerprint.hexdigest(), info={**ref.info, **guidance})
