"""One model interface: wraps a network `fn(x, t)` and hands every solver the form it needs.

x_t = alpha x_0 + sigma eps. A network predicts one of
  eps    the noise,                       score = -eps / sigma
  score  grad log p_t(x),                 eps   = -sigma * score
  x0     the clean data,                  eps   = (x - alpha x0) / sigma
  v      alpha eps - sigma x0 (Salimans & Ho 2022), inverted for any alpha, sigma,
  flow   the velocity dx/dt = alpha' x0 + sigma' eps (flow matching; eps - x0 under FlowSchedule), inverted with
         D = sigma' alpha - alpha' sigma: x0 = (sigma' x - sigma v) / D, eps = (alpha v - alpha' x) / D.
All conversions live here; solvers never branch on the prediction kind. Where alpha = 0 (FlowSchedule's t = 1)
x0 is defined only for the predictions of X0_AT_ALPHA_ZERO: eps and score carry no information about x0 there.
"""
from __future__ import annotations

import time

import torch

from .schedules import Schedule

PREDICTIONS = ("eps", "score", "x0", "v", "flow")
X0_AT_ALPHA_ZERO = ("x0", "v", "flow")  # predictions that give x0 (and the PF-ODE drift) where alpha = 0


class ModelOutputError(RuntimeError):
    """The network returned a wrong shape or non-finite values at time `t`, in evaluation `nfe` of its Model."""

    def __init__(self, message: str, t: float, nfe: int | None = None):
        super().__init__(message)
        self.t = t
        self.nfe = nfe


class Model:
    """A network plus its schedule and prediction kind; counts evaluations in `nfe`.

    `fn(x, t)` takes x of shape (B, ...) and t of shape (B,) in the schedule's continuous time; t comes
    in at least float32 (float64 when x is float64), never rounded to a half-precision x.
    """

    def __init__(self, fn, schedule: Schedule, prediction: str = "eps", check_outputs: bool = True):
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a solvers Schedule, got {type(schedule).__name__}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; valid: {', '.join(PREDICTIONS)}")
        self.fn = fn
        self.schedule = schedule
        self.prediction = prediction
        self.check_outputs = check_outputs
        self.nfe = 0
        self._pending: list = []  # (evaluation, t, finite flag) of CUDA outputs not checked yet
        self.model_time_s = 0.0  # wall-clock spent inside fn (synchronised on CUDA)
        self.timing = False

    def __repr__(self) -> str:
        return f"Model(prediction={self.prediction!r}, schedule={self.schedule!r}, nfe={self.nfe})"

    @property
    def gives_x0_at_alpha_zero(self) -> bool:
        """Whether x0 and the PF-ODE drift are defined where alpha = 0 (lambda = -inf) with this prediction."""
        return self.prediction in X0_AT_ALPHA_ZERO

    def reset(self) -> None:
        self.nfe = 0
        self.model_time_s = 0.0
        self._pending = []

    # --- the one place that calls the network ------------------------------------------
    def raw(self, x: torch.Tensor, t: float) -> torch.Tensor:
        tb = torch.full((x.shape[0],), float(t), dtype=torch.promote_types(x.dtype, torch.float32), device=x.device)
        if self.timing:
            _sync(x)
            start = time.perf_counter()
        out = self.fn(x, tb)
        if self.timing:
            _sync(x)
            self.model_time_s += time.perf_counter() - start
        self.nfe += 1
        if self.check_outputs:
            if not isinstance(out, torch.Tensor) or out.shape != x.shape:
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ModelOutputError(f"model output has shape {got}, expected {tuple(x.shape)} "
                                       f"(evaluation {self.nfe} at t={float(t):.6g})", float(t), self.nfe)
            if out.is_cuda:  # checked in check_pending(), so that no evaluation waits for the GPU
                self._pending.append((self.nfe, float(t), torch.isfinite(out).all()))
                if len(self._pending) >= 1024:
                    self.check_pending()
            elif not _all_finite(out):
                raise ModelOutputError(
                    f"model returned NaN/Inf (evaluation {self.nfe} at t={float(t):.6g})", float(t), self.nfe)
        return out.to(x.dtype)

    def check_pending(self) -> None:
        """Raise for the first evaluation whose output was NaN/Inf among those not checked yet (CUDA)."""
        pending, self._pending = self._pending, []
        if pending:
            ok = torch.stack([f for _, _, f in pending]).cpu()
            if not bool(ok.all()):
                nfe, t, _ = pending[int((~ok).nonzero()[0])]
                raise ModelOutputError(f"model returned NaN/Inf (evaluation {nfe} at t={t:.6g})", t, nfe)

    # --- forms --------------------------------------------------------------------------
    def eps(self, x: torch.Tensor, t: float) -> torch.Tensor:
        out = self.raw(x, t)
        if self.prediction == "eps":
            return out
        c = self.schedule.at(t)
        a, s = c.alpha, c.sigma
        if self.prediction == "score":
            return -s * out
        if self.prediction == "x0":
            return torch.add(x, out, alpha=-a).div_(s)
        if self.prediction == "flow":
            return (a * out - c.d_alpha * x) / (c.d_sigma * a - c.d_alpha * s)
        return (s * x + a * out) / (a * a + s * s)

    def x0(self, x: torch.Tensor, t: float) -> torch.Tensor:
        return self._x0_of(x, self.raw(x, t), self.schedule.at(t))

    def _x0_of(self, x: torch.Tensor, out: torch.Tensor, c) -> torch.Tensor:
        """x0 from the network's output `out` at x, with the coefficients `c` of its time."""
        a, s = c.alpha, c.sigma
        if self.prediction == "eps":  # fused: one pass for x - s out, one in place for the division
            return torch.add(x, out, alpha=-s).div_(a)
        if self.prediction == "score":
            return torch.add(x, out, alpha=s * s).div_(a)
        if self.prediction == "x0":
            return out
        if self.prediction == "flow":
            return torch.add(c.d_sigma * x, out, alpha=-s).div_(c.d_sigma * a - c.d_alpha * s)
        return (a * x - s * out) / (a * a + s * s)

    def output_change(self, delta_score: torch.Tensor, c) -> torch.Tensor | None:
        """The change of this model's output, at fixed x and time (coefficients `c`), for a change `delta_score` of the
        score; None where alpha = 0, where a score change from x_t's class information (classifier guidance) is 0.

        At fixed x every form is affine in eps, d eps = -sigma d score, so d score = g gives
          eps: -sigma g,   x0: sigma^2 / alpha g,   v: -(alpha^2 + sigma^2) sigma / alpha g,   flow: -D sigma / alpha g,
        with D = sigma' alpha - alpha' sigma (the inverses in `eps`).
        """
        a, s = c.alpha, c.sigma
        if a == 0.0:
            return None
        k = {"score": 1.0, "eps": -s, "x0": s * s / a, "v": -(a * a + s * s) * s / a,
             "flow": -(c.d_sigma * a - c.d_alpha * s) * s / a}[self.prediction]
        return delta_score * k

    def score(self, x: torch.Tensor, t: float) -> torch.Tensor:
        if self.prediction == "score":
            return self.raw(x, t)
        return self.eps(x, t) / -self.schedule.at(t).sigma

    def velocity(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """The velocity alpha' x0 + sigma' eps from one evaluation (the "flow" prediction itself)."""
        out = self.raw(x, t)
        if self.prediction == "flow":
            return out
        c = self.schedule.at(t)
        a, s = c.alpha, c.sigma
        x0 = self._x0_of(x, out, c)  # eps, score: alpha > 0 here (sample refuses a start at alpha = 0)
        return c.d_alpha * x0 + (c.d_sigma / s) * (x - a * x0)

    def ode_drift(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """Probability-flow ODE: dx/dt = f(t) x - g(t)^2 / 2 * score = f x + g^2 / (2 sigma) eps.

        Under FlowSchedule, and wherever alpha = 0 (f and g^2 infinite), the same drift is computed as the
        velocity alpha' x0 + sigma' eps, finite at t = 1.
        """
        c = self.schedule.at(t)
        if c.alpha == 0.0 or self.schedule.kind == "flow":
            return self.velocity(x, t)
        return c.f * x + (0.5 * c.g2 / c.sigma) * self.eps(x, t)

    def sde_drift(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """Reverse-time SDE drift (in t): f(t) x - g(t)^2 score = f x + g^2 / sigma eps."""
        c = self.schedule.at(t)
        return c.f * x + (c.g2 / c.sigma) * self.eps(x, t)


def _all_finite(out: torch.Tensor) -> bool:
    """Whether every value is finite. A NaN or Inf makes the sum non-finite, so one read-only reduction (at least
    float32) settles the usual case; only a non-finite sum, which finite values can also give by overflowing, pays
    for the elementwise check (isfinite().all() costs 20x the sum on a CPU)."""
    acc = out.sum(dtype=torch.promote_types(out.dtype, torch.float32)) if out.is_floating_point() else out.sum()
    return bool(torch.isfinite(acc)) or bool(torch.isfinite(out).all())


def _sync(x: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)

