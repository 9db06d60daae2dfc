"""Reference-model registry: every entry builds and samples, exact scores match their log-densities,
trained models train deterministically for every prediction kind and schedule, the diffusers adapter."""
import dataclasses

import numpy as np
import pytest
import torch

import reference_models as rm
from reference_models import train as tr
from reference_models.cache import checkpoint_path
from solvers import Model, sample

TOY = [n for n in rm.list_models() if n.startswith("toy2d-")]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _sample(ref, n=16, nfe=6):
    x_t = ref.schedule.prior_sample((n, *ref.shape), _gen(1))
    return sample(ref.model, x_t, solver="dpm_solver_2", nfe=nfe)


def test_registry_lists_the_issue_models_and_defaults():
    names = set(rm.list_models())
    assert {"gmm2d", "gmm-digits", "digits", "cifar10", "mnist"} <= names
    assert {f"toy2d-{k}" for k in ("swissroll", "moons", "checkerboard", "8gaussians")} <= names
    assert set(rm.DEFAULT_MODELS) <= names and "cifar10" not in rm.DEFAULT_MODELS


@pytest.mark.parametrize("name", ["gmm2d", "gmm-digits"])
@pytest.mark.parametrize("schedule", ["vp", "ve"])
def test_exact_models_build_and_sample(name, schedule):
    ref = rm.load(name, schedule=schedule)
    assert ref.kind == "exact" and ref.mixture is not None
    x = _sample(ref)
    assert x.shape == (16, *ref.shape) and torch.isfinite(x).all()
    assert ref.model.nfe == 6
    data = ref.data(20, _gen())
    assert data.shape == (20, *ref.shape)


def test_gmm_digits_is_image_shaped_and_its_data_are_held_out_digits():
    from reference_models import digits

    ref = rm.load("gmm-digits")
    assert ref.shape == (1, 8, 8) and ref.metric == "image"
    test, _ = digits.test_split()
    train, _ = digits.train_split()
    d = ref.data(len(test), _gen())
    assert torch.equal(d.sort(0).values, test.sort(0).values)  # exactly the held-out split, reordered
    # the mixture is fitted on the train split: train digits are likelier than held-out ones
    assert ref.mixture.log_prob(train).mean() > ref.mixture.log_prob(test).mean()
    assert rm.load("gmm-digits").mixture.means.equal(ref.mixture.means)  # deterministic fit


@pytest.mark.parametrize("name,schedule,t", [("gmm2d", "vp", 0.3), ("gmm2d", "ve", 0.2), ("gmm-digits", "vp", 0.05),
                                             ("gmm-digits", "ve", 0.1)])
def test_exact_score_matches_finite_differences_of_the_log_density(name, schedule, t):
    ref = rm.load(name, schedule=schedule)
    mix, sched = ref.mixture, ref.schedule
    x = mix.sample(4, _gen(2), schedule=sched, t=t, dtype=torch.float64)
    score = ref.model.score(x, t).reshape(4, -1)
    h = 1e-5
    for k in range(3):  # directional derivatives along random unit directions
        v = torch.randn(x.shape, generator=_gen(10 + k), dtype=torch.float64)
        v = v / v.reshape(4, -1).norm(dim=1).reshape(-1, *[1] * (x.ndim - 1))
        fd = (mix.log_prob(x + h * v, sched, t) - mix.log_prob(x - h * v, sched, t)) / (2 * h)
        torch.testing.assert_close((score * v.reshape(4, -1)).sum(1), fd, rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory):
    """Every toy2d model and digits trained for 3 steps (eps, VP) in one fresh cache."""
    path = tmp_path_factory.mktemp("cache")
    for name in [*TOY, "digits"]:
        tr.train(name, "vp", "eps", steps=3, seed=0, cache_dir=path, progress=False,
                 batch_size=8 if name == "digits" else None)
    return path


@pytest.mark.parametrize("name", [*TOY, "digits"])
def test_trained_models_build_and_sample(name, toy_cache):
    ref = rm.load(name, cache_dir=toy_cache, train=False)
    assert ref.kind == "trained" and ref.info["steps"] == 3 and ref.info["name"] == name
    x = _sample(ref, n=8)
    assert x.shape == (8, *ref.shape) and torch.isfinite(x).all()
    assert ref.data(5, _gen()).shape == (5, *ref.shape)


@pytest.mark.parametrize("schedule,prediction", [("vp", "x0"), ("vp", "v"), ("ve", "eps"), ("ve", "x0"), ("ve", "v")])
def test_trained_models_for_every_prediction_and_schedule(tmp_path, schedule, prediction):
    tr.train("toy2d-moons", schedule, prediction, steps=3, cache_dir=tmp_path, progress=False)
    ref = rm.load("toy2d-moons", schedule=schedule, prediction=prediction, cache_dir=tmp_path, train=False)
    assert ref.model.prediction == prediction and ref.schedule.kind == schedule
    x = _sample(ref, n=8)
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("schedule", ["vp", "ve"])
def test_training_targets_agree_with_the_model_conversions(schedule, prediction):
    # A network that outputs exactly its training target must give back the true x0 and eps
    # through solvers.Model's conversions: the loss trains what the Model interface assumes.
    spec = tr.get_spec("toy2d-moons")
    den = tr.build_denoiser(spec, schedule, prediction, seed=0)
    x0 = torch.randn(32, 2, generator=_gen(3), dtype=torch.float64)
    eps = torch.randn(32, 2, generator=_gen(4), dtype=torch.float64)
    t = 0.37
    tt = torch.full((32,), t, dtype=torch.float64)
    a, s = float(den.schedule.alpha(t)), float(den.schedule.sigma(t))
    c_out = den.coefficients(tt)[3][:, None]
    model = Model(lambda x, t_: den.target(x0, eps, t_) * c_out, den.schedule, prediction)
    xt = a * x0 + s * eps
    torch.testing.assert_close(model.x0(xt, t), x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(model.eps(xt, t), eps, rtol=1e-9, atol=1e-9)


def test_training_is_deterministic_for_a_seed(tmp_path):
    paths = [tr.train("toy2d-swissroll", steps=5, seed=s, progress=False, out_path=tmp_path / f"{i}.safetensors")
             for i, s in enumerate((7, 7, 8))]
    from reference_models.checkpoints import load_checkpoint

    (a, _), (b, _), (c, _) = (load_checkpoint(p) for p in paths)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_missing_model_trains_on_first_use_and_is_reused(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(tr.SPECS, "toy2d-moons", dataclasses.replace(tr.SPECS["toy2d-moons"], steps=2))
    with pytest.raises(FileNotFoundError, match="python -m bench train toy2d-moons"):
        rm.load("toy2d-moons", cache_dir=tmp_path, train=False)
    first = rm.load("toy2d-moons", cache_dir=tmp_path, progress=False)
    assert "training it now" in capsys.readouterr().err
    mtime = checkpoint_path("toy2d-moons", "vp", "eps", tmp_path).stat().st_mtime_ns
    second = rm.load("toy2d-moons", cache_dir=tmp_path, progress=False)
    assert "training" not in capsys.readouterr().err
    assert checkpoint_path("toy2d-moons", "vp", "eps", tmp_path).stat().st_mtime_ns == mtime
    assert first.info == second.info


def test_bad_names_and_options_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown model 'nope'; valid: gmm2d"):
        rm.load("nope")
    with pytest.raises(ValueError, match="unknown schedule 'subvp'; valid: vp, ve"):
        rm.load("gmm2d", schedule="subvp")
    with pytest.raises(ValueError, match="trained models predict one of eps, x0, v"):
        rm.load("toy2d-moons", prediction="score", cache_dir=tmp_path)
    with pytest.raises(TypeError):
        rm.load("gmm2d", steps=3)
    with pytest.raises(ValueError, match="no training configuration for 'gmm2d'"):
        tr.train("gmm2d")


def _fake_torchvision(monkeypatch, n=6):
    """CIFAR10 / MNIST classes with the attributes torchvision's have (.data), filled with random pixels."""
    import torchvision

    rng = np.random.default_rng(0)

    class CIFAR10:
        def __init__(self, root, train=True, download=False):
            assert download  # the real loader downloads
            self.data = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)  # NHWC numpy, like torchvision

    class MNIST:
        def __init__(self, root, train=True, download=False):
            assert download
            self.data = torch.from_numpy(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))  # NHW torch

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", CIFAR10)
    monkeypatch.setattr(torchvision.datasets, "MNIST", MNIST)


@pytest.mark.parametrize("name,shape", [("cifar10", (3, 32, 32)), ("mnist", (1, 28, 28))])
def test_cifar10_and_mnist_configurations_train_on_data_in_their_format(name, shape, tmp_path, monkeypatch):
    from reference_models import datasets

    _fake_torchvision(monkeypatch)
    images = datasets.LOADERS[name](tmp_path)
    assert images.dtype == torch.uint8 and images.shape[1:] == shape
    tr.train(name, steps=1, batch_size=2, cache_dir=tmp_path, progress=False, data_root=tmp_path)
    ref = rm.load(name, cache_dir=tmp_path, train=False)
    assert ref.info["architecture"] == tr.SPECS[name].arch and ref.shape == shape
    x = _sample(ref, n=1, nfe=2)
    assert x.shape == (1, *shape) and torch.isfinite(x).all()
    d = ref.data(3, _gen())
    assert d.shape == (3, *shape) and d.min() >= -1 and d.max() <= 1


@pytest.mark.parametrize("kind,expected,layout", [("epsilon", "eps", "pipeline"), ("v_prediction", "v", "bare"),
                                                   ("sample", "x0", "pipeline")])
def test_diffusers_adapter_round_trips_a_tiny_checkpoint(tmp_path, kind, expected, layout):
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D")).eval()
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type=kind)
    if layout == "pipeline":
        unet.save_pretrained(tmp_path / "unet")
        sched.save_pretrained(tmp_path / "scheduler")
    else:
        unet.save_pretrained(tmp_path)
        sched.save_pretrained(tmp_path)
    model = rm.from_diffusers(tmp_path)
    assert model.prediction == expected
    torch.testing.assert_close(model.schedule.betas, sched.betas.double())
    torch.testing.assert_close(model.schedule.alpha(torch.tensor(1.0, dtype=torch.float64)) ** 2,
                               sched.alphas_cumprod[-1].double(), rtol=1e-6, atol=0)
    x = torch.randn(2, 1, 8, 8, generator=_gen(5))
    for step in (0, 499, 999):  # continuous t = (step + 1) / N reaches the UNet as the step index
        with torch.no_grad():
            want = unet(x, torch.full((2,), float(step))).sample
        torch.testing.assert_close(model.fn(x, torch.full((2,), (step + 1) / 1000)), want, rtol=1e-5, atol=1e-5)
    out = sample(model, model.schedule.prior_sample((2, 1, 8, 8), _gen(6)), solver="dpm_solver_2", nfe=4)
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all() and model.nfe == 4


def test_diffusers_adapter_rejects_unknown_prediction_types_and_missing_configs(tmp_path):
    from diffusers import DDPMScheduler

    DDPMScheduler(prediction_type="epsilon").save_pretrained(tmp_path / "ok")
    cfg = tmp_path / "ok" / "scheduler_config.json"
    cfg.write_text(cfg.read_text().replace('"epsilon"', '"flow"'))
    with pytest.raises(ValueError, match="unsupported prediction_type 'flow'; valid: epsilon, sample, v_prediction"):
        rm.from_diffusers(tmp_path / "ok")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no scheduler config"):
        rm.from_diffusers(tmp_path / "empty")


def test_bench_list_and_train_commands(tmp_path, capsys):
    from bench.__main__ import main

    assert main(["train", "toy2d-8gaussians", "--steps", "2", "--seed", "3", "--prediction", "v",
                 "--cache-dir", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert '"steps": 2' in out and '"seed": 3' in out and '"prediction": "v"' in out
    assert checkpoint_path("toy2d-8gaussians", "vp", "v", tmp_path).exists()
    assert main(["list", "--cache-dir", str(tmp_path)]) == 0
    listing = capsys.readouterr().out
    for name in rm.list_models():
        assert name in listing
    with pytest.raises(SystemExit):
        main(["train", "gmm2d"])  # not a trained model: argparse names the valid choices
    assert "invalid choice" in capsys.readouterr().err
