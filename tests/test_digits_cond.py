"""digits-cond (class-conditional digits U-Net for classifier-free guidance), the noisy digit classifier for
classifier guidance, and the label-accuracy metric."""
import pytest
import torch

import reference_models as rm
from reference_models import checkpoints, features
from reference_models import noisy_classifier as nc
from reference_models import train as tr
from reference_models.conditional import load_conditional
from solvers import cfg, sample

# The CI-sized model of the guidance test: fewer steps than the registered 2000 (see README), sampled at a small NFE.
CI_STEPS, CI_SAMPLES, CI_NFE = 600, 200, 20
CI_BAR_W2 = 0.80  # accuracy at w = 2 of the CI-sized model; the full model reaches >= 0.90 (README)


@pytest.fixture(scope="module")
def tiny_cond(tmp_path_factory):
    """digits-cond trained for 2 steps (batch 8) in a fresh cache."""
    path = tmp_path_factory.mktemp("cond-cache")
    tr.train("digits-cond", steps=2, batch_size=8, cache_dir=path, progress=False)
    return path


def test_spec_and_unconditional_configs_are_unchanged():
    spec = tr.get_spec("digits-cond")
    assert spec.classes == 10 and spec.label_dropout == 0.1 and spec.arch["num_class_embeds"] == 11
    for name in ("digits", "toy2d-moons"):  # their checkpoints (and fingerprints) must still match
        cfg = tr.expected_config(tr.get_spec(name), "vp", "eps")
        assert set(cfg) == {"name", "schedule", "prediction", "architecture", "sigma_data", "shape"}
        assert "num_class_embeds" not in cfg["architecture"]


def test_label_dropout_replaces_a_tenth_of_the_labels_by_the_null_label(monkeypatch, tmp_path):
    labels = torch.arange(20_000) % 10
    dropped = tr.drop_labels(labels, 0.1, 10, torch.Generator().manual_seed(0))
    kept = dropped != 10
    assert dropped[kept].equal(labels[kept]) and 0.09 < (~kept).float().mean() < 0.11
    seen = []  # the labels the training loop really feeds the network

    def spy(den, x0, generator, labels=None):
        seen.append(labels)
        return den.raw(x0, torch.full((len(x0),), 0.5, dtype=torch.float64), labels).square().mean()

    monkeypatch.setattr(tr, "denoising_loss", spy)
    tr.train("digits-cond", steps=1, batch_size=2000, cache_dir=tmp_path, progress=False)
    (y,) = seen
    assert y.dtype == torch.int64 and y.min() >= 0 and y.max() == 10
    assert 0.08 < (y == 10).float().mean() < 0.12  # binomial(2000, 0.1): sd 0.0067
    assert set((y[y != 10]).tolist()) == set(range(10))


def test_conditional_fn_checks_labels_and_the_record_samples_unconditionally(tiny_cond):
    fn, null, classes, config = load_conditional("digits-cond", cache_dir=tiny_cond, train=False)
    assert (null, classes, config["null_label"], config["label_dropout"]) == (10, 10, 10, 0.1)
    x, t = torch.randn(3, 1, 8, 8), torch.full((3,), 0.5, dtype=torch.float64)
    assert fn(x, t, torch.tensor([0, 9, 10])).shape == (3, 1, 8, 8)
    for bad, match in ((torch.tensor([0, 11, 2]), r"0\.\.10"), (torch.tensor([-1, 0, 2]), r"0\.\.10"),
                       (torch.tensor([0.0, 1.0, 2.0]), "integers"), (torch.tensor([0, 1]), "shape")):
        with pytest.raises(ValueError, match=match):
            fn(x, t, bad)
    ref = rm.load("digits-cond", cache_dir=tiny_cond, train=False)
    assert (ref.classes, ref.null_label, ref.kind, ref.metric) == (10, 10, "trained", "image")
    torch.testing.assert_close(ref.model.fn(x, t), ref.conditional(x, t, torch.full((3,), 10)))
    uncond = ref.conditional(x, t, torch.full((3,), 10))
    assert not torch.allclose(ref.conditional(x, t, torch.tensor([0, 1, 2])), uncond)
    assert rm.load("gmm2d").classes == 8 and rm.load("gmm2d").conditional is None  # exact: its mixture gives both


def test_noisy_classifier_loads_safely_and_returns_differentiable_logits(tmp_path):
    path = nc.train_noisy_classifier(cache_dir=tmp_path, steps=3, progress=False)
    assert path == nc.classifier_path("vp", tmp_path)
    _, config = checkpoints.load_checkpoint(path)  # safetensors, config in the header
    assert config["name"] == nc.NAME and set(config["test_accuracy_at_t"]) == {"0.05", "0.5", "0.9"}
    clf = nc.load_noisy_classifier(cache_dir=tmp_path, train=False)
    assert not clf.training and not any(p.requires_grad for p in clf.parameters())
    x = torch.randn(5, 1, 8, 8, requires_grad=True)
    logits = clf(x, torch.rand(5, dtype=torch.float64))
    assert logits.shape == (5, 10)
    torch.autograd.grad(logits.log_softmax(1)[:, 3].sum(), x)  # classifier guidance's gradient exists
    assert clf(x, 0.5).shape == (5, 10)  # a scalar time too
    torch.save({"weights": torch.zeros(1)}, path)  # a pickle where the checkpoint should be: refused, never unpickled
    with pytest.raises(rm.CheckpointError, match="not a valid safetensors"):
        nc.load_noisy_classifier(cache_dir=tmp_path, train=False)


def test_wilson_interval_and_label_accuracy_of_real_digits():
    from reference_models import digits

    lo, hi = features.wilson_interval(45, 50)
    assert abs(lo - 0.78640) < 1e-4 and abs(hi - 0.95652) < 1e-4
    assert features.wilson_interval(0, 10)[0] == 0.0 and features.wilson_interval(10, 10)[1] == pytest.approx(1.0)
    x, y = digits.test_split()
    acc, lo, hi = features.label_accuracy(x, y)
    assert acc >= 0.95 and lo < acc < hi
    assert features.label_accuracy(x, (y + 1) % 10)[0] < 0.1


def _cfg_accuracy(cond, null, w, n, nfe):
    """Accuracy of n samples (labels 0..9 cycling, dpmpp_2m, seed 0) under classifier-free guidance at w
    (solvers.cfg: eps_u + w (eps_c - eps_u), one batched network call per evaluation)."""
    labels = torch.arange(n) % 10
    model = cfg(cond, cond.denoiser.schedule, "eps", scale=w, classes=10, null_label=null, labels=labels)
    x_T = torch.randn((n, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    x = sample(model, x_T, solver="dpmpp_2m", nfe=nfe)
    assert model.nfe == nfe and model.network_calls == nfe
    return features.label_accuracy(x, labels)


@pytest.mark.slow
def test_classifier_free_guidance_makes_samples_match_their_labels(tmp_path):
    tr.train("digits-cond", steps=CI_STEPS, cache_dir=tmp_path, progress=False)
    cond, null, _, _ = load_conditional("digits-cond", cache_dir=tmp_path, train=False)
    acc0, lo0, hi0 = _cfg_accuracy(cond, null, 0.0, CI_SAMPLES, CI_NFE)
    acc2, lo2, hi2 = _cfg_accuracy(cond, null, 2.0, CI_SAMPLES, CI_NFE)
    assert acc2 >= CI_BAR_W2, (acc0, acc2)
    assert lo2 > hi0, f"w=2: {acc2:.3f} [{lo2:.3f}, {hi2:.3f}] vs w=0: {acc0:.3f} [{lo0:.3f}, {hi0:.3f}]"
