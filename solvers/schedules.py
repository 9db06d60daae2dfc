"""Noise schedules: x_t = alpha(t) x_0 + sigma(t) eps, written in log-SNR lambda = log(alpha/sigma).

VP (linear, cosine, discrete), sub-VP, VE, and rectified flow (alpha = 1 - t, sigma = t; Liu et al. 2022,
SD3, Flux), which reaches alpha = 0 (lambda = -inf) at t = 1.

Every method takes times as floats or tensors and returns float64 tensors. Solvers work in
lambda (Lu et al. 2022, DPM-Solver, Sec. 3); the SDE coefficients follow Song et al. 2021
(score_sde): dx = f(t) x dt + g(t) dw.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

_F64 = torch.float64


def _t64(t) -> torch.Tensor:
    return torch.as_tensor(t, dtype=_F64)


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation on increasing `xp`, extrapolating the end segments."""
    idx = torch.searchsorted(xp, x.clamp(xp[0], xp[-1])).clamp(1, len(xp) - 1)
    x0, x1, f0, f1 = xp[idx - 1], xp[idx], fp[idx - 1], fp[idx]
    return f0 + (x - x0) * (f1 - f0) / (x1 - x0)


@dataclass(frozen=True)
class Coefficients:
    """Every coefficient at one time t, as float64 Python floats."""

    t: float
    log_alpha: float
    alpha: float
    sigma: float
    lam: float
    f: float
    g2: float
    d_alpha: float  # d alpha / dt
    d_sigma: float  # d sigma / dt


class Schedule:
    """Base class. Subclasses define log_alpha, sigma, t_of_lambda, f and g2."""

    kind: str = ""
    T: float = 1.0
    default_t_end: float = 1e-3
    prior_std: float = 1.0

    # --- marginal coefficients -------------------------------------------------------------
    def log_alpha(self, t) -> torch.Tensor:
        raise NotImplementedError

    def alpha(self, t) -> torch.Tensor:
        return torch.exp(self.log_alpha(t))

    def sigma(self, t) -> torch.Tensor:
        raise NotImplementedError

    def lambda_(self, t) -> torch.Tensor:
        """Half log-SNR, lambda(t) = log alpha(t) - log sigma(t); decreasing in t."""
        return self.log_alpha(t) - torch.log(self.sigma(t))

    def t_of_lambda(self, lam) -> torch.Tensor:
        """Inverse of lambda_."""
        raise NotImplementedError

    # --- forward SDE dx = f(t) x dt + g(t) dw -----------------------------------------------
    def f(self, t) -> torch.Tensor:
        raise NotImplementedError

    def g2(self, t) -> torch.Tensor:
        raise NotImplementedError

    def g(self, t) -> torch.Tensor:
        return torch.sqrt(self.g2(t))

    # --- time derivatives of alpha and sigma (the velocity v = alpha' x0 + sigma' eps) -------------
    def d_alpha(self, t) -> torch.Tensor:
        """d alpha / dt = f alpha (f = d log alpha / dt)."""
        return self.f(t) * self.alpha(t)

    def d_sigma(self, t) -> torch.Tensor:
        """d sigma / dt = (g^2 + 2 f sigma^2) / (2 sigma), from d sigma^2 / dt = 2 f sigma^2 + g^2."""
        s = self.sigma(t)
        return (self.g2(t) + 2.0 * self.f(t) * s * s) / (2.0 * s)

    def at(self, t) -> Coefficients:
        """All coefficients at the time t, memoised: solvers revisit the same grid times at every step."""
        t = float(t)
        memo = self.__dict__.setdefault("_memo", {})
        c = memo.get(t)
        if c is None:
            tt = torch.tensor(t, dtype=_F64)
            la = float(self.log_alpha(tt))
            c = Coefficients(t, la, math.exp(la), float(self.sigma(tt)), float(self.lambda_(tt)), float(self.f(tt)),
                             float(self.g2(tt)), float(self.d_alpha(tt)), float(self.d_sigma(tt)))
            if len(memo) >= 65536:
                memo.clear()
            memo[t] = c
        return c

    # --- prior ---------------------------------------------------------------------------
    def prior_sample(self, shape, generator=None, dtype=torch.float32, device="cpu") -> torch.Tensor:
        from .noise import randn

        return self.prior_std * randn(tuple(shape), generator=generator, dtype=dtype, device=device)

    def check_time(self, t: float, name: str = "t") -> None:
        if not (0.0 < t <= self.T * (1 + 1e-12)):
            raise ValueError(f"{name}={t!r} is outside this {self.kind} schedule's range (0, {self.T:g}]")

    def describe(self) -> dict:
        """Plain-data description, recorded in result rows and checkpoints."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.describe().items() if k != "kind" and not isinstance(v, list))
        return f"{type(self).__name__}({args})"


class VPSchedule(Schedule):
    """Variance preserving: alpha^2 + sigma^2 = 1, f = dlog(alpha)/dt, g^2 = -2 f.

    Build one with `VPSchedule.linear`, `VPSchedule.cosine` or `VPSchedule.discrete`.
    """

    kind = "vp"

    def sigma(self, t) -> torch.Tensor:
        return torch.sqrt(-torch.expm1(2.0 * self.log_alpha(t)))

    def lambda_(self, t) -> torch.Tensor:
        la = self.log_alpha(t)
        return la - 0.5 * torch.log(-torch.expm1(2.0 * la))

    @staticmethod
    def _log_alpha_of_lambda(lam) -> torch.Tensor:
        return -0.5 * torch.logaddexp(torch.zeros_like(lam), -2.0 * lam)

    def g2(self, t) -> torch.Tensor:
        return -2.0 * self.f(t)

    @staticmethod
    def linear(beta_min: float = 0.1, beta_max: float = 20.0) -> "VPLinear":
        """score_sde's VP SDE: beta(t) = beta_min + t (beta_max - beta_min), t in [0, 1]."""
        return VPLinear(beta_min, beta_max)

    @staticmethod
    def cosine(s: float = 0.008, T: float = 0.9946) -> "VPCosine":
        """Nichol & Dhariwal 2021; T < 1 keeps lambda finite (DPM-Solver uses 0.9946)."""
        return VPCosine(s, T)

    @staticmethod
    def discrete(betas) -> "VPDiscrete":
        """DDPM betas in continuous time as DPM-Solver wraps them: t_n = (n+1)/N."""
        return VPDiscrete(betas)


class VPLinear(VPSchedule):
    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        if not (0 < beta_min < beta_max and math.isfinite(beta_max)):
            raise ValueError(f"need 0 < beta_min < beta_max, got beta_min={beta_min}, beta_max={beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def log_alpha(self, t):
        t = _t64(t)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def t_of_lambda(self, lam):
        # -log_alpha = b0 t / 2 + (b1 - b0) t^2 / 4, solved for t with the stable root.
        b0, db = self.beta_min, self.beta_max - self.beta_min
        c = -2.0 * self._log_alpha_of_lambda(_t64(lam))  # = b0 t + db t^2 / 2
        return 2.0 * c / (b0 + torch.sqrt(b0**2 + 2.0 * db * c))

    def f(self, t):
        return -0.5 * (self.beta_min + _t64(t) * (self.beta_max - self.beta_min))

    def describe(self):
        return {"kind": "vp_linear", "beta_min": self.beta_min, "beta_max": self.beta_max}


class VPCosine(VPSchedule):
    def __init__(self, s: float = 0.008, T: float = 0.9946):
        if not (s > 0 and 0 < T < 1):
            raise ValueError(f"need s > 0 and 0 < T < 1 for the cosine schedule, got s={s}, T={T}")
        self.s, self.T = float(s), float(T)
        self._log_alpha_0 = math.log(math.cos(self.s / (1 + self.s) * math.pi / 2))

    def log_alpha(self, t):
        return torch.log(torch.cos((_t64(t) + self.s) / (1 + self.s) * math.pi / 2)) - self._log_alpha_0

    def t_of_lambda(self, lam):
        la = self._log_alpha_of_lambda(_t64(lam))
        return torch.arccos(torch.exp(la + self._log_alpha_0)) * 2 * (1 + self.s) / math.pi - self.s

    def f(self, t):
        k = math.pi / (2 * (1 + self.s))
        return -k * torch.tan((_t64(t) + self.s) * k)

    def describe(self):
        return {"kind": "vp_cosine", "s": self.s, "T": self.T}


class VPDiscrete(VPSchedule):
    def __init__(self, betas):
        betas = torch.as_tensor(betas, dtype=_F64).flatten()
        if betas.numel() < 2 or not torch.all((betas > 0) & (betas < 1)):
            raise ValueError("betas must be a sequence of at least 2 values in (0, 1)")
        self.betas = betas
        n = betas.numel()
        self.t_grid = torch.arange(1, n + 1, dtype=_F64) / n
        self.log_alpha_grid = 0.5 * torch.cumsum(torch.log1p(-betas), 0)
        self.default_t_end = 1.0 / n

    def log_alpha(self, t):
        return _interp(_t64(t), self.t_grid, self.log_alpha_grid)

    def t_of_lambda(self, lam):
        la = self._log_alpha_of_lambda(_t64(lam))
        return _interp(-la, -self.log_alpha_grid, self.t_grid)

    def f(self, t):
        t = _t64(t)
        xp, fp = self.t_grid, self.log_alpha_grid
        idx = torch.searchsorted(xp, t.clamp(xp[0], xp[-1])).clamp(1, len(xp) - 1)
        return (fp[idx] - fp[idx - 1]) / (xp[idx] - xp[idx - 1])

    def describe(self):
        return {"kind": "vp_discrete", "n": int(self.betas.numel()),
                "beta_first": float(self.betas[0]), "beta_last": float(self.betas[-1])}


class SubVPSchedule(Schedule):
    """score_sde's sub-VP SDE: alpha as VP linear, sigma = 1 - alpha^2, g^2 = beta (1 - alpha^4)."""

    kind = "subvp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self._vp = VPLinear(beta_min, beta_max)
        self.beta_min, self.beta_max = self._vp.beta_min, self._vp.beta_max

    def log_alpha(self, t):
        return self._vp.log_alpha(t)

    def sigma(self, t):
        return -torch.expm1(2.0 * self.log_alpha(t))

    def t_of_lambda(self, lam):
        # alpha / (1 - alpha^2) = e^lambda  =>  alpha = 2 e^lam / (1 + sqrt(1 + 4 e^{2 lam}))
        lam = _t64(lam)
        la = math.log(2.0) + lam - torch.log1p(torch.sqrt(1.0 + 4.0 * torch.exp(2.0 * lam)))
        return self._vp.t_of_lambda(la - 0.5 * torch.log(-torch.expm1(2.0 * la)))

    def f(self, t):
        return self._vp.f(t)

    def g2(self, t):
        return -2.0 * self.f(t) * -torch.expm1(4.0 * self.log_alpha(t))

    def describe(self):
        return {"kind": "subvp", "beta_min": self.beta_min, "beta_max": self.beta_max}


class VESchedule(Schedule):
    """Variance exploding (score_sde): alpha = 1, sigma(t) = sigma_min (sigma_max / sigma_min)^t."""

    kind = "ve"
    default_t_end = 1e-5

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        if not (0 < sigma_min < sigma_max and math.isfinite(sigma_max)):
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)
        self.prior_std = self.sigma_max

    def log_alpha(self, t):
        return torch.zeros_like(_t64(t))

    def sigma(self, t):
        return self.sigma_min * torch.exp(_t64(t) * self._log_ratio)

    def lambda_(self, t):
        return -(math.log(self.sigma_min) + _t64(t) * self._log_ratio)

    def t_of_lambda(self, lam):
        return (-_t64(lam) - math.log(self.sigma_min)) / self._log_ratio

    def f(self, t):
        return torch.zeros_like(_t64(t))

    def g2(self, t):
        return 2.0 * self._log_ratio * self.sigma(t) ** 2

    def describe(self):
        return {"kind": "ve", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


class FlowSchedule(Schedule):
    """Rectified flow (Liu et al. 2022; SD3, Esser et al. 2024; Flux): alpha = 1 - t, sigma = t, t in [0, 1].

    The prior is N(0, I) at t = 1, where alpha = 0 and lambda = -inf: the schedule is valid there, with
    f = -1/(1 - t) and g^2 = 2t/(1 - t) infinite (the SDE form); the velocity alpha' x0 + sigma' eps = eps - x0 is
    finite (alpha' = -1, sigma' = 1). lambda = log((1 - t)/t), t(lambda) = 1/(1 + e^lambda).
    """

    kind = "flow"

    def log_alpha(self, t):
        return torch.log1p(-_t64(t))

    def alpha(self, t):
        return 1.0 - _t64(t)

    def sigma(self, t):
        return _t64(t).clone()

    def lambda_(self, t):
        t = _t64(t)
        return torch.log1p(-t) - torch.log(t)

    def t_of_lambda(self, lam):
        return torch.sigmoid(-_t64(lam))

    def f(self, t):
        return -1.0 / (1.0 - _t64(t))

    def g2(self, t):
        t = _t64(t)
        return 2.0 * t / (1.0 - t)

    def d_alpha(self, t):
        return torch.full_like(_t64(t), -1.0)

    def d_sigma(self, t):
        return torch.ones_like(_t64(t))

    def describe(self):
        return {"kind": "flow"}
