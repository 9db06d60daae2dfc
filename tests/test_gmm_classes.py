"""Class-conditional Gaussian mixtures: exact p(c | x_t), p_t(x | c) and guided scores (CFG and classifier guidance)."""
from __future__ import annotations

import functools

import pytest
import torch

import reference_models.registry as rm
from reference_models import digits
from reference_models.gmm import GaussianMixture
from solvers import PREDICTIONS

F64 = torch.float64
CLASSES = [0, 1, 1, 2, 0, 2, 2]  # 3 classes, two owning several components


@functools.lru_cache(maxsize=1)
def _parts():
    """Means, full covariances and weights of a 3-D, 7-component test mixture."""
    g = torch.Generator().manual_seed(0)
    means = 1.5 * torch.randn(7, 3, generator=g, dtype=F64)
    a = torch.randn(7, 3, 3, generator=g, dtype=F64)
    covs = 0.3 * a @ a.transpose(1, 2) + 0.05 * torch.eye(3, dtype=F64)
    weights = torch.rand(7, generator=g, dtype=F64) + 0.2
    return means, covs, weights


def mixture(classes=CLASSES) -> GaussianMixture:
    means, covs, weights = _parts()
    return GaussianMixture(means, covs, weights, classes=classes)


def points(n=6, seed=1, dim=3) -> torch.Tensor:
    return 1.5 * torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=F64)


# (schedule, t): VP (alpha = 6e-3 at t = 1), VE, and flow up to alpha = 1e-9 and alpha = 0
TIMES = [("vp", 0.0), ("vp", 0.3), ("vp", 1.0), ("ve", 0.2), ("ve", 1.0), ("flow", 0.5), ("flow", 1 - 1e-9),
         ("flow", 1.0)]


@pytest.mark.parametrize("name", ["test", "gmm2d", "gmm-digits"])
@pytest.mark.parametrize("sched,t", TIMES)
def test_class_posterior_is_a_distribution(name, sched, t):
    mix = mixture() if name == "test" else rm.load(name).mixture
    x = 2.0 * torch.randn(16, mix.dim, generator=torch.Generator().manual_seed(2), dtype=F64).reshape(16, *mix.shape)
    post = mix.class_log_posterior(x, rm.make_schedule(sched), t)
    assert post.shape == (16, mix.num_classes) and post.dtype == F64
    assert torch.logsumexp(post, dim=1).abs().max() < 1e-12
    if sched == "flow" and t == 1.0:  # x_t is pure noise: the posterior is the prior
        assert torch.allclose(post.exp(), mix.class_log_weights.exp().expand(16, -1), atol=1e-12)
    # a (B,) tensor of times gives the same rows as the scalar
    assert torch.allclose(mix.class_log_posterior(x, rm.make_schedule(sched), torch.full((16,), t)), post, atol=1e-14)


def _grad_fd(f, x: torch.Tensor, h: float = 1e-5) -> torch.Tensor:
    """Central finite differences of a per-sample scalar function f: (B, D) -> (B,)."""
    out = torch.zeros_like(x)
    for d in range(x.shape[1]):
        e = torch.zeros_like(x)
        e[:, d] = h
        out[:, d] = (f(x + e) - f(x - e)) / (2 * h)
    return out


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("sched,t", [("vp", 0.05), ("vp", 0.6), ("ve", 0.3), ("flow", 0.4), ("flow", 0.95)])
def test_conditional_and_guided_scores_are_gradients(sched, t):
    mix, s, x = mixture(), rm.make_schedule(sched), points()
    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    cond = mix.conditional_score(x, labels, s, t)
    assert _rel(cond, _grad_fd(lambda y: mix.conditional_log_prob(y, labels, s, t), x)) < 1e-6
    for w in (0.0, 1.0, 4.0):
        guided = mix.guided_score(x, labels, w, s, t)
        def log_density(y, w=w):
            return (1 - w) * mix.log_prob(y, s, t) + w * mix.conditional_log_prob(y, labels, s, t)

        assert _rel(guided, _grad_fd(log_density, x)) < 1e-6
        # classifier guidance at the same w: s_u + w grad log p(c | x_t), the gradient by autograd
        xg = x.clone().requires_grad_(True)
        post = mix.class_log_posterior(xg, s, t).gather(1, labels[:, None]).sum()
        (grad,) = torch.autograd.grad(post, xg)
        assert (guided - (mix.score(x, s, t) + w * grad)).abs().max() < 1e-10
    assert torch.equal(mix.guided_score(x, labels, 0.0, s, t), mix.score(x, s, t))
    # a per-sample scale
    w = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    assert torch.allclose(mix.guided_score(x, labels, w, s, t)[3], mix.guided_score(x, labels, 3.0, s, t)[3])


def test_conditional_densities_agree_with_bayes():
    """log p(x | c) + log p(c) - log p(x) = log p(c | x), and the class weights sum to 1."""
    mix, s, x = mixture(), rm.make_schedule("vp"), points()
    post = mix.class_log_posterior(x, s, 0.4)
    for c in range(3):
        lhs = mix.conditional_log_prob(x, c, s, 0.4) + mix.class_log_weights[c] - mix.log_prob(x, s, 0.4)
        assert (lhs - post[:, c]).abs().max() < 1e-12
    assert abs(float(mix.class_log_weights.exp().sum()) - 1) < 1e-14


def _sub_mixture(c: int) -> GaussianMixture:
    """The mixture of class c's components only, weights renormalised."""
    means, covs, weights = _parts()
    keep = torch.tensor(CLASSES) == c
    return GaussianMixture(means[keep], covs[keep], weights[keep] / weights[keep].sum())


@pytest.mark.parametrize("sched", ["vp", "ve", "flow"])
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_conditional_fn_is_the_class_model(sched, prediction):
    mix, s = mixture(), rm.make_schedule(sched)
    x = points(8)
    t = torch.tensor([1e-3, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 1.0], dtype=F64)
    fn = mix.conditional_fn(s, prediction)
    uncond = mix.model(s, prediction).fn(x, t)
    assert (fn(x, t, torch.full((8,), 3)) - uncond).abs().max() < 1e-12  # null label = num_classes
    assert (mix.conditional_fn(s, prediction, null_label=-1)(x, t, torch.full((8,), -1)) - uncond).abs().max() < 1e-12
    labels = torch.tensor([0, 1, 2, 3, 2, 1, 0, 3])  # classes and null mixed in one batch
    out = fn(x, t, labels)
    for i, c in enumerate(labels.tolist()):
        want = uncond[i] if c == 3 else _sub_mixture(c).model(s, prediction).fn(x, t)[i]
        assert (out[i] - want).abs().max() < 1e-12, (i, c)
    # network conventions: x's dtype and device
    assert fn(x.float(), t.float(), labels).dtype == torch.float32


def test_classifier_fn_gives_the_exact_posterior_as_differentiable_logits():
    mix, s = mixture(), rm.make_schedule("vp")
    x = points().float().requires_grad_(True)
    t = torch.full((6,), 0.3)
    logits = mix.classifier_fn(s)(x, t)
    assert logits.shape == (6, 3) and logits.dtype == torch.float32
    (grad,) = torch.autograd.grad(logits[:, 1].sum(), x)
    want = mix.guided_score(x.detach(), 1, 1.0, s, 0.3) - mix.score(x.detach(), s, 0.3)
    assert torch.allclose(grad.double(), want, rtol=1e-4, atol=1e-5)


def test_labelled_draws_come_from_their_class():
    mix = rm.load("gmm2d").mixture  # modes 2 apart on the circle, sd 0.25: a draw's class is plain to see
    labels = torch.arange(4000) % 8
    x = mix.sample(4000, torch.Generator().manual_seed(0), labels=labels, dtype=F64)
    assert (mix.class_log_posterior(x).argmax(1) == labels).double().mean() > 0.99
    for c in range(8):
        assert (x[labels == c].mean(0) - mix.means[c]).abs().max() < 0.05  # 500 draws: standard error 0.011
    # several components per class: draws follow the renormalised within-class weights
    m = mixture()
    x = m.sample(4000, torch.Generator().manual_seed(1), labels=2, dtype=F64)
    means, _, weights = _parts()
    keep = torch.tensor(CLASSES) == 2
    want = (weights[keep, None] * means[keep]).sum(0) / weights[keep].sum()
    assert (x.mean(0) - want).abs().max() < 0.1
    # unlabelled draws are unchanged by the class map
    plain = GaussianMixture(*_parts())
    assert torch.equal(plain.sample(50, torch.Generator().manual_seed(3)), m.sample(50, torch.Generator().manual_seed(3)))


def test_registered_models_carry_their_classes():
    g2, gd = rm.load("gmm2d"), rm.load("gmm-digits")
    assert (g2.classes, gd.classes) == (8, 10)
    assert torch.equal(g2.mixture.classes, torch.arange(8))
    assert GaussianMixture(torch.zeros(2, 1), torch.ones(2)).num_classes == 0


def test_gmm_digits_components_are_grouped_by_digit():
    mix = digits.digits_mixture()
    x, y = digits.train_split()
    flat = x.reshape(len(x), -1).double()
    assert mix.means.shape[0] == digits.GMM_COMPONENTS
    assert torch.equal(mix.classes, torch.arange(10).repeat_interleave(digits.GMM_PER_CLASS))
    # class weights are the digits' frequencies; each class's components average to that digit's mean image
    # (EM's M step: sum_k N_k mu_k = sum of the points it was fitted to)
    assert torch.allclose(mix.class_log_weights.exp(), torch.bincount(y, minlength=10).double() / len(y), atol=1e-12)
    w = mix.log_weights.exp()
    for c in range(10):
        mine = mix.classes == c
        mean_c = (w[mine, None] * mix.means[mine]).sum(0) / w[mine].sum()
        assert (mean_c - flat[y == c].mean(0)).abs().max() < 1e-8
    # the exact classifier p(c | x_0) reads held-out digits
    xt, yt = digits.test_split()
    assert (mix.class_log_posterior(xt).argmax(1) == yt).double().mean() > 0.95


def test_gmm_digits_refit_is_deterministic():
    again = digits.digits_mixture.__wrapped__()  # a fresh fit beside the cached one
    first = digits.digits_mixture()
    assert (again.means - first.means).abs().max() < 1e-10
    assert torch.equal(again.classes, first.classes)


def test_fingerprint_includes_the_class_map():
    s = rm.make_schedule("vp")
    a, b, plain = mixture(), mixture([0, 1, 1, 2, 2, 0, 2]), GaussianMixture(*_parts())
    assert len({rm.mixture_fingerprint(m, s) for m in (a, b, plain)}) == 3
    assert rm.mixture_fingerprint(a, s) == rm.mixture_fingerprint(mixture(), s)


def test_bad_classes_and_labels():
    means, covs, weights = _parts()
    with pytest.raises(ValueError, match=r"must own a component; class 1 owns none"):
        GaussianMixture(means, covs, weights, classes=[0, 2, 2, 0, 0, 2, 2])
    with pytest.raises(ValueError, match=r"classes must have shape \(7,\)"):
        GaussianMixture(means, covs, weights, classes=[0, 1, 2])
    with pytest.raises(ValueError, match="classes must be integers"):
        GaussianMixture(means, covs, weights, classes=[0.0, 1, 1, 2, 0, 2, 2])
    with pytest.raises(ValueError, match=r"classes must be 0..C-1, got -1"):
        GaussianMixture(means, covs, weights, classes=[-1, 1, 1, 2, 0, 2, 2])
    mix, s, x = mixture(), rm.make_schedule("vp"), points()
    with pytest.raises(ValueError, match=r"label 3 out of range; valid: 0..2$"):
        mix.conditional_log_prob(x, torch.tensor([0, 1, 2, 3, 0, 0]), s, 0.3)
    with pytest.raises(ValueError, match=r"label -1 out of range; valid: 0..2$"):
        mix.conditional_score(x, -1, s, 0.3)
    with pytest.raises(ValueError, match=r"labels must have shape \(6,\)"):
        mix.guided_score(x, torch.tensor([0, 1]), 2.0, s, 0.3)
    with pytest.raises(ValueError, match="labels must be integers"):
        mix.sample(3, labels=torch.tensor([0.0, 1.0, 2.0]))
    fn = mix.conditional_fn(s, "eps")
    with pytest.raises(ValueError, match=r"label 4 out of range; valid: 0..2 or the null label 3"):
        fn(x, torch.full((6,), 0.3), torch.tensor([4, 0, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match=r"null_label 1 is a class; give one outside 0..2"):
        mix.conditional_fn(s, "eps", null_label=1)
    with pytest.raises(ValueError, match="unknown prediction 'noise'; valid: eps"):
        mix.conditional_fn(s, "noise")
    with pytest.raises(ValueError, match=r"no classes; build it with GaussianMixture\(..., classes=...\)"):
        GaussianMixture(means, covs, weights).class_log_posterior(x, s, 0.3)
