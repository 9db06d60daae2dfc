"""Per-cell metrics with their 95% intervals: path error against the reference solution, the distance of the
samples' distribution to the reference solution's (no data needed), the exact NLL gap, and sample quality
against real data.

A cell's samples become an `Observation`: per-sample arrays (the points the distribution metrics use —
low-dimensional samples, image features, or pixels where there is no feature extractor —, exact
log-densities, squared and largest path errors). An `Evaluator`
holds what a group's cells are measured against (real data, exact statistics) and turns an observation
into each metric as a function of sample indices, so one bootstrap (bench.intervals) gives the intervals
and a paired bootstrap every comparison between solvers. KID, MMD and the NLL gap use their
standard errors, as does the MMD (the same U-statistic). The evaluator is built from arrays only, so the report rebuilds it from a run's files.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from reference_models import ReferenceModel
from reference_models.features import wilson_interval

from . import intervals
from .schema import METRICS, bounds

# Exact samples that estimate E[log p_t_end] for the NLL gap: many, so that its noise is the sampler's.
NLL_EXACT_SAMPLES = 20_000
SWD_PROJECTIONS = 256


def path_errors(x: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """RMS over every coordinate of every sample, and the largest absolute coordinate error, of x - ref."""
    d = (x.double().cpu() - ref.double().cpu()).reshape(x.shape[0], -1)
    return {"error_rmse": float(d.pow(2).mean().sqrt()), "error_max": float(d.abs().max())}


def log_density(ref_model: ReferenceModel, x: torch.Tensor, labels: torch.Tensor | None = None) -> np.ndarray:
    """log p_t_end of each sample under an exact model's marginal at t_end (float64); with `labels` (guided sampling),
    under the class-conditional marginal p_t_end(x | label) of each sample."""
    sched, mix = ref_model.schedule, ref_model.mixture
    if labels is not None:
        return mix.conditional_log_prob(x.double().cpu(), labels.cpu(), sched, sched.default_t_end).detach().numpy()
    return mix.log_prob(x.double().cpu(), sched, sched.default_t_end).numpy()


def exact_log_likelihood(ref_model: ReferenceModel, seed: int, n: int = NLL_EXACT_SAMPLES,
                         conditional: bool = False) -> np.ndarray:
    """(mean, variance, count) of log p_t_end over `n` exact draws of the model's marginal at t_end; `conditional`:
    of log p_t_end(x | c) over exact draws of p_t_end(x | c), c uniform over the classes (as guided runs draw them)."""
    sched, mix = ref_model.schedule, ref_model.mixture
    gen = torch.Generator().manual_seed(10_007 * seed + 17)
    labels = torch.randint(0, mix.num_classes, (n,), generator=gen) if conditional else None
    draws = mix.sample(n, gen, schedule=sched, t=sched.default_t_end, dtype=torch.float64, labels=labels)
    lp = log_density(ref_model, draws, labels)
    return np.array([lp.mean(), lp.var(ddof=1), float(n)])


@dataclass
class Observation:
    """Per-sample arrays of one cell (or of the reference solution, or of real data)."""

    points: np.ndarray | None  # (n, D): low-dimensional samples, image features, or pixels (no feature extractor)
    log_p: np.ndarray | None = None  # (n,): exact models
    sq_err: np.ndarray | None = None  # (n,): mean squared path error per sample
    max_err: np.ndarray | None = None  # (n,): largest absolute coordinate error per sample
    label_ok: np.ndarray | None = None  # (n,): 1 where a classifier assigns the sample its intended label (guided)

    FIELDS = ("points", "log_p", "sq_err", "max_err", "label_ok")

    @property
    def n(self) -> int:
        return len(next(a for a in (self.points, self.log_p, self.sq_err, self.label_ok) if a is not None))

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class Evaluator:
    """What a group's cells are measured against; gives each metric as a function of sample indices."""

    def __init__(self, real_points: np.ndarray | None, exact: np.ndarray | None, seed: int, family: str,
                 ref_points: np.ndarray | None = None, fid_stats: tuple[np.ndarray, np.ndarray] | None = None,
                 ref_metric: str | None = None):
        """`real_points`: real data in the space of `points` (None: no data); `ref_points`: the reference
        solution's points, for the data-free metric `ref_metric`: "fd_ref" where points are image features,
        "swd_ref" where they are samples or pixels (default: by `family`); `fid_stats`: precomputed (mu, sigma)
        of real features, for FID where the real features are not at hand."""
        from . import quality as q

        self.family, self.seed, self.exact = family, seed, exact
        self.real = None if real_points is None else np.asarray(real_points, dtype=np.float64)
        self.ref = None if ref_points is None else np.asarray(ref_points, dtype=np.float64)
        self.ref_metric = None if self.ref is None else ref_metric or ("fd_ref" if family == "image" else "swd_ref")
        if self.ref_metric not in (None, "fd_ref", "swd_ref"):
            raise ValueError(f"unknown data-free metric {ref_metric!r}; valid: fd_ref, swd_ref")
        self._mmd = self._fid = self._ref_fd = None
        if self.real is not None and family == "2d":
            self._kernel = q.mmd_kernel(torch.from_numpy(self.real))
        if self.real is not None and family == "image":
            self._fid = q.Frechet(torch.from_numpy(self.real))
        elif fid_stats is not None:
            self._fid = q.Frechet.from_stats(*fid_stats)
        if self.ref is not None and self.ref_metric == "fd_ref":
            self._ref_fd = q.Frechet(torch.from_numpy(self.ref))

    def _directions(self, dim: int) -> np.ndarray:
        gen = torch.Generator().manual_seed(self.seed)
        dirs = torch.randn(dim, SWD_PROJECTIONS, generator=gen, dtype=torch.float64)
        return (dirs / dirs.norm(dim=0, keepdim=True)).numpy()

    def metrics(self, obs: Observation) -> list[str]:
        """The metrics this evaluator can measure on `obs`."""
        out = []
        if obs.sq_err is not None:
            out += ["error_rmse", "error_max"]
        if obs.log_p is not None and self.exact is not None:
            out.append("nll_gap")
        if obs.points is not None and self.real is not None:
            out += ["swd", "mmd"] if self.family == "2d" else ["fid", "kid"]
        elif obs.points is not None and self._fid is not None:  # precomputed statistics: FID only
            out.append("fid")
        if obs.points is not None and self.ref is not None and obs.points.shape[1] == self.ref.shape[1]:
            out.append(self.ref_metric)
        if obs.label_ok is not None:
            out.append("label_error")
        return out

    def statistic(self, obs: Observation, metric: str):
        """`metric` of `obs` as a function of an index array (None: every sample)."""
        pick = (lambda a, idx: a if idx is None else a[idx])
        if metric == "error_rmse":
            return lambda idx: math.sqrt(float(pick(obs.sq_err, idx).mean()))
        if metric == "error_max":
            return lambda idx: float(pick(obs.max_err, idx).max())
        if metric == "nll_gap":
            return lambda idx: float(self.exact[0] - pick(obs.log_p, idx).mean())
        if metric == "label_error":
            return lambda idx: 1.0 - float(pick(obs.label_ok, idx).mean())
        if metric == "swd":
            return self._swd_statistic(obs, self.real)
        if metric in ("swd_ref", "fd_ref"):
            return self._reference_statistic(obs, metric)
        if metric == "mmd":
            return self._mmd_statistic(obs)
        if metric == "fid":
            return lambda idx: self._fid(pick(obs.points, idx))
        if metric == "kid":
            from .quality import kid_with_stderr
            return lambda idx: kid_with_stderr(pick(obs.points, idx), self.real)[0]
        raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")

    def _reference_statistic(self, obs: Observation, metric: str):
        """The data-free metric as a function of sample indices. A cell's samples and the reference solution's are
        pairs (the same x_T), so a resample takes the same indices of both: the interval is that of the distance
        between the two distributions these x_T give, not the sampling noise of two independent sets (which
        would swamp it as the solver converges). Sets of other sizes are compared with the reference fixed."""
        from .quality import Frechet, projected_quantiles

        if len(obs.points) != len(self.ref):
            return self._swd_statistic(obs, self.ref) if metric == "swd_ref" else (
                lambda idx: self._ref_fd(obs.points if idx is None else obs.points[idx]))
        if metric == "fd_ref":
            return lambda idx: (self._ref_fd(obs.points) if idx is None else
                                Frechet(torch.from_numpy(self.ref[idx]))(obs.points[idx]))
        dirs = self._directions(self.ref.shape[1])
        proj, ref = torch.from_numpy(obs.points @ dirs), torch.from_numpy(self.ref @ dirs)

        def swd(idx):
            a, b = (proj, ref) if idx is None else (proj[torch.from_numpy(idx)], ref[torch.from_numpy(idx)])
            return float(torch.sqrt(((projected_quantiles(a, len(a)) - projected_quantiles(b, len(b))) ** 2).mean()))
        return swd

    def _swd_statistic(self, obs: Observation, target: np.ndarray):
        """Sliced Wasserstein of obs's points (resampled) to the fixed `target` points."""
        from .quality import projected_quantiles

        dirs = self._directions(target.shape[1])
        proj = torch.from_numpy(obs.points @ dirs)
        k = max(len(proj), len(target))
        real = projected_quantiles(torch.from_numpy(target @ dirs), k)

        def swd(idx):
            p = proj if idx is None else proj[torch.from_numpy(idx)]
            return float(torch.sqrt(((projected_quantiles(p, k) - real) ** 2).mean()))
        return swd

    def _mmd_statistic(self, obs: Observation):
        x, y = torch.from_numpy(obs.points), torch.from_numpy(self.real)
        kxx = self._kernel(x, x).numpy()
        np.fill_diagonal(kxx, 0.0)
        kxy = self._kernel(x, y).numpy().mean(1)
        if self._mmd is None:
            kyy = self._kernel(y, y).numpy()
            np.fill_diagonal(kyy, 0.0)
            self._mmd = kyy.sum() / (len(y) * (len(y) - 1))
        n = len(x)

        def mmd(idx):
            kx = kxx if idx is None else kxx[np.ix_(idx, idx)]
            return float(kx.sum() / (n * (n - 1)) + self._mmd - 2.0 * (kxy if idx is None else kxy[idx]).mean())
        return mmd

    def measure(self, obs: Observation, seed: int) -> dict[str, float]:
        """Every metric of `obs` with its 95% interval: {m: value, m_lo: ..., m_hi: ...}."""
        out = {}
        for m in self.metrics(obs):
            if METRICS[m].interval == "stderr":
                value, lo, hi = intervals.normal(*self.stderr(obs, m))
            elif METRICS[m].interval == "wilson":  # label_error: misses out of n
                misses, n = round(float((1 - obs.label_ok).sum())), len(obs.label_ok)
                value, (lo, hi) = misses / n, wilson_interval(misses, n)
            else:
                value, lo, hi = intervals.bootstrap(self.statistic(obs, m), obs.n, seed)
            out.update({m: value, bounds(m)[0]: lo, bounds(m)[1]: hi})
        return out

    def stderr(self, obs: Observation, metric: str) -> tuple[float, float]:
        """(value, standard error) of a metric whose interval is normal."""
        if metric == "nll_gap":
            mean, var, count = self.exact
            lp = obs.log_p
            return float(mean - lp.mean()), math.sqrt(lp.var(ddof=1) / len(lp) + var / count)
        if metric == "kid":
            from .quality import kid_with_stderr
            return kid_with_stderr(obs.points, self.real)
        if metric == "mmd":
            from .quality import u_statistic
            x, y = torch.from_numpy(obs.points), torch.from_numpy(self.real)
            return u_statistic(*(self._kernel(a, b).numpy() for a, b in ((x, x), (y, y), (x, y))))
        raise ValueError(f"{metric!r} has no standard-error interval")

    def paired(self, a: Observation, b: Observation, metric: str, seed: int) -> tuple[float, float, float]:
        """quality(a) - quality(b) (lower is better; signed metrics by their size) with its paired interval."""
        fa, fb = self.statistic(a, metric), self.statistic(b, metric)
        if METRICS[metric].signed:
            return intervals.paired(lambda i: abs(fa(i)), lambda i: abs(fb(i)), a.n, seed)
        return intervals.paired(fa, fb, a.n, seed)


def to_unit_range(ref_model: ReferenceModel, x: torch.Tensor) -> torch.Tensor:
    """A model's image samples mapped from its sample range (diffusers' VE pipelines: [0, 1]) to [-1, 1], the
    range of real data and of the feature extractors' input; low-dimensional samples unchanged."""
    lo, hi = ref_model.sample_range
    if ref_model.metric != "image" or (lo, hi) == (-1.0, 1.0):
        return x
    return (x - lo) * (2.0 / (hi - lo)) - 1.0


def observe(ref_model: ReferenceModel, x: torch.Tensor, reference_x: torch.Tensor | None = None,
            features=None, model_samples: bool = True, labels: torch.Tensor | None = None,
            classify=None) -> Observation:
    """The per-sample arrays of samples `x`: points (low-dimensional samples; for images `features(x)`, or the
    pixels where there is no feature extractor), exact log-densities, and path errors against `reference_x` (in
    the model's units). Images of the model (`model_samples`; not real data) are mapped to [-1, 1] first.
    Guided samples (`labels`, one intended class per sample): exact log-densities under p(x | label), and with
    `classify` (samples in [-1, 1] -> predicted labels) whether each sample is of its intended class."""
    x = x.detach().cpu()
    obs = Observation(points=None)
    shown = to_unit_range(ref_model, x) if model_samples else x
    if ref_model.metric == "2d" or features is None:
        obs.points = shown.double().flatten(1).numpy()
    else:
        obs.points = features(shown)
    if ref_model.mixture is not None:
        obs.log_p = log_density(ref_model, x, labels if model_samples else None)
    if labels is not None and classify is not None and model_samples:
        obs.label_ok = (classify(shown).cpu() == labels.cpu()).double().numpy()
    if reference_x is not None:
        d = (x.double() - reference_x.double().cpu()).flatten(1)
        obs.sq_err, obs.max_err = d.pow(2).mean(1).numpy(), d.abs().amax(1).numpy()
    return obs


def all_finite(values: dict[str, float]) -> bool:
    return all(v is None or math.isfinite(v) for v in values.values())
