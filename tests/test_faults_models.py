"""Faults found by trying to break the product, each held by a test: unsafe Inception weights, concurrent
training, runaway adaptive solvers, empty batches, conflicting grids, step labels, the time's dtype, bad
`bench train` arguments, a full disk, file modes, the test cache and the shared option checks."""
import errno
import os
import pathlib
import pickle
import re
import stat
import subprocess
import sys
import time

import pytest
import torch

import bench.__main__ as bench_main
from bench import inception
from bench.quality import fid_kid
from reference_models import cache
from reference_models import checkpoints as ck
from reference_models.registry import gmm2d
from reference_models.train import load_trained
from solvers import Model, ModelOutputError, VPSchedule, get_solver, sample
from solvers.options import EvaluationCapError, check_positive, positive

F64 = torch.float64
REPO = pathlib.Path(__file__).resolve().parents[1]


def _model():
    return gmm2d().model(VPSchedule.linear())


# --- 1. Inception weights are never unpickled ---------------------------------------------------------------


class _Payload:
    """Unpickling this creates a file: the malicious weights of the tests."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """torch hub's cache in tmp_path, and any download fails the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv(inception.WEIGHTS_ENV, raising=False)

    def download(*args, **kwargs):
        raise AssertionError(f"the test tried to download {args[:1]}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    assert str(inception.hub_weights_path()).startswith(str(tmp_path))


def _images(seed):
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_inception_weights_are_refused_from_the_env_var_and_the_hub_cache(tmp_path, monkeypatch,
                                                                                    no_network):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pth"
    torch.save({"fc.weight": _Payload(marker)}, bad)  # torch's zip format
    monkeypatch.setenv(inception.WEIGHTS_ENV, str(bad))
    with pytest.raises(inception.InceptionWeightsError, match=r"refusing Inception-v3 weights .*evil\.pth"):
        fid_kid(_images(0), _images(1), cache_dir=tmp_path)
    assert not marker.exists()

    monkeypatch.delenv(inception.WEIGHTS_ENV)
    hub = inception.hub_weights_path()  # where torch-fidelity's own download would be unpickled from
    hub.parent.mkdir(parents=True)
    hub.write_bytes(pickle.dumps(_Payload(marker)))  # a bare pickle
    with pytest.raises(inception.InceptionWeightsError, match="refusing"):
        fid_kid(_images(0), _images(1), cache_dir=tmp_path)
    with pytest.raises(inception.InceptionWeightsError, match="refusing"):  # torch-fidelity's own name too
        from torch_fidelity.utils import create_feature_extractor

        create_feature_extractor(inception.register_with_torch_fidelity(), ["2048"], cuda=False)
    assert not marker.exists()
    pickle.loads(pickle.dumps(_Payload(marker)))  # the payload does run when unpickled
    assert marker.exists()


def test_plain_inception_weights_load_from_the_hub_cache_and_safetensors(tmp_path, monkeypatch, no_network):
    import torch_fidelity.feature_extractor_inceptionv3 as inc
    from safetensors.torch import save_file

    class _Unloaded(inc.FeatureExtractorInceptionV3):  # random weights: the real ones are not available here
        def load_state_dict(self, state_dict, *args, **kwargs):
            return None

    with monkeypatch.context() as m:
        m.setattr(inc, "load_state_dict_from_url", lambda *a, **k: None)
        torch.manual_seed(0)
        state = _Unloaded("inception-v3-compat", ["2048"]).state_dict()
    hub = inception.hub_weights_path()
    hub.parent.mkdir(parents=True)
    torch.save(state, hub)
    from torch_fidelity.utils import create_feature_extractor

    net = create_feature_extractor(inception.register_with_torch_fidelity(), ["2048"], cuda=False)
    assert torch.equal(net.fc.weight, state["fc.weight"])
    copy = tmp_path / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(copy))
    loaded = inception.load_state_dict(inception.weights_path(copy))
    assert torch.equal(loaded["fc.weight"], state["fc.weight"])
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(3)}, wrong)
    with pytest.raises(inception.InceptionWeightsError, match="does not hold torch-fidelity's Inception-v3"):
        create_feature_extractor(inception.register_with_torch_fidelity(), ["2048"], cuda=False,
                                 feature_extractor_weights_path=str(wrong))


# --- 2. two trainers of one model --------------------------------------------------------------------------

_TRAINER = """
import pathlib, sys, time
from reference_models.train import train
me, folder, rounds = sys.argv[1], pathlib.Path(sys.argv[2]), [int(s) for s in sys.argv[3].split(",")]
for r, steps in enumerate(rounds):  # one process per trainer for all rounds: imports once
    (folder / f"ready-{r}-{me}").touch()
    while not (folder / f"go-{r}").exists():
        time.sleep(0.002)
    train("toy2d-moons", steps=steps, batch_size=16, cache_dir=folder / "cache", progress=False)
    (folder / f"done-{r}-{me}").touch()
"""


def _wait_for(paths, procs, timeout=120.0):
    deadline = time.time() + timeout
    while not all(p.exists() for p in paths):
        assert time.time() < deadline and all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.005)


def test_two_concurrent_trainers_always_leave_a_loadable_checkpoint(tmp_path):
    """Two processes train one model at the same moment, round after round (replacing the last checkpoint)."""
    rounds = [3, 4, 3, 5, 4, 3]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _TRAINER, str(i), str(tmp_path), ",".join(map(str, rounds))],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        for r, steps in enumerate(rounds):
            _wait_for([tmp_path / f"ready-{r}-{i}" for i in range(2)], procs)
            (tmp_path / f"go-{r}").touch()
            _wait_for([tmp_path / f"done-{r}-{i}" for i in range(2)], procs)
            _, config = load_trained("toy2d-moons", cache_dir=tmp_path / "cache", train_missing=False, progress=False)
            assert config["steps"] == steps
            models = tmp_path / "cache" / "models"
            assert sorted(p.name for p in models.iterdir()) == ["toy2d-moons-vp-eps.safetensors",
                                                                "toy2d-moons-vp-eps.safetensors.lock"]
        assert [p.wait(timeout=60) for p in procs] == [0, 0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


# --- 3. adaptive solvers: an evaluation cap and clear errors -----------------------------------------------


@pytest.mark.parametrize("solver,opts", [("dpm_solver_adaptive", {"rtol": 1e-12, "atol": 1e-12}),
                                         ("rk45", {"rtol": 1e-13, "atol": 1e-13})])
def test_adaptive_solvers_stop_at_their_evaluation_cap(solver, opts):
    model = _model()
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    assert get_solver(solver).options["max_nfe"] == 10_000  # on by default
    with pytest.raises(EvaluationCapError, match=rf"{solver} reached its evaluation cap max_nfe=40"):
        sample(model, x, solver, max_nfe=40, **opts)
    assert 30 <= model.nfe <= 40


@pytest.mark.parametrize("opts,dtype,message", [
    ({"theta": 10}, torch.float32, r"theta must be a number in \(0, 1\]"),
    ({"h_init": 1e-300}, torch.float64, r"h_init must be a number >= 1e-06"),
    ({"max_nfe": 0}, torch.float64, r"max_nfe must be an integer >= 1"),
    ({}, torch.float16, r"float32 or float64.*got torch.float16"),
])
def test_adaptive_dpm_solver_bad_options_and_dtypes_are_clear_errors(opts, dtype, message):
    model = _model()
    with pytest.raises(ValueError, match=message):
        sample(model, torch.zeros(2, 2, dtype=dtype), "dpm_solver_adaptive", **opts)
    assert model.nfe == 0


# --- 4, 8, 9, 10: sample's input checks, step labels and the time passed to the network ---------------------


def _counting(fn=None):
    calls = []

    def net(x, t):
        calls.append(t.clone())
        return torch.zeros_like(x) if fn is None else fn(x, t, len(calls))

    return net, calls


def test_an_empty_batch_is_refused_before_any_evaluation():
    net, calls = _counting()
    with pytest.raises(ValueError, match=r"at least one sample, got shape \(0, 2\)"):
        sample(Model(net, VPSchedule.linear()), torch.zeros(0, 2), "ddim", nfe=4)
    assert calls == []


def test_explicit_timesteps_conflicting_with_t_start_or_t_end_are_refused():
    net, calls = _counting()
    model = Model(net, VPSchedule.linear())
    grid = torch.tensor([0.8, 0.5, 0.1], dtype=F64)
    for kw in ({"t_start": 1.0}, {"t_end": 1e-3}, {"t_start": 0.8, "t_end": 0.2}):
        with pytest.raises(ValueError, match="conflict with the explicit timesteps, which run from 0.8 to 0.1"):
            sample(model, torch.zeros(3, 2), "ddim", nfe=2, timesteps=grid, **kw)
    assert calls == []
    sample(model, torch.zeros(3, 2), "ddim", nfe=2, timesteps=grid, t_start=0.8, t_end=0.1)  # agreeing ends
    sample(model, torch.zeros(3, 2), "ddim", nfe=2, timesteps=grid)
    assert [float(c[0]) for c in calls] == pytest.approx([0.8, 0.5] * 2)


@pytest.mark.parametrize("solver,nfe,bad_call,label", [
    ("pc", 10, 10, "step 5 of 5"),  # the last corrector (was labelled "step 6 of 5")
    ("pc", 10, 9, "step 5 of 5"),
    ("pc", 10, 8, "step 4 of 5"),
    ("heun", 10, 10, "step 5 of 5"),
    ("heun", 10, 3, "step 2 of 5"),
    ("dpm_solver_2", 5, 5, "step 3 of 3"),
    ("dpm_solver_2", 5, 4, "step 2 of 3"),
    ("ddim", 4, 4, "step 4 of 4"),
])
def test_a_nan_at_a_late_evaluation_names_the_right_step(solver, nfe, bad_call, label):
    net, _ = _counting(lambda x, t, n: torch.full_like(x, float("nan") if n == bad_call else 0.0))
    with pytest.raises(ModelOutputError, match=rf"^{solver}, {label}: model returned NaN/Inf \(evaluation {bad_call} "):
        sample(Model(net, VPSchedule.linear()), torch.zeros(2, 2), solver, nfe=nfe)


def test_a_nan_in_the_final_denoising_evaluation_is_named_so():
    net, _ = _counting(lambda x, t, n: torch.full_like(x, float("nan") if n == 11 else 0.0))
    with pytest.raises(ModelOutputError, match=r"^pc, final denoising evaluation: "):
        sample(Model(net, VPSchedule.linear()), torch.zeros(2, 2), "pc", nfe=11, denoise_final=True)


def test_the_network_gets_t_in_at_least_float32():
    net, calls = _counting()
    model = Model(net, VPSchedule.linear())
    grid = torch.tensor([0.9, 0.123456789, 0.0012345], dtype=F64)
    sample(model, torch.zeros(2, 2, dtype=torch.bfloat16), "ddim", nfe=2, timesteps=grid)
    assert all(c.dtype == torch.float32 for c in calls)
    assert torch.equal(torch.stack(calls)[:, 0], grid[:2].float())  # bf16 would give 0.1235 (off by 3e-5)
    calls.clear()
    sample(model, torch.zeros(2, 2, dtype=F64), "ddim", nfe=2, timesteps=grid)
    assert all(c.dtype == F64 for c in calls) and float(calls[1][0]) == 0.123456789


# --- 6. `bench train`: bad arguments, a full disk ----------------------------------------------------------


@pytest.mark.parametrize("args,message", [
    (["--batch-size", "0"], r"argument --batch-size: must be an integer >= 1, got '0'"),
    (["--steps", "-3"], r"argument --steps: must be an integer >= 1"),
    (["--seed", "18446744073709551615"], r"argument --seed: must be an integer in \[0, 9223372036854775807\]"),
    (["--device", "foo"], r"argument --device: unknown or unavailable device 'foo'; valid here: cpu"),
    (["--device", "cuda"], r"argument --device: unknown or unavailable device 'cuda'; valid here: cpu"),
    (["--cache-dir", "FILE"], r"argument --cache-dir: .* is not a directory"),
])
def test_bench_train_refuses_bad_arguments_in_one_line_writing_nothing(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # as on a machine without a GPU
    (tmp_path / "file").write_text("x")
    args = [str(tmp_path / "file") if a == "FILE" else a for a in args]
    cache_args = [] if "--cache-dir" in args else ["--cache-dir", str(tmp_path / "cache")]
    with pytest.raises(SystemExit) as exc:
        bench_main.main(["train", "toy2d-moons", "--steps", "2", "--no-progress", *cache_args, *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in err if "error" in line]) == 1
    assert re.search(message, err[-1]), err[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_full_disk_while_writing_a_checkpoint_is_one_line_and_keeps_the_old_one(tmp_path, monkeypatch, capsys):
    base = ["train", "toy2d-moons", "--steps", "2", "--batch-size", "8", "--no-progress", "--cache-dir", str(tmp_path)]
    assert bench_main.main(base) == 0
    path = cache.checkpoint_path("toy2d-moons", "vp", "eps", tmp_path)
    old = path.read_bytes()
    real_write = pathlib.Path.write_bytes

    def full(self, data):
        real_write(self, data[: len(data) // 2])  # part of it reaches the disk, then no space is left
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    capsys.readouterr()
    assert bench_main.main([*base, "--seed", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "disk is full" in err[0], err
    monkeypatch.undo()
    assert path.read_bytes() == old
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.name + ".lock"]  # no temporary file
    ck.load_checkpoint(path)


# --- 7. file modes follow the umask ------------------------------------------------------------------------


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = ck.save_checkpoint(tmp_path / "m.safetensors", {"w": torch.ones(2)}, {"name": "m"})
        ck.atomic_write_bytes(tmp_path / "t.csv", b"a,b\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "t.csv").stat().st_mode) == mode


# --- 11. the tests' own cache ------------------------------------------------------------------------------


def test_the_test_session_uses_a_temporary_model_cache(tmp_path_factory):
    here = cache.cache_dir()
    assert os.environ[cache.ENV_VAR] == str(here)
    assert here.is_relative_to(tmp_path_factory.getbasetemp())


# --- 12. one positive-number check for every solver option --------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), True, "1", None])
def test_one_positive_number_check(bad):
    with pytest.raises(ValueError, match=rf"^snr must be a finite number > 0, got {bad!r}$".replace("(", r"\(")):
        positive("snr", bad)
    assert positive("x", 2) == 2 and positive("x", 1e-300) == 1e-300
    with pytest.raises(ValueError, match="atol must be a finite number > 0"):
        check_positive({"rtol": 1.0, "atol": bad}, ("rtol", "atol"))


@pytest.mark.parametrize("solver,option", [("rk45", "rtol"), ("rk45", "atol"), ("dpm_solver_adaptive", "rtol"),
                                           ("dpm_solver_adaptive", "theta"), ("pc", "snr")])
def test_every_solver_uses_the_shared_positive_check(solver, option):
    with pytest.raises(ValueError, match=rf"^{option} must be a finite number > 0, got -1$"):
        get_solver(solver).resolve_options({option: -1})
