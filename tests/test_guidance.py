"""Guided sampling (solvers.guidance) and x0 thresholding (solvers.thresholding).

The test model is a class-conditional Gaussian mixture with closed-form posteriors: class k is N(mu_k, s0^2 I), so
at time t, E[x0 | x_t, k] = mu_k + alpha s0^2 / v (x_t - alpha mu_k) with v = alpha^2 s0^2 + sigma^2, the posterior
class weights are softmax_k(-|x_t - alpha mu_k|^2 / (2 v)) (the exact classifier's logits), and the unconditional x0
is their weighted mean. On it classifier guidance with scale w equals CFG with scale w exactly (both are
score_u + w (score_c - score_u)), and w = 1 the conditional model.
"""
import math

import pytest
import torch

from solvers import (
    PREDICTIONS,
    FlowSchedule,
    GuidedModel,
    Model,
    ModelOutputError,
    VPSchedule,
    cfg,
    classifier_guidance,
    get_solver,
    sample,
    threshold_x0,
)
from solvers.thresholding import thresholded

F64 = torch.float64
MU = torch.tensor([[2.0, 0.0], [-1.0, 1.5], [-1.0, -1.5]], dtype=F64)
S0 = 0.5
CLASSES = 3
DATA_SOLVERS = ("ddim", "dpmpp_2s", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "dpmpp_3m_sde", "unipc")


def _coeffs(schedule, t: torch.Tensor):
    return schedule.at(float(t[0]))


def _logits(x, c):
    v = c.alpha**2 * S0**2 + c.sigma**2
    return -((x[:, None, :] - c.alpha * MU) ** 2).sum(-1) / (2 * v)


def _posterior(x, c, labels):
    """(x0, eps) of the mixture at x: conditional for labels in 0..CLASSES-1, unconditional where a label is CLASSES."""
    v = c.alpha**2 * S0**2 + c.sigma**2
    per_class = MU + (c.alpha * S0**2 / v) * (x[:, None, :] - c.alpha * MU)  # (B, K, 2)
    weights = torch.softmax(_logits(x, c), dim=1)
    uncond = (weights[:, :, None] * per_class).sum(1)
    cond = per_class[torch.arange(len(x)), labels.clamp(max=CLASSES - 1)]
    x0 = torch.where((labels == CLASSES)[:, None], uncond, cond)
    return x0, (x - c.alpha * x0) / c.sigma


def _form(prediction, x0, eps, c):
    return {"eps": eps, "score": -eps / c.sigma, "x0": x0, "v": c.alpha * eps - c.sigma * x0,
            "flow": c.d_alpha * x0 + c.d_sigma * eps}[prediction]


def mixture_fn(schedule, prediction):
    """fn(x, t, labels) of the mixture in `prediction`'s form; label CLASSES is the null label."""
    def fn(x, t, labels):
        c = _coeffs(schedule, t)
        return _form(prediction, *_posterior(x, c, labels), c)
    return fn


def uncond_fn(schedule, prediction):
    fn = mixture_fn(schedule, prediction)
    return lambda x, t: fn(x, t, torch.full((len(x),), CLASSES))


def classifier(schedule):
    return lambda x, t: _logits(x, _coeffs(schedule, t))


def guided(kind, schedule, prediction="eps", *, scale=2.0, labels=None, classifier_fn=None):
    fn = mixture_fn(schedule, prediction)
    if kind == "batched":
        return cfg(fn, schedule, prediction, scale=scale, classes=CLASSES, null_label=CLASSES, labels=labels)
    if kind == "unbatched":
        return cfg(fn, schedule, prediction, scale=scale, classes=CLASSES, null_label=CLASSES, labels=labels,
                   batched=False)
    if kind == "uncond_fn":
        return cfg(fn, schedule, prediction, scale=scale, classes=CLASSES, uncond_fn=uncond_fn(schedule, prediction),
                   labels=labels)
    return classifier_guidance(uncond_fn(schedule, prediction), classifier_fn or classifier(schedule), schedule,
                               prediction, scale=scale, classes=CLASSES, labels=labels)


KINDS = ("batched", "unbatched", "uncond_fn", "classifier")
LABELS = torch.tensor([0, 1, 2, 1, 0])


def _x(n=5, seed=0):
    return 1.5 * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)


# --- the combination ---------------------------------------------------------------------------


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("schedule", [VPSchedule.linear(), FlowSchedule()], ids=["vp", "flow"])
def test_combination_in_any_form_equals_eps_form(prediction, schedule):
    """Every form is affine in eps at fixed (x, t) and the weights 1 - w, w sum to 1: combining the prediction's own
    form, then converting, equals combining eps (here with outputs that are no mixture's, fc and fu arbitrary)."""
    x = _x()
    for t in (0.9, 0.5, 0.05):
        c = schedule.at(t)

        def eps_of(x, labels):
            return torch.where((labels == CLASSES)[:, None], 0.3 * torch.cos(x), torch.sin(x) + labels[:, None])

        def fn(x, tb, labels, c=c):  # the prediction's form of an arbitrary eps
            eps = eps_of(x, labels)
            return _form(prediction, (x - c.sigma * eps) / c.alpha, eps, c)

        for w in (0.0, 0.5, 1.0, 3.0, 7.5):
            model = cfg(fn, schedule, prediction, scale=w, classes=CLASSES, null_label=CLASSES, labels=LABELS)
            e_c, e_u = eps_of(x, LABELS), eps_of(x, torch.full_like(LABELS, CLASSES))
            eps = e_u + w * (e_c - e_u)
            torch.testing.assert_close(model.eps(x, t), eps, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(model.x0(x, t), (x - c.sigma * eps) / c.alpha, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_scale_zero_is_unconditional_and_one_conditional(kind, prediction):
    sched = VPSchedule.linear()
    x, null = _x(), torch.full_like(LABELS, CLASSES)
    fn = mixture_fn(sched, prediction)
    for t in (0.8, 0.3, 0.01):
        tb = torch.full((len(x),), t, dtype=F64)
        zero = guided(kind, sched, prediction, scale=0.0, labels=LABELS)
        one = guided(kind, sched, prediction, scale=1.0, labels=LABELS)
        torch.testing.assert_close(zero.raw(x, t), fn(x, tb, null), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(one.raw(x, t), fn(x, tb, LABELS), rtol=1e-12, atol=1e-12)
        if kind != "classifier":  # lerp: exactly the end points
            assert torch.equal(zero.raw(x, t), fn(x, tb, null)) and torch.equal(one.raw(x, t), fn(x, tb, LABELS))


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_classifier_guidance_equals_cfg_on_the_exact_mixture(prediction):
    """score_u + w grad log p(y | x) = score_u + w (score_c - score_u): the two guidances agree for any w, in every
    form (Model.output_change), also inside inference_mode, where the classifier's gradient still needs autograd."""
    sched = VPSchedule.cosine()
    x = _x()
    for w in (0.5, 2.0, 6.0):
        a, b = guided("classifier", sched, prediction, scale=w, labels=LABELS), guided("batched", sched, prediction,
                                                                                      scale=w, labels=LABELS)
        for t in (0.9, 0.4, 0.02):
            with torch.inference_mode():
                got = a.raw(x, t)
            torch.testing.assert_close(got, b.raw(x, t), rtol=1e-11, atol=1e-11)


def test_classifier_adds_nothing_where_alpha_is_zero():
    sched = FlowSchedule()
    model = guided("classifier", sched, "flow", scale=4.0, labels=LABELS)
    x = _x()
    out = model.raw(x, 1.0)
    assert torch.equal(out, uncond_fn(sched, "flow")(x, torch.full((5,), 1.0, dtype=F64)))
    assert model.network_calls == 1  # the classifier is not called there


def test_classifier_gradient_under_no_grad():
    sched = VPSchedule.linear()
    model = guided("classifier", sched, "eps", scale=2.0, labels=LABELS)
    ref = guided("batched", sched, "eps", scale=2.0, labels=LABELS)
    with torch.no_grad():
        torch.testing.assert_close(model.eps(_x(), 0.5), ref.eps(_x(), 0.5), rtol=1e-12, atol=1e-12)
    for t in (0.7, 0.2):  # model.fn(x, t), as callers that bypass Model.raw use it, takes its time from t
        assert torch.equal(model.fn(_x(), torch.full((5,), t, dtype=F64)), model.raw(_x(), t))


# --- counting ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,calls", [("batched", 1), ("unbatched", 2), ("uncond_fn", 2), ("classifier", 2)])
@pytest.mark.parametrize("solver", ["ddim", "dpmpp_2m", "heun", "dpmpp_2s"])
def test_nfe_counts_guided_evaluations_and_network_calls_the_calls(kind, calls, solver):
    sched = VPSchedule.linear()
    model = guided(kind, sched, scale=3.0, labels=LABELS)
    nfe = 6
    out = sample(model, _x(), solver, nfe=nfe)
    assert torch.isfinite(out).all()
    assert model.nfe == nfe and model.network_calls == calls * nfe
    model.reset()
    assert model.nfe == 0 and model.network_calls == 0


@pytest.mark.parametrize("kind", ["batched", "classifier"])
@pytest.mark.parametrize("solver", ["ddim", "dpmpp_2m"])
def test_a_sample_does_not_depend_on_its_batch(kind, solver):
    sched = VPSchedule.linear()
    labels = torch.tensor([0, 1, 2, 1])
    x_T = torch.randn(4, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    model = guided(kind, sched, scale=3.0, labels=labels)
    batch = sample(model, x_T, solver, nfe=8)
    for i in range(4):
        model.labels = labels[i : i + 1]
        torch.testing.assert_close(sample(model, x_T[i : i + 1], solver, nfe=8), batch[i : i + 1], rtol=1e-12,
                                   atol=1e-12)


def test_a_guided_model_is_a_model():
    model = guided("batched", VPSchedule.linear(), labels=LABELS)
    assert isinstance(model, GuidedModel) and isinstance(model, Model)
    assert (model.kind, model.scale, model.classes) == ("cfg", 2.0, CLASSES)
    assert model.labels.dtype == torch.long and torch.equal(model.labels, LABELS)
    assert guided("classifier", VPSchedule.linear()).kind == "classifier"
    model.scale = 5  # settable, validated
    assert model.scale == 5.0


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scale", [-1.0, math.inf, math.nan])
def test_bad_scale(kind, scale):
    with pytest.raises(ValueError, match="scale must be a finite number >= 0"):
        guided(kind, VPSchedule.linear(), scale=scale)
    model = guided(kind, VPSchedule.linear())
    with pytest.raises(ValueError, match="scale must be a finite number >= 0"):
        model.scale = scale


@pytest.mark.parametrize("kind", KINDS)
def test_label_out_of_range(kind):
    for bad in ([0, 3], [-1, 0]):
        with pytest.raises(ValueError, match=r"labels must lie in 0\.\.2"):
            guided(kind, VPSchedule.linear(), labels=torch.tensor(bad))
        model = guided(kind, VPSchedule.linear())
        with pytest.raises(ValueError, match=r"labels must lie in 0\.\.2"):
            model.labels = torch.tensor(bad)
    with pytest.raises(ValueError, match="1-D integer tensor"):
        guided(kind, VPSchedule.linear(), labels=torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize("classes", [0, -2, 1.5, True])
def test_classes_below_one(classes):
    sched = VPSchedule.linear()
    with pytest.raises(ValueError, match="classes must be an integer >= 1"):
        cfg(mixture_fn(sched, "eps"), sched, scale=1.0, classes=classes, null_label=5)
    with pytest.raises(ValueError, match="classes must be an integer >= 1"):
        classifier_guidance(uncond_fn(sched, "eps"), classifier(sched), sched, scale=1.0, classes=classes)


@pytest.mark.parametrize("kind", KINDS)
def test_missing_labels_or_wrong_length_at_evaluation(kind):
    model = guided(kind, VPSchedule.linear())
    with pytest.raises(ValueError, match="has no labels: set model.labels"):
        sample(model, _x(), "ddim", nfe=3)
    model.labels = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="has 2 labels for a batch of 5"):
        sample(model, _x(), "ddim", nfe=3)


def test_cfg_needs_exactly_one_unconditional_output():
    sched = VPSchedule.linear()
    fn = mixture_fn(sched, "eps")
    with pytest.raises(ValueError, match="a model without a null label cannot do classifier-free guidance: give "
                                         "null_label or uncond_fn"):
        cfg(fn, sched, scale=2.0, classes=CLASSES)
    with pytest.raises(ValueError, match="not both"):
        cfg(fn, sched, scale=2.0, classes=CLASSES, null_label=CLASSES, uncond_fn=uncond_fn(sched, "eps"))
    with pytest.raises(ValueError, match=r"null_label must be an integer outside the class labels 0\.\.2"):
        cfg(fn, sched, scale=2.0, classes=CLASSES, null_label=1)


def test_classifier_output_of_a_wrong_shape():
    sched = VPSchedule.linear()
    model = guided("classifier", sched, labels=LABELS, classifier_fn=lambda x, t: _logits(x, _coeffs(sched, t))[:, :2])
    with pytest.raises(ModelOutputError, match=r"classifier output has shape \(5, 2\), expected \(5, 3\)"):
        sample(model, _x(), "ddim", nfe=3)
    with pytest.raises(TypeError, match="classifier must be callable"):
        classifier_guidance(uncond_fn(sched, "eps"), None, sched, scale=1.0, classes=CLASSES)


def test_network_output_of_a_wrong_shape():
    sched = VPSchedule.linear()
    model = cfg(lambda x, t, y: x[: len(x) // 2], sched, scale=2.0, classes=CLASSES, null_label=CLASSES, labels=LABELS)
    with pytest.raises(ModelOutputError, match=r"network output has shape \(5, 2\), expected \(10, 2\)"):
        sample(model, _x(), "ddim", nfe=3)


# --- thresholding -----------------------------------------------------------------------------


def test_threshold_bounds_and_the_imagen_formula():
    x0 = 3.0 * torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(5), dtype=F64)
    assert threshold_x0(x0, "none") is x0
    static = threshold_x0(x0, "static", max_value=2.0)
    assert static.abs().max() <= 2.0 and torch.equal(static, x0.clamp(-2.0, 2.0))
    for ratio, max_value in ((0.995, 1.0), (0.9, 2.5), (0.5, 10.0), (1.0, 4.0)):
        dyn = threshold_x0(x0, "dynamic", ratio, max_value)
        assert dyn.shape == x0.shape and dyn.abs().max() <= 1.0
        s = torch.quantile(x0.reshape(6, -1).abs(), ratio, dim=1).clamp(1.0, max_value)[:, None, None, None]
        torch.testing.assert_close(dyn, torch.clamp(x0, -s, s) / s, rtol=1e-15, atol=1e-15)
        for i in range(6):  # per sample
            assert torch.equal(threshold_x0(x0[i : i + 1], "dynamic", ratio, max_value), dyn[i : i + 1])
    with pytest.raises(ValueError, match="unknown thresholding 'clip'; valid: none, static, dynamic"):
        threshold_x0(x0, "clip")


def test_thresholded_is_model_x0_without_thresholding():
    model = Model(lambda x, t: 3 * torch.tanh(x), VPSchedule.linear(), prediction="x0")
    assert thresholded(model, "none", 0.995, 1.0) == model.x0
    x = _x()
    assert thresholded(model, "static", 0.995, 1.5)(x, 0.5).abs().max() <= 1.5
    assert thresholded(model, "dynamic", 0.9, 4.0)(x, 0.5).abs().max() <= 1.0


@pytest.mark.parametrize("solver", DATA_SOLVERS)
def test_a_loose_threshold_changes_nothing(solver):
    """Data well inside [-1, 1] (x0 = tanh(x) / 2): static at 10 and dynamic up to 10 leave every x0 as it is."""
    model = Model(lambda x, t: 0.5 * torch.tanh(x), VPSchedule.linear(), prediction="x0")
    x_T = torch.randn(8, 2, generator=torch.Generator().manual_seed(7), dtype=F64)

    def run(**options):
        return sample(model, x_T, solver, nfe=8, generator=torch.Generator().manual_seed(1), **options)

    plain = run()
    for mode in ("static", "dynamic"):
        assert torch.equal(run(thresholding=mode, threshold_max=10.0), plain), mode


@pytest.mark.parametrize("solver", DATA_SOLVERS)
def test_an_active_threshold_moves_the_output(solver):
    """x0 = 3 tanh(x), mostly beyond 0.5: static thresholding at 0.5 changes what the solver returns."""
    model = Model(lambda x, t: 3.0 * torch.tanh(x), VPSchedule.linear(), prediction="x0")
    x_T = torch.randn(8, 2, generator=torch.Generator().manual_seed(7), dtype=F64)
    plain = sample(model, x_T, solver, nfe=8, generator=torch.Generator().manual_seed(1))
    clipped = sample(model, x_T, solver, nfe=8, generator=torch.Generator().manual_seed(1), thresholding="static",
                     threshold_max=0.5)
    assert not torch.allclose(plain, clipped)
    assert get_solver(solver).options["thresholding"] == "none"


@pytest.mark.parametrize("solver", DATA_SOLVERS)
@pytest.mark.parametrize("options,message", [
    ({"thresholding": "clip"}, "thresholding must be one of none, static, dynamic, got 'clip'"),
    ({"threshold_ratio": 0.0}, r"threshold_ratio must be a number in \(0, 1\], got 0.0"),
    ({"threshold_ratio": 1.5}, r"threshold_ratio must be a number in \(0, 1\], got 1.5"),
    ({"threshold_max": 0.0}, "threshold_max must be a finite number > 0, got 0.0"),
    ({"threshold_max": -2.0}, "threshold_max must be a finite number > 0, got -2.0"),
    ({"threshold_max": math.inf}, "threshold_max must be a finite number > 0, got inf"),
])
def test_bad_threshold_options(solver, options, message):
    model = Model(lambda x, t: 0.5 * torch.tanh(x), VPSchedule.linear(), prediction="x0")
    with pytest.raises(ValueError, match=message):
        sample(model, _x(), solver, nfe=4, **options)
    assert model.nfe == 0  # refused before any evaluation
