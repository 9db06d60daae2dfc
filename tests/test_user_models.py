"""A user's own model: user_model, the four spec forms (registered name, diffusers:DIR, MODULE:FACTORY, file.py:FACTORY),
fingerprints that follow the weights, one-line errors, and our DDIM on a diffusers UNet = diffusers' own DDIM loop."""
import json
import pathlib
import shutil
import textwrap

import numpy as np
import pytest
import torch
from user_models import pipelines, toy_factory

import reference_models as rm
from reference_models import ModelSpecError
from solvers import Model, VESchedule, VPSchedule, sample

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")
F64 = torch.float64
TOY = pathlib.Path(__file__).parent / "user_models" / "toy_factory.py"


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    """Tiny saved pipelines: epsilon, v_prediction, sample (cosine betas), learned variances, score_sde VE, bare UNet."""
    pytest.importorskip("diffusers")
    root = tmp_path_factory.mktemp("pipelines")
    out = {"eps": pipelines.save_ddpm(root / "eps"), "v": pipelines.save_ddpm(root / "v", "v_prediction"),
           "x0": pipelines.save_ddpm(root / "x0", "sample", "squaredcos_cap_v2"),
           "learned": pipelines.save_ddpm(root / "learned", out_channels=2 * pipelines.CHANNELS),
           "ve": pipelines.save_ve(root / "ve")}
    bare = root / "bare"
    shutil.copytree(out["v"] / "unet", bare)
    shutil.copy(out["v"] / "scheduler" / "scheduler_config.json", bare)
    out["bare"] = bare
    return out


def _one_line_naming(excinfo, *valid):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for v in valid:
        assert v in msg, (v, msg)


# --- every form resolves -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key, prediction, schedule, sample_range", [
    ("eps", "eps", "vp", (-1.0, 1.0)), ("v", "v", "vp", (-1.0, 1.0)), ("x0", "x0", "vp", (-1.0, 1.0)),
    ("learned", "eps", "vp", (-1.0, 1.0)), ("bare", "v", "vp", (-1.0, 1.0)), ("ve", "score", "ve", (0.0, 1.0))])
def test_diffusers_specs_resolve(pipes, key, prediction, schedule, sample_range):
    rec = rm.resolve(f"diffusers:{pipes[key]}", schedule="ve" if schedule == "vp" else "vp")  # its own schedule wins
    assert (rec.name, rec.kind, rec.metric, rec.shape) == (key, "user", "image", (3, 8, 8))
    assert rec.model.prediction == prediction and rec.schedule_name == schedule and rec.sample_range == sample_range
    assert rec.source == f"diffusers:{pipes[key]}" and len(rec.fingerprint) == 64 and rec.data is None
    x = rec.schedule.prior_sample((2, *rec.shape), _gen())
    out = sample(rec.model, x, "ddim" if schedule == "vp" else "euler", nfe=2)
    assert out.shape == x.shape and torch.isfinite(out).all() and rec.model.nfe == 2
    with pytest.raises(ValueError, match="has no real data"):
        rec.floor_data(2)


def test_factory_specs_and_registered_names_resolve():
    toy = rm.resolve(f"{TOY}:make")
    assert (toy.name, toy.kind, toy.metric, toy.shape, toy.schedule_name) == ("toy", "user", "2d", (2,), "vp")
    assert toy.source == f"{TOY}:make" and toy.model.nfe == 0 and toy.data(5, _gen()).shape == (5, 2)
    assert toy.floor_data(3, _gen()).shape == (3, 2)
    image = rm.resolve("user_models.toy_factory:make_image")  # a module on sys.path (tests/ under pytest)
    assert (image.name, image.metric, image.shape, image.data) == ("toy_factory.make_image", "image", (1, 8, 8), None)
    assert rm.parse_spec(f"{TOY}:make") == ("factory", f"{TOY}:make")
    assert rm.parse_spec("diffusers:google/ddpm-cifar10-32") == ("diffusers", "google/ddpm-cifar10-32")
    assert rm.parse_spec("gmm2d") == ("name", "gmm2d")
    gmm = rm.resolve("gmm2d", schedule="ve")
    assert (gmm.kind, gmm.schedule_name, gmm.source, len(gmm.fingerprint)) == ("exact", "ve", "gmm2d", 64)
    assert gmm.fingerprint == rm.load("gmm2d", "ve").fingerprint != rm.load("gmm2d", "vp").fingerprint
    assert rm.load("gmm-digits").fingerprint != rm.load("gmm2d").fingerprint


def test_a_data_path_replaces_the_models_data(tmp_path):
    pytest.importorskip("reference_models.data_files")
    points = np.random.default_rng(0).normal(size=(64, 2))
    np.save(tmp_path / "points.npy", points)
    rec = rm.resolve(f"{TOY}:make", data=tmp_path / "points.npy")
    drawn = rec.data(8, _gen())
    assert drawn.shape == (8, 2) and rec.real_data.count == 64
    assert np.isin(drawn.numpy().round(12), points.round(12)).all()  # drawn from the file, not the factory's ring
    direct = rm.user_model(toy_factory.make().model, (2,), data=tmp_path / "points.npy")
    assert direct.real_data.sha256 == rec.real_data.sha256
    np.save(tmp_path / "wrong.npy", np.zeros((4, 3)))
    with pytest.raises(ValueError) as e:
        rm.resolve(f"{TOY}:make", data=tmp_path / "wrong.npy")
    assert "\n" not in str(e.value)


# --- the continuous-time wrapper runs diffusers' own algorithms -----------------------------------------------------
@pytest.mark.parametrize("key", ["eps", "v"])
def test_our_ddim_on_the_wrapper_equals_diffusers_ddim_loop(pipes, key):
    """DDIM (eta=0) through diffusers' DDIMScheduler and through `sample(..., "ddim")` on the grid t = (n + 1) / N."""
    from diffusers import DDIMScheduler, UNet2DModel

    rec = rm.diffusers_record(pipes[key], dtype=F64)
    unet = UNet2DModel.from_pretrained(pipes[key] / "unet").double().eval()
    sched = DDIMScheduler.from_pretrained(pipes[key], subfolder="scheduler", set_alpha_to_one=False, clip_sample=False,
                                          timestep_spacing="trailing")
    sched.set_timesteps(10)
    n = sched.config.num_train_timesteps
    x_T = torch.randn(4, *rec.shape, generator=_gen(1), dtype=F64)
    x = x_T.clone()
    with torch.no_grad():
        for step in sched.timesteps:
            x = sched.step(unet(x, step).sample, step, x, eta=0.0).prev_sample
    grid = torch.cat([(sched.timesteps.to(F64) + 1) / n, torch.tensor([1.0 / n], dtype=F64)])
    assert float(grid[0]) == 1.0 and len(grid) == 11
    ours = sample(rec.model, x_T, "ddim", nfe=10, timesteps=grid)
    assert (ours - x).abs().max() < 1e-4
    assert (ours - sample(rec.model, x_T, "ddim", nfe=10)).abs().max() > 1e-3  # another grid differs: not vacuous


def test_ve_pipeline_is_the_score_at_the_schedulers_sigmas(pipes):
    from diffusers import ScoreSdeVeScheduler, UNet2DModel

    rec = rm.resolve(f"diffusers:{pipes['ve']}")
    sched = ScoreSdeVeScheduler.from_pretrained(pipes["ve"], subfolder="scheduler")
    sched.set_sigmas(7)
    assert isinstance(rec.schedule, VESchedule) and rec.schedule.prior_std == sched.init_noise_sigma
    torch.testing.assert_close(rec.schedule.sigma(sched.timesteps.to(F64)), sched.sigmas.to(F64), rtol=1e-6, atol=0)
    unet = UNet2DModel.from_pretrained(pipes["ve"] / "unet").eval()
    x = 5 * torch.randn(2, *rec.shape, generator=_gen(2))
    scores = []
    for t, s in list(zip(sched.timesteps, sched.sigmas))[::3]:
        with torch.no_grad():
            want = unet(x, torch.full((2,), float(s))).sample
        scores.append(rec.model.score(x, float(t)))
        assert (scores[-1] - want).abs().max() <= 1e-5 * want.abs().max()  # float32 sigma**t in diffusers
    assert (scores[0] - scores[-1]).abs().max() > 1e-3


# --- fingerprints ---------------------------------------------------------------------------------------------------
def test_diffusers_fingerprint_follows_weights_and_configs(pipes, tmp_path):
    from diffusers import UNet2DModel

    first = rm.resolve(f"diffusers:{pipes['eps']}").fingerprint
    assert rm.resolve(f"diffusers:{pipes['eps']}").fingerprint == first
    assert pipelines.save_ddpm(tmp_path / "again").exists()  # the same weights elsewhere: the same model
    assert rm.resolve(f"diffusers:{tmp_path / 'again'}").fingerprint == first
    shutil.copytree(pipes["eps"], tmp_path / "bin")  # the same weights in a .bin (read with weights_only=True)
    (tmp_path / "bin" / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    UNet2DModel.from_pretrained(pipes["eps"] / "unet").save_pretrained(tmp_path / "bin" / "unet", safe_serialization=False)
    assert [f.suffix for f in (tmp_path / "bin" / "unet").glob("diffusion_pytorch_model.*")] == [".bin"]
    assert rm.resolve(f"diffusers:{tmp_path / 'bin'}").fingerprint == first
    unet = UNet2DModel.from_pretrained(tmp_path / "again" / "unet")
    with torch.no_grad():
        unet.conv_out.bias[0] += 1e-3
    unet.save_pretrained(tmp_path / "again" / "unet")
    changed = rm.resolve(f"diffusers:{tmp_path / 'again'}").fingerprint
    assert changed != first
    cfg = tmp_path / "again" / "scheduler" / "scheduler_config.json"
    cfg.write_text(cfg.read_text().replace('"linear"', '"scaled_linear"'))
    assert rm.resolve(f"diffusers:{tmp_path / 'again'}").fingerprint not in (first, changed)


def test_user_fingerprint_follows_the_weights_wherever_fn_holds_them():
    net = toy_factory._seeded(toy_factory.TimeMLP)
    fns = {"module": net, "bound method": net.forward, "closure": lambda x, t: net(x, t)}
    for how, fn in fns.items():
        rec = rm.user_model(Model(fn, VPSchedule.linear()), (2,))
        assert rec.info["fingerprint_of"] == "weights", how
        assert rm.user_model(Model(fn, VPSchedule.linear()), (2,)).fingerprint == rec.fingerprint, how
        assert rm.user_model(Model(fn, VPSchedule.linear(0.1, 19.0)), (2,)).fingerprint != rec.fingerprint, how
        assert rm.user_model(Model(fn, VPSchedule.linear(), "v"), (2,)).fingerprint != rec.fingerprint, how
        with torch.no_grad():
            net.net[0].weight[0, 0] += 1e-4
        assert rm.user_model(Model(fn, VPSchedule.linear()), (2,)).fingerprint != rec.fingerprint, how
    w = torch.tensor([1.0, 2.0])
    plain = rm.user_model(Model(lambda x, t: x * w, VPSchedule.linear()), (2,))
    assert plain.info["fingerprint_of"] == "outputs"  # no module: the outputs on a fixed probe
    w[0] = 1.001
    assert rm.user_model(Model(lambda x, t: x * w, VPSchedule.linear()), (2,)).fingerprint != plain.fingerprint
    given = rm.user_model(Model(net, VPSchedule.linear()), (2,), fingerprint="my-model-v3")
    assert given.fingerprint == "my-model-v3"


FACTORY = textwrap.dedent('''
    import pathlib
    from safetensors.torch import load_file
    import reference_models
    from solvers import Model, VPSchedule
    import torch

    def make():
        net = torch.nn.Linear(3, 2)
        net.load_state_dict(load_file(pathlib.Path(__file__).with_name("weights.safetensors")))
        return reference_models.user_model(Model(lambda x, t: net(torch.cat([x, t[:, None]], 1)), VPSchedule.linear()),
                                           (2,), name=NAME)
    ''')


def test_factory_fingerprint_follows_the_weights_file_and_the_source(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    state = torch.nn.Linear(3, 2).state_dict()
    save_file(state, tmp_path / "weights.safetensors")
    (tmp_path / "fac.py").write_text("NAME = None\n" + FACTORY)
    rec = rm.resolve(f"{tmp_path / 'fac.py'}:make")
    assert rec.name == "fac.make" and rec.info["fingerprint_of"] == "weights"
    assert rm.resolve(f"{tmp_path / 'fac.py'}:make").fingerprint == rec.fingerprint
    state["bias"][1] += 1e-3
    save_file(state, tmp_path / "weights.safetensors")
    changed = rm.resolve(f"{tmp_path / 'fac.py'}:make").fingerprint
    assert changed != rec.fingerprint
    (tmp_path / "fac.py").write_text("NAME = 'named'\n" + FACTORY)  # same weights, other source
    named = rm.resolve(f"{tmp_path / 'fac.py'}:make")
    assert named.name == "named" and named.fingerprint not in (rec.fingerprint, changed)


# --- one-line errors ------------------------------------------------------------------------------------------------
def _bad_factories(tmp_path) -> dict[str, str]:
    files = {"broken.py": "def make(:\n", "raises.py": "def make():\n    raise RuntimeError('boom')\n",
             "number.py": "def make():\n    return 3\n", "other.py": "def build():\n    return 3\n\ndef helper():\n    pass\n",
             "shape.py": "import reference_models\nfrom solvers import Model, VPSchedule\n"
                         "def make():\n    return reference_models.user_model(Model(lambda x, t: x[:, :1], "
                         "VPSchedule.linear()), (2,))\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return files


def test_bad_specs_are_one_line_errors_naming_what_is_valid(tmp_path, pipes, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    _bad_factories(tmp_path)
    (tmp_path / "empty").mkdir()
    cases = {
        "nosuchmodel": ("unknown model 'nosuchmodel'", "diffusers:PATH_OR_HUB_ID", "MODULE:FACTORY", "gmm2d"),
        "": ("empty", "MODULE:FACTORY"),
        "diffusers:": ("diffusers:PATH_OR_HUB_ID",),
        f"diffusers:{tmp_path / 'missing'}": ("no diffusers directory", "a pipeline directory"),
        "diffusers:models/not/here": ("no diffusers directory", "a pipeline directory"),
        f"diffusers:{tmp_path / 'empty'}": ("no scheduler config", "a pipeline directory"),
        "diffusers:nobody/no-such-model": ("OSError", "hub id"),
        "no_such_module_xyz:make": ("cannot import no_such_module_xyz: ModuleNotFoundError",),
        f"{tmp_path / 'missing.py'}:make": ("no file", "MODULE:FACTORY"),
        f"{tmp_path / 'broken.py'}:make": ("cannot import", "SyntaxError"),
        f"{tmp_path / 'other.py'}:make": ("has no callable 'make'; its callables: build, helper",),
        f"{tmp_path / 'raises.py'}:make": ("make() raised RuntimeError: boom",),
        f"{tmp_path / 'number.py'}:make": ("make() returned int; expected reference_models.user_model(...)",),
        f"{tmp_path / 'shape.py'}:make": ("model output has shape (2, 1), expected (2, 2)",),
    }
    for spec, valid in cases.items():
        with pytest.raises(ModelSpecError) as e:
            rm.resolve(spec)
        _one_line_naming(e, *valid)


@pytest.mark.parametrize("edit, valid", [
    ({"_class_name": "EDMEulerScheduler", "beta_schedule": None, "num_train_timesteps": None},
     ("unsupported scheduler EDMEulerScheduler", "DDPMScheduler", "ScoreSdeVeScheduler")),
    ({"beta_schedule": "sigmoid"}, ("unsupported beta_schedule 'sigmoid'", "linear, scaled_linear, squaredcos_cap_v2")),
    ({"prediction_type": "flow"}, ("unsupported prediction_type 'flow'", "epsilon, sample, v_prediction")),
])
def test_unsupported_schedulers_are_one_line_errors(pipes, tmp_path, edit, valid):
    shutil.copytree(pipes["eps"], tmp_path / "p")
    cfg_path = tmp_path / "p" / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(edit)
    cfg_path.write_text(json.dumps({k: v for k, v in cfg.items() if v is not None}))
    with pytest.raises(ModelSpecError) as e:
        rm.resolve(f"diffusers:{tmp_path / 'p'}")
    _one_line_naming(e, *valid)


def test_user_model_rejects_bad_input():
    net = toy_factory._seeded(toy_factory.TimeMLP)
    model = Model(net, VPSchedule.linear())
    with pytest.raises(TypeError, match="model must be a solvers.Model .*; got TimeMLP"):
        rm.user_model(net, (2,))
    for shape in [(), (0,), (2, 2), (2.0,), "ab", 2, (1, 2, 3, 4)]:
        with pytest.raises(ValueError, match=r"shape must be one sample's shape.*\(D,\).*\(C, H, W\)"):
            rm.user_model(model, shape)
    with pytest.raises(ValueError, match=r"model output has shape \(2, 2\), expected \(2, 3\)"):
        rm.user_model(Model(lambda x, t: x[:, :2], VPSchedule.linear()), (3,))
    with pytest.raises(ValueError, match=r"evaluating the model on 2 samples of shape \(1, 8, 8\) .* raised RuntimeError"):
        rm.user_model(model, (1, 8, 8))
    with pytest.raises(ValueError, match="NaN/Inf"):
        rm.user_model(Model(lambda x, t: x / 0.0, VPSchedule.linear()), (2,))
    for name in ["", "a b", "a,b", "a/b", ".hidden", "tab\tname"]:
        with pytest.raises(ValueError, match="model name .* is not valid: use letters, digits and . _ - \\+ only"):
            rm.user_model(model, (2,), name=name)
    with pytest.raises(TypeError, match="data must be None, a callable .* or a path; got int"):
        rm.user_model(model, (2,), data=3)
    with pytest.raises(ValueError, match=r"data\(2, generator\) returned \(2, 3\); expected a tensor of shape \(2, 2\)"):
        rm.user_model(model, (2,), data=lambda n, g: torch.zeros(n, 3))
    with pytest.raises(ValueError, match="sample_range must be finite with low < high"):
        rm.user_model(model, (2,), sample_range=(1.0, 0.0))
    rec = rm.user_model(model, (2,), name="ok_name-1.2")
    assert (rec.name, model.nfe, rec.sample_range) == ("ok_name-1.2", 0, (-1.0, 1.0))  # the check is not counted
    assert rm.user_model(Model(net, VESchedule(0.01, 5.0), "score"), (2,)).schedule_name == "ve"


def test_trained_fingerprint_follows_config_schedule_and_weights():
    from reference_models.registry import trained_fingerprint

    net = toy_factory._seeded(toy_factory.TimeMLP)
    net.schedule = VPSchedule.linear()
    first = trained_fingerprint({"steps": 10}, net)
    assert trained_fingerprint({"steps": 10}, net) == first != trained_fingerprint({"steps": 11}, net)
    net.schedule = VESchedule()
    assert trained_fingerprint({"steps": 10}, net) != first
    net.schedule = VPSchedule.linear()
    with torch.no_grad():
        net.net[2].bias[0] += 1e-4
    assert trained_fingerprint({"steps": 10}, net) != first
