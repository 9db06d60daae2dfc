"""Gaussian mixtures: models whose noisy marginals, scores and likelihoods are closed-form.

If x_0 ~ sum_k w_k N(mu_k, S_k) and x_t = alpha x_0 + sigma eps, then
p_t = sum_k w_k N(alpha mu_k, alpha^2 S_k + sigma^2 I), so every solver error measured on such a
model is pure discretisation error. Each S_k is kept as its eigendecomposition U diag(d) U^T.
The posterior mean E[x_0 | x_t] = sum_k r_k (mu_k + alpha S_k C_k^{-1} (x - alpha mu_k)) holds at alpha = 0 too
(FlowSchedule's t = 1: responsibilities = weights, x0 = the mixture mean).
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
    """

    def __init__(self, means, covs, weights=None, shape=None):
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
               dtype=torch.float32) -> torch.Tensor:
        """n exact draws of the data (or of the marginal at time t), shaped (n, *shape)."""
        if isinstance(generator, torch.Generator) or generator is None:
            comp = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        else:
            raise TypeError("sample takes one torch.Generator")
        z = randn((n, self.dim), generator=generator, dtype=_F64)
        x = self.means[comp] + torch.einsum("nde,ne->nd", self.evecs[comp], self.evals[comp].sqrt() * z)
        if schedule is not None and t is not None:
            alpha, sigma = self._coeffs(schedule, t, n)
            x = alpha[:, None] * x + sigma[:, None] * randn((n, self.dim), generator=generator, dtype=_F64)
        return x.reshape(n, *self.shape).to(dtype)

    # --- as a diffusion model -------------------------------------------------------------
    def model(self, schedule: Schedule, prediction: str = "eps") -> Model:
        """A solvers.Model that predicts `prediction` exactly under `schedule`."""
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; valid: {', '.join(PREDICTIONS)}")

        def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            tt = t.detach().to(_F64).cpu()
            alpha, sigma = schedule.alpha(tt), schedule.sigma(tt)
            xf = self._flat(x).cpu()
            logn, prec_diff, means = self._components(xf, alpha, sigma, posterior=True)
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

        return Model(fn, schedule, prediction=prediction)
