"""Gaussian mixtures: models whose noisy marginals, scores and likelihoods are closed-form.

If x_0 ~ sum_k w_k N(mu_k, S_k) and x_t = alpha x_0 + sigma eps, then
p_t = sum_k w_k N(alpha mu_k, alpha^2 S_k + sigma^2 I), so every solver error measured on such a
model is pure discretisation error. Each S_k is kept as its eigendecomposition U diag(d) U^T.
The posterior mean E[x_0 | x_t] = sum_k r_k (mu_k + alpha S_k C_k^{-1} (x - alpha mu_k)) holds at alpha = 0 too
(FlowSchedule's t = 1: responsibilities = weights, x0 = the mixture mean).

With a class map (component k belongs to class c_k), p_t(x | c), p_t(x) and p(c | x_t) are closed-form too: the
class's components with renormalised weights, so classifier-free and classifier guidance have exact fields.
"""
from __future__ import annotations

import math

import torch

from solvers import PREDICTIONS, Model, Schedule
from solvers.noise import randn

_F64 = torch.float64


class GaussianMixture:
    """sum_k w_k N(mu_k, S_k) in D dimensions, optionally viewed as data of shape `shape` (prod = D).

    covs: (K, D, D) full, (K, D) diagonal, or (K,) isotropic variances.
    classes: optional (K,) class of each component, 0..C-1, every class owning at least one component.
    """

    def __init__(self, means, covs, weights=None, shape=None, classes=None):
        means = torch.as_tensor(means, dtype=_F64)
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, D), got {tuple(means.shape)}")
        k, d = means.shape
        covs = torch.as_tensor(covs, dtype=_F64)
        if covs.shape == (k,):
            covs = covs[:, None, None] * torch.eye(d, dtype=_F64)
        elif covs.shape == (k, d):
            covs = torch.diag_embed(covs)
        elif covs.shape != (k, d, d):
            raise ValueError(f"covs must have shape ({k},), ({k}, {d}) or ({k}, {d}, {d}), got {tuple(covs.shape)}")
        weights = torch.full((k,), 1.0 / k, dtype=_F64) if weights is None else torch.as_tensor(weights, dtype=_F64)
        if weights.shape != (k,) or torch.any(weights <= 0):
            raise ValueError(f"weights must be {k} positive numbers")
        evals, evecs = torch.linalg.eigh(0.5 * (covs + covs.transpose(1, 2)))
        if torch.any(evals <= 0):
            raise ValueError("every covariance must be positive definite")
        self.means, self.evals, self.evecs = means, evals, evecs
        self.log_weights = torch.log(weights / weights.sum())
        self.dim = d
        self.shape = tuple(shape) if shape is not None else (d,)
        if math.prod(self.shape) != d:
            raise ValueError(f"shape {self.shape} does not hold {d} dimensions")
        self.classes = None if classes is None else _class_map(classes, k)
        if self.classes is not None:  # log of each class's total weight, (C,)
            self.class_log_weights = torch.logsumexp(self.log_weights[None] + self._log_mask(
                torch.arange(self.num_classes)), dim=1)

    @property
    def num_classes(self) -> int:
        """C, the number of classes; 0 for a mixture without a class map."""
        return 0 if self.classes is None else int(self.classes.max()) + 1

    # --- marginals ------------------------------------------------------------------------
    def _components(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, posterior: bool = False):
        """Per-component log N(x; alpha mu_k, alpha^2 S_k + sigma^2 I) and C_k^{-1}(x - alpha mu_k)
        (and with `posterior`, the component posterior means mu_k + alpha S_k C_k^{-1}(x - alpha mu_k)).

        x: (B, D) float64; alpha, sigma: (B,) float64.
        """
        var = alpha[:, None, None] ** 2 * self.evals[None] + sigma[:, None, None] ** 2  # (B, K, D)
        diff = x[:, None, :] - alpha[:, None, None] * self.means[None]  # (B, K, D)
        proj = torch.einsum("bkd,kde->bke", diff, self.evecs)  # coordinates in each eigenbasis
        logn = -0.5 * ((proj**2 / var).sum(-1) + torch.log(var).sum(-1) + self.dim * math.log(2 * math.pi))
        prec_diff = torch.einsum("bke,kde->bkd", proj / var, self.evecs)
        if posterior:
            shrink = torch.einsum("bke,kde->bkd", alpha[:, None, None] * self.evals[None] * proj / var, self.evecs)
            return logn + self.log_weights, prec_diff, self.means[None] + shrink
        return logn + self.log_weights, prec_diff

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], self.dim).to(_F64)

    def _coeffs(self, schedule: Schedule | None, t, batch: int):
        if schedule is None or t is None:
            return torch.ones(batch, dtype=_F64), torch.zeros(batch, dtype=_F64)
        t = torch.as_tensor(t, dtype=_F64).cpu().expand(batch)
        return schedule.alpha(t), schedule.sigma(t)

    def log_prob(self, x: torch.Tensor, schedule: Schedule | None = None, t=None) -> torch.Tensor:
        """log p_t(x) per sample (float64); the data density when no schedule is given."""
        xf = self._flat(x).cpu()
        alpha, sigma = self._coeffs(schedule, t, xf.shape[0])
        logn, _ = self._components(xf, alpha, sigma)
        return torch.logsumexp(logn, dim=1)

    def score(self, x: torch.Tensor, schedule: Schedule | None = None, t=None) -> torch.Tensor:
        """grad_x log p_t(x), float64, shaped like x."""
        xf = self._flat(x).cpu()
        alpha, sigma = self._coeffs(schedule, t, xf.shape[0])
        logn, prec_diff = self._components(xf, alpha, sigma)
        resp = torch.softmax(logn, dim=1)
        return -(resp[:, :, None] * prec_diff).sum(1).reshape(x.shape)

    def sample(self, n: int, generator=None, schedule: Schedule | None = None, t=None,
               dtype=torch.float32, labels=None) -> torch.Tensor:
        """n exact draws of the data (or of the marginal at time t), shaped (n, *shape); with `labels` ((n,) or one
        class for all), draw i comes from class labels[i]'s components (exact draws of p(x | c))."""
        if not (isinstance(generator, torch.Generator) or generator is None):
            raise TypeError("sample takes one torch.Generator")
        if labels is None:
            comp = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        else:  # each row: the weights of the label's components (multinomial renormalises)
            probs = (self.log_weights[None] + self._log_mask(self._labels(labels, n))).exp()
            comp = torch.multinomial(probs, 1, generator=generator)[:, 0]
        z = randn((n, self.dim), generator=generator, dtype=_F64)
        x = self.means[comp] + torch.einsum("nde,ne->nd", self.evecs[comp], self.evals[comp].sqrt() * z)
        if schedule is not None and t is not None:
            alpha, sigma = self._coeffs(schedule, t, n)
            x = alpha[:, None] * x + sigma[:, None] * randn((n, self.dim), generator=generator, dtype=_F64)
        return x.reshape(n, *self.shape).to(dtype)

    # --- class-conditional densities (a mixture with a class map) ----------------------------
    def _log_mask(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, K): 0 where component k belongs to class labels[b], -inf elsewhere (adding it keeps that class)."""
        mask = self.classes[None] == labels[:, None]
        return torch.where(mask, 0.0, -math.inf).to(_F64)

    def _labels(self, labels, batch: int, null: int | None = None) -> torch.Tensor:
        """labels as a (batch,) int64 CPU tensor, each a class (or `null`); a scalar is broadcast."""
        if self.classes is None:
            raise ValueError("this mixture has no classes; build it with GaussianMixture(..., classes=...)")
        labels = torch.as_tensor(labels)
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"labels must be integers, got {labels.dtype}")
        labels = labels.to(torch.int64).cpu()
        if labels.ndim == 0:
            labels = labels.expand(batch)
        if labels.shape != (batch,):
            raise ValueError(f"labels must have shape ({batch},), got {tuple(labels.shape)}")
        valid = (labels >= 0) & (labels < self.num_classes)
        if null is not None:
            valid |= labels == null
        if not valid.all():
            extra = f" or the null label {null}" if null is not None else ""
            raise ValueError(f"label {int(labels[~valid][0])} out of range; valid: 0..{self.num_classes - 1}{extra}")
        return labels

    def _class_terms(self, x: torch.Tensor, schedule: Schedule | None, t):
        """(log p_t(x, c) for every class (B, C), log p_t(x) (B,)), differentiable in x."""
        if self.classes is None:
            raise ValueError("this mixture has no classes; build it with GaussianMixture(..., classes=...)")
        xf = self._flat(x).cpu()
        alpha, sigma = self._coeffs(schedule, t, xf.shape[0])
        logn, _ = self._components(xf, alpha, sigma)
        joint = torch.logsumexp(logn[:, None, :] + self._log_mask(torch.arange(self.num_classes))[None], dim=2)
        return joint, torch.logsumexp(logn, dim=1)

    def class_log_posterior(self, x: torch.Tensor, schedule: Schedule | None = None, t=None) -> torch.Tensor:
        """log p(c | x_t), (B, C) float64; autograd flows to x (classifier guidance takes its gradient)."""
        joint, total = self._class_terms(x, schedule, t)
        return joint - total[:, None]

    def conditional_log_prob(self, x: torch.Tensor, labels, schedule: Schedule | None = None, t=None) -> torch.Tensor:
        """log p_t(x | c) per sample: the class's components with their weights renormalised."""
        joint, _ = self._class_terms(x, schedule, t)
        labels = self._labels(labels, joint.shape[0])
        return joint.gather(1, labels[:, None])[:, 0] - self.class_log_weights[labels]

    def _scores(self, x: torch.Tensor, labels, schedule: Schedule | None, t):
        """(grad log p_t(x), grad log p_t(x | c)), flat (B, D) float64."""
        xf = self._flat(x).cpu()
        labels = self._labels(labels, xf.shape[0])
        alpha, sigma = self._coeffs(schedule, t, xf.shape[0])
        logn, prec_diff = self._components(xf, alpha, sigma)
        uncond = -(torch.softmax(logn, dim=1)[:, :, None] * prec_diff).sum(1)
        cond = -(torch.softmax(logn + self._log_mask(labels), dim=1)[:, :, None] * prec_diff).sum(1)
        return uncond, cond

    def conditional_score(self, x: torch.Tensor, labels, schedule: Schedule | None = None, t=None) -> torch.Tensor:
        """grad_x log p_t(x | c), float64, shaped like x."""
        return self._scores(x, labels, schedule, t)[1].reshape(x.shape)

    def guided_score(self, x: torch.Tensor, labels, scale, schedule: Schedule | None = None, t=None) -> torch.Tensor:
        """The exact classifier-free guided score s_u + w (s_c - s_u) = grad[(1 - w) log p_t(x) + w log p_t(x | c)]
        = s_u + w grad log p(c | x_t) (classifier guidance at the same w, by Bayes). scale: a number or (B,)."""
        uncond, cond = self._scores(x, labels, schedule, t)
        w = torch.as_tensor(scale, dtype=_F64).cpu()
        w = w[:, None] if w.ndim == 1 else w
        return (uncond + w * (cond - uncond)).reshape(x.shape)

    # --- as a diffusion model -------------------------------------------------------------
    def _predict(self, schedule: Schedule, prediction: str, x: torch.Tensor, t: torch.Tensor,
                 log_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The exact prediction of kind `prediction` at (x, t), in x's dtype and device; `log_mask` (B, K), added to
        the component terms, restricts each sample to some components (a class) with renormalised weights."""
        tt = t.detach().to(_F64).cpu()
        alpha, sigma = schedule.alpha(tt), schedule.sigma(tt)
        xf = self._flat(x).cpu()
        logn, prec_diff, means = self._components(xf, alpha, sigma, posterior=True)
        if log_mask is not None:
            logn = logn + log_mask
        resp = torch.softmax(logn, dim=1)[:, :, None]
        score = -(resp * prec_diff).sum(1)
        a, s = alpha[:, None], sigma[:, None]
        if prediction == "score":
            out = score
        elif prediction == "eps":
            out = -s * score
        else:  # Tweedie's x0 where alpha > 0 (as always), the posterior mean itself where alpha = 0
            x0 = torch.where(a > 0, (xf + s**2 * score) / a, (resp * means).sum(1))
            if prediction == "flow":
                out = schedule.d_alpha(tt)[:, None] * x0 + schedule.d_sigma(tt)[:, None] * (-s * score)
            else:
                out = x0 if prediction == "x0" else a * (-s * score) - s * x0
        return out.reshape(x.shape).to(device=x.device, dtype=x.dtype)

    def model(self, schedule: Schedule, prediction: str = "eps") -> Model:
        """A solvers.Model that predicts `prediction` exactly under `schedule`."""
        _check_prediction(prediction)

        def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self._predict(schedule, prediction, x, t)

        return Model(fn, schedule, prediction=prediction)

    def conditional_fn(self, schedule: Schedule, prediction: str = "eps", null_label: int | None = None):
        """fn(x, t, labels) -> the exact prediction given each sample's class, as a class-conditional network
        returns it; label == null_label (default: num_classes) gives the unconditional model (the CFG null token)."""
        _check_prediction(prediction)
        if self.classes is None:
            raise ValueError("this mixture has no classes; build it with GaussianMixture(..., classes=...)")
        null = self.num_classes if null_label is None else int(null_label)
        if 0 <= null < self.num_classes:
            raise ValueError(f"null_label {null} is a class; give one outside 0..{self.num_classes - 1}")

        def fn(x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            labels = self._labels(labels, x.shape[0], null)
            log_mask = torch.where(labels[:, None] == null, 0.0, self._log_mask(labels))
            return self._predict(schedule, prediction, x, t, log_mask)

        return fn

    def classifier_fn(self, schedule: Schedule):
        """classifier(x, t) -> logits (B, C) = the exact log p(c | x_t), in x's dtype and device, differentiable in x."""
        if self.classes is None:
            raise ValueError("this mixture has no classes; build it with GaussianMixture(..., classes=...)")

        def classifier(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.class_log_posterior(x, schedule, t).to(device=x.device, dtype=x.dtype)

        return classifier


def _check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; valid: {', '.join(PREDICTIONS)}")


def _class_map(classes, k: int) -> torch.Tensor:
    """The (K,) int64 class of each component, checked: integers 0..C-1, every class owning a component."""
    classes = torch.as_tensor(classes)
    if classes.is_floating_point() or classes.is_complex() or classes.dtype == torch.bool:
        raise ValueError(f"classes must be integers (the class of each component), got {classes.dtype}")
    if classes.shape != (k,):
        raise ValueError(f"classes must have shape ({k},), one class per component, got {tuple(classes.shape)}")
    classes = classes.to(torch.int64).cpu()
    if torch.any(classes < 0):
        raise ValueError(f"classes must be 0..C-1, got {int(classes.min())}")
    empty = sorted(set(range(int(classes.max()) + 1)) - set(classes.tolist()))
    if empty:
        raise ValueError(f"every class 0..{int(classes.max())} must own a component; class {empty[0]} owns none")
    return classes
