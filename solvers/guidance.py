"""Guided sampling: classifier-free guidance (Ho & Salimans 2022) and classifier guidance (Dhariwal & Nichol 2021).

A GuidedModel is a Model whose network is the guided combination, so every solver and `sample` take it unchanged;
`nfe` counts guided evaluations and `network_calls` the calls of the user's callables.

CFG combines the conditional and unconditional outputs in the prediction's own form, out_u + w (out_c - out_u).
At fixed (x, t) every prediction kind (eps, score, x0, v, flow) is an affine function of eps (model.py), and the
weights 1 - w and w sum to 1, so the combination commutes with the conversions: combining x0 (or v, score, flow)
predictions equals combining eps predictions and converting (tests/test_guidance.py holds this to 1e-12).
Classifier guidance adds w grad_x log p(label | x_t) to the unconditional score, converted to the output's form by
`Model.output_change` (nothing where alpha = 0: x_t carries no class information there).
"""
from __future__ import annotations

import torch

from .model import Model, ModelOutputError
from .options import non_negative, positive_int
from .schedules import Schedule

GUIDANCE_KINDS = ("cfg", "classifier")


class GuidedModel(Model):
    """A Model evaluating a guided network. Build it with `cfg` or `classifier_guidance`.

    kind: "cfg" or "classifier"; scale w >= 0 (w = 1 the conditional model, w = 0 the unconditional one), settable;
    classes: labels are 0..classes-1; `labels` a (B,) int64 tensor of them, settable between samplings and checked
    against x's batch at each evaluation; network_calls: calls of the user's callables (zeroed by reset with nfe).
    """

    def __init__(self, kind: str, fn, schedule: Schedule, prediction: str = "eps", *, scale: float, classes: int,
                 labels=None, null_label: int | None = None, uncond_fn=None, classifier=None, batched: bool = True):
        if kind not in GUIDANCE_KINDS:
            raise ValueError(f"unknown guidance kind {kind!r}; valid: {', '.join(GUIDANCE_KINDS)}")
        super().__init__(self._guided, schedule, prediction)
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        self.kind = kind
        self.classes = positive_int("classes", classes)
        self.scale = scale
        self.net = fn
        self.uncond_fn = uncond_fn
        self.null_label = null_label
        self.classifier = classifier
        self.batched = bool(batched)
        self.labels = labels
        self.network_calls = 0
        if kind == "cfg":
            if null_label is None and uncond_fn is None:
                raise ValueError("a model without a null label cannot do classifier-free guidance: give null_label "
                                 "or uncond_fn")
            if null_label is not None and uncond_fn is not None:
                raise ValueError("give one of null_label and uncond_fn for the unconditional output, not both")
            if uncond_fn is not None and not callable(uncond_fn):
                raise TypeError(f"uncond_fn must be callable, got {type(uncond_fn).__name__}")
            if null_label is not None and (isinstance(null_label, bool) or not isinstance(null_label, int)
                                           or 0 <= null_label < self.classes):
                raise ValueError(f"null_label must be an integer outside the class labels 0..{self.classes - 1} "
                                 f"(typically {self.classes}), got {null_label!r}")
        elif not callable(classifier):
            raise TypeError(f"classifier must be callable (x, t) -> logits (B, classes), got "
                            f"{type(classifier).__name__}")

    def __repr__(self) -> str:
        return (f"GuidedModel(kind={self.kind!r}, scale={self.scale!r}, classes={self.classes}, "
                f"prediction={self.prediction!r}, schedule={self.schedule!r}, nfe={self.nfe})")

    @property
    def scale(self) -> float:
        return self._scale

    @scale.setter
    def scale(self, value) -> None:
        self._scale = float(non_negative("scale", value))

    @property
    def labels(self) -> torch.Tensor | None:
        return self._labels

    @labels.setter
    def labels(self, value) -> None:
        self._labels, self._on_device = None, None
        if value is None:
            return
        labels = torch.as_tensor(value)
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool or labels.ndim != 1:
            raise ValueError(f"labels must be a 1-D integer tensor (B,), got dtype {labels.dtype} and shape "
                             f"{tuple(labels.shape)}")
        labels = labels.to(torch.long).clone()
        bad = labels[(labels < 0) | (labels >= self.classes)]
        if len(bad):
            raise ValueError(f"labels must lie in 0..{self.classes - 1} (classes={self.classes}), got {int(bad[0])}")
        self._labels = labels

    def reset(self) -> None:
        super().reset()
        self.network_calls = 0

    # --- the guided network -----------------------------------------------------------------
    def _labels_for(self, x: torch.Tensor) -> torch.Tensor:
        if self._labels is None:
            raise ValueError(f"guided model has no labels: set model.labels to a (B,) tensor of labels in "
                             f"0..{self.classes - 1} before sampling")
        if len(self._labels) != x.shape[0]:
            raise ValueError(f"guided model has {len(self._labels)} labels for a batch of {x.shape[0]}: set "
                             "model.labels to one label per sample")
        if self._on_device is None or self._on_device.device != x.device:
            self._on_device = self._labels.to(x.device)
        return self._on_device

    def _call(self, fn, shape, what: str, x, t, *args) -> torch.Tensor:
        out = fn(x, t, *args)
        self.network_calls += 1
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(shape):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            t0 = float(t[0])
            raise ModelOutputError(f"{what} output has shape {got}, expected {tuple(shape)} (evaluation "
                                   f"{self.nfe + 1} at t={t0:.6g})", t0, self.nfe + 1)
        return out

    def _guided(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        labels = self._labels_for(x)
        return self._cfg(x, t, labels) if self.kind == "cfg" else self._classifier(x, t, labels)

    def _cfg(self, x, t, labels):
        if self.uncond_fn is not None:
            cond = self._call(self.net, x.shape, "network", x, t, labels)
            return torch.lerp(self._call(self.uncond_fn, x.shape, "uncond_fn", x, t), cond, self.scale)
        null = torch.full_like(labels, self.null_label)
        if not self.batched:
            cond = self._call(self.net, x.shape, "network", x, t, labels)
            return torch.lerp(self._call(self.net, x.shape, "network", x, t, null), cond, self.scale)
        both = self._call(self.net, (2 * x.shape[0], *x.shape[1:]), "network", torch.cat([x, x]), torch.cat([t, t]),
                          torch.cat([labels, null]))
        cond, uncond = both.chunk(2)
        return torch.lerp(uncond, cond, self.scale)  # exact at w = 0 and w = 1

    def _classifier(self, x, t, labels):
        out = self._call(self.net, x.shape, "network", x, t)
        c = self.schedule.at(float(t[0]))  # one time per evaluation (Model.raw)
        if c.alpha == 0.0:  # x_t carries no class information: the gradient is 0
            return out
        change = self.output_change(self.scale * _log_prob_grad(self, x, t, labels), c)
        return out + change.to(out.dtype)


def _log_prob_grad(model: GuidedModel, x, t, labels) -> torch.Tensor:
    """grad_x log softmax(classifier(x, t))[label], by autograd also inside no_grad or inference_mode."""
    with torch.inference_mode(False), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)  # clones: inference tensors cannot be saved for backward
        logits = model._call(model.classifier, (x.shape[0], model.classes), "classifier", xg, t.clone())
        chosen = torch.log_softmax(logits, dim=-1).gather(1, labels.clone()[:, None]).sum()
        (grad,) = torch.autograd.grad(chosen, xg)
    return grad


def cfg(fn, schedule: Schedule, prediction: str = "eps", *, scale: float, classes: int, null_label: int | None = None,
        uncond_fn=None, labels=None, batched: bool = True) -> GuidedModel:
    """Classifier-free guidance (Ho & Salimans 2022): out_u + w (out_c - out_u) in the prediction's own form.

    `fn(x, t, labels)` predicts `prediction` for int64 labels (B,); the unconditional output is fn with every label
    `null_label` (an int outside 0..classes-1, typically classes), or `uncond_fn(x, t)`: exactly one of them. With
    null_label and batched=True one network call of batch 2B per evaluation, else two calls. Combining in any form
    equals combining eps and converting (module docstring).
    """
    return GuidedModel("cfg", fn, schedule, prediction, scale=scale, classes=classes, labels=labels,
                       null_label=null_label, uncond_fn=uncond_fn, batched=batched)


def classifier_guidance(fn, classifier, schedule: Schedule, prediction: str = "eps", *, scale: float, classes: int,
                        labels=None) -> GuidedModel:
    """Classifier guidance (Dhariwal & Nichol 2021): score + w grad_x log p(label | x_t), in the output's form.

    `fn(x, t)` the unconditional network, `classifier(x, t)` logits (B, classes); its gradient by autograd (float64
    works). 2 network calls per evaluation (network + classifier), 1 where alpha = 0 (the gradient is 0 there).
    """
    return GuidedModel("classifier", fn, schedule, prediction, scale=scale, classes=classes, labels=labels,
                       classifier=classifier)

