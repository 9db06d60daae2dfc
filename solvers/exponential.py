"""The exponential-integrator vocabulary of the solvers: phi-functions, the data- and noise-prediction steps, a history.

With h = lambda_t - lambda_s, the exact PF-ODE solution in data prediction (Lu et al. 2022b, eq. 9) is
  x_t = (sigma_t / sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^{lambda} x0(x_lambda) dlambda,
and expanding x0 in lambda about lambda_s gives (ibid., eq. 10)
  x_t = (sigma_t / sigma_s) x_s + alpha_t sum_k h^{k+1} phi_{k+1}(-h) x0^{(k)}(lambda_s),
with phi_k(z) = sum_j z^j / (j + k)!. All coefficients are float64 Python floats in expm1 forms.
"""
from __future__ import annotations

import math

import torch

from .schedules import Coefficients

FEW_STEPS = 10  # lower_order_final lowers the last orders below this many steps (DPM-Solver's rule)
SERIES_BELOW = 1.0  # |z| below which phi_k is summed as its series (the closed forms cancel there)
_TERMS = 24  # series terms: 1 / 24! < 1e-23


def _series(k: int, z: float) -> float:
    term, total = 1.0 / math.factorial(k), 0.0
    for j in range(_TERMS):
        total += term
        term *= z / (j + k + 1)
    return total


def phi_1(z: float) -> float:
    """phi_1(z) = expm1(z) / z (1 at z = 0)."""
    return math.expm1(z) / z if abs(z) >= SERIES_BELOW else _series(1, z)


def phi_2(z: float) -> float:
    """phi_2(z) = (expm1(z) - z) / z^2 (1/2 at z = 0)."""
    return (math.expm1(z) - z) / (z * z) if abs(z) >= SERIES_BELOW else _series(2, z)


def phi_3(z: float) -> float:
    """phi_3(z) = (expm1(z) - z - z^2 / 2) / z^3 (1/6 at z = 0)."""
    return (math.expm1(z) - z - 0.5 * z * z) / z**3 if abs(z) >= SERIES_BELOW else _series(3, z)


def phi_4(z: float) -> float:
    """phi_4(z) = (expm1(z) - z - z^2/2 - z^3/6) / z^4 (1/24 at z = 0); the closed form cancels more than phi_3's,
    so the series serves up to |z| = 2."""
    if abs(z) >= 2.0 * SERIES_BELOW:
        return (math.expm1(z) - z - 0.5 * z * z - z**3 / 6.0) / z**4
    return _series(4, z)


PHI = (None, phi_1, phi_2, phi_3, phi_4)


def data_step(x, s: Coefficients, t: Coefficients, x0, derivatives=()):
    """Data-prediction exponential-integrator step s -> t (Lu et al. 2022b, eq. 10), truncated after len(derivatives).

    x0: the data prediction at s (or an estimate of it elsewhere in the step, which is what the 2S and 2M
    updates of the paper pass); derivatives: estimates of d^k x0 / dlambda^k at s, k = 1, 2.
    With no derivatives it is DDIM: x_t = (sigma_t/sigma_s) x_s + alpha_t (1 - e^{-h}) x0. VE (alpha = 1) included,
    and a start where alpha_s = 0 (lambda_s = -inf, flow matching at t = 1): h = inf, 1 - e^{-h} = 1.
    """
    h = t.lam - s.lam
    if derivatives and not math.isfinite(h):
        raise ValueError("a step from lambda = -inf has no derivative terms (its history cannot give them)")
    out = x.mul(t.sigma / s.sigma).add_(x0, alpha=t.alpha * -math.expm1(-h))
    for k, d in enumerate(derivatives, start=1):
        out = out.add_(d, alpha=t.alpha * h ** (k + 1) * PHI[k + 1](-h))
    return out


def noise_step(x, s: Coefficients, t: Coefficients, eps, derivatives=()):
    """Noise-prediction exponential-integrator step s -> t (Lu et al. 2022, eq. 3.4), truncated after len(derivatives).

      x_t = (alpha_t / alpha_s) x_s - sigma_t sum_k h^{k+1} phi_{k+1}(h) eps^{(k)}(lambda_s),
    eps: the noise prediction at s (or an estimate of it elsewhere in the step); derivatives: estimates of
    d^k eps / dlambda^k at s. With no derivatives it is DDIM: x_t = (alpha_t/alpha_s) x_s - sigma_t expm1(h) eps.
    alpha_s must be > 0: in noise prediction a step cannot leave lambda = -inf.
    """
    h = t.lam - s.lam
    if not math.isfinite(h):
        raise ValueError(f"a noise-prediction step needs alpha > 0 at its start; t={s.t:g} has alpha = {s.alpha:g}")
    out = x.mul(math.exp(t.log_alpha - s.log_alpha)).add_(eps, alpha=-t.sigma * math.expm1(h))
    for k, d in enumerate(derivatives, start=1):
        out = out.add_(d, alpha=-t.sigma * h ** (k + 1) * PHI[k + 1](h))
    return out


def step_order(order: int, i: int, steps: int, have: int, lower_order_final: bool) -> int:
    """The order of a multistep solver's step i of `steps`: at most `order` and `have` (the history's length),
    and with `lower_order_final` below FEW_STEPS steps, at most the steps left (DPM-Solver's rule)."""
    o = min(order, have)
    if lower_order_final and steps < FEW_STEPS:
        o = min(o, steps - i)
    return o


class History:
    """The newest `size` (lambda, prediction) pairs of a multistep solver, newest last; local to the solver's loop.

    A point at lambda = -inf (alpha = 0: flow matching's t = 1) is kept only while it is the newest: no difference
    can be taken across it, so the steps after it warm up again from the next point.
    """

    def __init__(self, size: int):
        self.size, self.lams, self.values = size, [], []

    def push(self, lam: float, value) -> None:
        keep = [i for i, v in enumerate(self.lams) if math.isfinite(v)] if math.isfinite(lam) else []
        self.lams = ([self.lams[i] for i in keep] + [lam])[-self.size:]
        self.values = ([self.values[i] for i in keep] + [value])[-self.size:]

    def __len__(self) -> int:
        return len(self.values)

    def newest(self):
        return self.values[-1]

    def derivatives(self, order: int) -> tuple:
        """Estimates of x0', x0'' (in lambda) at the newest point from the newest `order` points: order - 1 of them.

        Divided differences on the (non-uniform) lambdas: order 2 gives the backward difference, first-order
        accurate; order 3 the derivatives of the interpolating parabola, x0' second- and x0'' first-order accurate.
        """
        if not 1 <= order <= len(self.values):
            raise ValueError(f"history holds {len(self.values)} points; order must be 1 to {len(self.values)}")
        lam, m = self.lams[-order:], self.values[-order:]
        if order == 1:
            return ()
        d0 = (m[-1] - m[-2]) / (lam[-1] - lam[-2])
        if order == 2:
            return (d0,)
        d1 = (m[-2] - m[-3]) / (lam[-2] - lam[-3])
        second = (d0 - d1) * (2.0 / (lam[-1] - lam[-3]))  # x0'' of the parabola through the three points
        return (d0 + second * (0.5 * (lam[-1] - lam[-2])), second)


def multistep_update(step, x, s: Coefficients, t: Coefficients, hist: History, order: int, curvature: float = 1.0):
    """A multistep update s -> t by `step` (data_step or noise_step) from the newest `order` points of `hist`.

    Order 1: the exponential Euler step (DDIM). Order 2: the prediction extrapolated linearly to lambda_s + h/2
    (DPM-Solver++(2M), Algorithm 2; DPM-Solver-2M). Order 3: the Taylor expansion to the 2nd derivative, its term
    scaled by `curvature` (1: eq. 10; 0.5: DPM-Solver's multistep code, diffusers and k-diffusion, global order 2).
    """
    if order == 2:  # newest + (h/2) (newest - previous) / (lambda difference): one lerp pass
        (l0, l1), (m0, m1) = hist.lams[-2:], hist.values[-2:]
        return step(x, s, t, torch.lerp(m0, m1, 1.0 + 0.5 * (t.lam - s.lam) / (l1 - l0)))
    d = hist.derivatives(order)
    return step(x, s, t, hist.newest(), d[:1] + tuple(curvature * v for v in d[1:]))
