"""A user's own models through `python -m bench run` and `report`: factories, diffusers pipelines saved with random
weights, real data from files, the data-free metric, the reference's accuracy and fingerprints, and bad input.

The models, data and pipelines are made here, in temporary directories: nothing is downloaded.
"""
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bench import quality, references
from bench.__main__ import main
from solvers import list_solvers

# A factory file: a small MLP trained for a few seconds (seeded, one thread: the same weights every time) on the
# 8-Gaussian ring, and an untrained image network. `NAME` and the output tweak are replaced by some tests.
FACTORY = '''
import math

import torch

import reference_models
from solvers import Model, VPSchedule

SCHED = VPSchedule.linear(0.1, 20.0)


def ring(n, generator=None):
    k = torch.randint(0, 8, (n,), generator=generator)
    ang = k.double() * (2 * math.pi / 8)
    return (2 * torch.stack([ang.cos(), ang.sin()], 1) + 0.25 * torch.randn(n, 2, generator=generator,
                                                                             dtype=torch.float64)).float()


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.SiLU(), torch.nn.Linear(64, 64),
                                        torch.nn.SiLU(), torch.nn.Linear(64, 2))

    def forward(self, x, t):
        return self.body(torch.cat([x.float(), t.float()[:, None]], 1)).to(x.dtype)


def train(steps=STEPS):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = Net()
    gen = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for _ in range(steps):
        x0 = ring(256, gen)
        t = torch.rand(256, generator=gen) * (1 - 1e-3) + 1e-3
        alpha, sigma = SCHED.alpha(t.double()).float()[:, None], SCHED.sigma(t.double()).float()[:, None]
        eps = torch.randn(256, 2, generator=gen)
        xt = alpha * x0 + sigma * eps
        loss = (net(xt, t) - eps).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    return net.eval().requires_grad_(False)


def make(device="cpu"):
    net = train().to(device)
    return reference_models.user_model(Model(lambda x, t: OUTPUT, SCHED, "eps"), (2,), data=ring, name=NAME)
'''


def factory(tmp_path: Path, file: str = "toy_factory.py", name: str = '"toy"', steps: int = 300,
            output: str = "net(x, t)") -> Path:
    path = tmp_path / file
    path.write_text(FACTORY.replace("NAME", name).replace("STEPS", str(steps)).replace("OUTPUT", output))
    return path


def run(argv, tmp_path: Path, out: str = "run") -> tuple[int, Path]:
    out_dir = tmp_path / out
    code = main(["run", *argv, "--out", str(out_dir), "--cache-dir", str(tmp_path / "cache"), "--repeats", "1",
                 "--quiet"])
    return code, out_dir


def rows(out_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(out_dir / "results.parquet")


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """The factory's model through every solver, and the report."""
    tmp = tmp_path_factory.mktemp("toy")
    path = factory(tmp)
    code, out = run(["--models", f"{path}:make", "--solvers", "all", "--nfe", "6,12", "--samples", "64"], tmp)
    assert code == 0
    return tmp, path, out


def test_a_factory_model_runs_through_every_solver_and_the_report(toy_run):
    _, path, out = toy_run
    df = rows(out)
    assert set(df["model"]) == {"toy"}
    assert set(df["schedule"]) == {"vp"} and set(df["prediction"]) == {"eps"}
    assert set(df["solver"]) == set(list_solvers())
    ok = df[df["status"] == "ok"]
    assert not (df["status"] == "failed").any(), df.loc[df["status"] == "failed", "message"].tolist()
    assert ok["swd"].notna().all() and ok["mmd"].notna().all()  # the factory's data: quality against data
    assert ok["swd_ref"].notna().all()  # the data-free metric, for every solver (stochastic ones too)
    ode = ok[ok["kind"] == "ode"]
    assert ode["error_rmse"].notna().all() and ode["reference_rmse"].notna().all()
    assert (ok.loc[ok["kind"] == "sde", "error_rmse"].isna()).all()
    manifest = json.loads((out / "manifest.json").read_text())
    info = manifest["models"]["toy"]
    assert info["source"] == f"{path}:make" and len(info["fingerprint"]) >= 16
    report = (out / "report" / "report.md").read_text()
    assert "toy" in report and "dpm_solver_3" in report


def test_the_data_free_metric_falls_as_nfe_rises_for_dpm_solver_3(toy_run, tmp_path):
    """On the trained toy network, with no data given: the distance of dpm_solver_3's samples to the reference
    solution's samples falls at every doubling of the budget, beyond its interval at the ends."""
    _, path, _ = toy_run
    code, out = run(["--models", f"{path}:make", "--solvers", "dpm_solver_3", "--nfe", "6,12,24,48",
                     "--samples", "200"], tmp_path)
    assert code == 0
    d = rows(out).sort_values("nfe")
    values = d["swd_ref"].to_numpy()
    assert (np.diff(values) < 0).all(), values
    assert d["swd_ref_hi"].iloc[-1] < d["swd_ref_lo"].iloc[0]
    assert values[-1] < values[0] / 4


def test_the_reference_accuracy_is_estimated_and_errors_below_it_are_marked(toy_run):
    """Each group records the reference's estimated RMSE; a row whose error is within the margin of it says so."""
    _, _, out = toy_run
    ode = rows(out).query("status == 'ok' and kind == 'ode'")
    rmse = ode["reference_rmse"].iloc[0]
    assert 0 < rmse < 1e-3 and (ode["reference_rmse"] == rmse).all()
    marked = ode["message"].fillna("").str.contains("at reference accuracy")
    assert (marked == (ode["error_rmse"] <= references.MARGIN * rmse)).all()


def test_the_on_device_reference_estimates_its_own_error_honestly():
    """dpm_solver_adaptive at 1e-5 on the exact mixture: its estimated RMSE (vs a 10x looser solve) is at least its
    true RMSE against DOP853 at 1e-10, and within 100x of it (an estimate, not a bound pulled from nowhere)."""
    import reference_models

    ref = reference_models.load("gmm2d", "vp")
    x_T = ref.schedule.prior_sample((64, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = references.solve(ref, x_T, "dop853", 1e-10)
    x = references.solve(ref, x_T, "dpm_solver_adaptive", 1e-5)
    true = float((x - exact).pow(2).mean().sqrt())
    estimate = references.accuracy(ref, x_T, x, "dpm_solver_adaptive", 1e-5)
    assert true <= estimate <= 100 * true, (true, estimate)


def test_the_reference_method_is_chosen_per_model_and_device():
    import reference_models

    exact = reference_models.load("gmm2d", "vp")
    assert references.method("auto", exact, "cpu") == ("dop853", references.EXACT_TOL)
    net = reference_models.ReferenceModel("net", exact.model, (2,), "user", "2d", None)
    assert references.method("auto", net, "cpu") == ("rk45", references.NETWORK_TOL["rk45"])
    assert references.method("auto", net, "cuda") == ("dpm_solver_adaptive", references.NETWORK_TOL["dpm_solver_adaptive"])
    assert references.method("dpm_solver_adaptive:1e-07", net, "cpu") == ("dpm_solver_adaptive", 1e-7)


@pytest.mark.parametrize("value, needle", [("rk4", "valid: auto, dop853, rk45, dpm_solver_adaptive"),
                                           ("rk45:abc", "must be a number"), ("rk45:0.5", "must be a number"),
                                           ("auto:1e-6", "valid: auto")])
def test_a_bad_reference_choice_exits_2(value, needle, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--models", "gmm2d", "--reference", value, "--out", str(tmp_path / "r")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert needle in err and "--reference" in err
    assert not (tmp_path / "r").exists()


def test_samples_do_not_depend_on_the_batch_size(toy_run, tmp_path):
    _, path, _ = toy_run
    out = {}
    for b in ("64", "7"):
        code, out[b] = run(["--models", f"{path}:make", "--solvers", "ddim,euler_maruyama", "--nfe", "6",
                            "--samples", "64", "--batch-size", b], tmp_path, out=f"b{b}")
        assert code == 0
    from safetensors.torch import load_file

    for solver in ("ddim", "euler_maruyama"):
        a, b = (next((out[k] / "arrays").glob(f"*/{solver}-nfe6.safetensors")) for k in ("64", "7"))
        # float32 rounding of the network's matrix products depends on the batch's size; the noise does not
        torch.testing.assert_close(load_file(a)["samples"], load_file(b)["samples"], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# real data from files


def write_pngs(folder: Path, n: int, size=(8, 8)) -> Path:
    from PIL import Image

    from reference_models import digits

    folder.mkdir(parents=True, exist_ok=True)
    x = digits.held_out(n, torch.Generator().manual_seed(0))  # (n, 1, 8, 8) in [-1, 1]
    for i, img in enumerate(((x[:, 0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()):
        Image.fromarray(img, mode="L").save(folder / f"{i:03d}.png")
    return folder


IMAGE_FACTORY = '''
import torch

import reference_models
from solvers import Model, VPSchedule


class Conv(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Conv2d(SHAPE[0] + 1, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, SHAPE[0], 3, padding=1)

    def forward(self, x, t):
        h = torch.cat([x, t.to(x.dtype)[:, None, None, None].expand_as(x[:, :1])], 1)
        return self.b(torch.tanh(self.a(h.float()))).to(x.dtype)


def make():
    net = Conv().eval().requires_grad_(False)
    return reference_models.user_model(Model(net, VPSchedule.linear(), "eps"), SHAPE, name="conv")
'''


def image_factory(tmp_path: Path, shape=(1, 8, 8)) -> Path:
    path = tmp_path / "conv_factory.py"
    path.write_text(IMAGE_FACTORY.replace("SHAPE", repr(tuple(shape))))
    return path


def test_a_folder_of_pngs_gives_fid_rows_and_its_statistics_are_cached(tmp_path, monkeypatch):
    hits = []
    original = quality.real_statistics

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        hits.append(out[1])
        return out

    monkeypatch.setattr(quality, "real_statistics", spy)
    pngs = write_pngs(tmp_path / "pngs", 40)
    spec = f"{image_factory(tmp_path)}:make"
    argv = ["--models", spec, "--data", str(pngs), "--solvers", "ddim,dpm_solver_2", "--nfe", "4",
            "--samples", "16"]
    code, out = run(argv, tmp_path, out="first")
    assert code == 0
    df = rows(out)
    assert (df["status"] == "ok").all(), df["message"].tolist()
    assert df["fid"].notna().all() and df["kid"].notna().all() and df["fd_ref"].notna().all()
    assert (df["fid_lo"] <= df["fid"]).all() and (df["fid"] <= df["fid_hi"]).all()
    groups = pd.read_parquet(out / "groups.parquet")
    assert {"data", "reference"} <= set(groups["source"])  # 40 images: a disjoint floor draw of 16 fits
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["models"]["conv"]["data"]["count"] == 40
    assert hits == [False]
    code, _ = run(argv, tmp_path, out="second")
    assert code == 0 and hits == [False, True]


def test_images_without_a_feature_extractor_say_which_file_is_needed(tmp_path, monkeypatch):
    """3-channel images without the Inception weights: the rows say which file and where; the errors and the
    data-free metric (sliced Wasserstein on pixels) are still recorded."""
    monkeypatch.setenv(quality.INCEPTION_WEIGHTS_ENV, str(tmp_path / "absent.pth"))
    spec = f"{image_factory(tmp_path, (3, 8, 8))}:make"
    data = tmp_path / "x.npz"
    np.savez(data, x=np.random.default_rng(0).uniform(-1, 1, (20, 3, 8, 8)).astype(np.float32))
    code, out = run(["--models", spec, "--data", str(data), "--solvers", "ddim", "--nfe", "4", "--samples", "8"],
                    tmp_path)
    assert code == 0
    df = rows(out)
    assert (df["status"] == "ok").all()
    assert df["fid"].isna().all() and df["swd_ref"].notna().all() and df["error_rmse"].notna().all()
    assert "absent.pth" in df["message"].iloc[0] or "Inception" in df["message"].iloc[0]


# ---------------------------------------------------------------------------------------------------------------
# diffusers pipelines saved with random weights


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "ve"])
def test_a_diffusers_pipeline_runs(kind, tmp_path):
    from user_models.pipelines import save_ddpm, save_ve

    d = tmp_path / "pipe"
    save_ve(d) if kind == "ve" else save_ddpm(d, prediction_type=kind)
    code, out = run(["--models", f"diffusers:{d}", "--solvers", "ddim,dpm_solver_2,euler_maruyama", "--nfe", "4",
                     "--samples", "6"], tmp_path)
    assert code == 0
    df = rows(out)
    assert not (df["status"] == "failed").any(), df["message"].tolist()
    assert set(df["prediction"]) == {"score" if kind == "ve" else {"epsilon": "eps", "v_prediction": "v"}[kind]}
    assert set(df["schedule"]) == {"ve" if kind == "ve" else "vp"}
    ok = df[df["status"] == "ok"]
    assert ok["swd_ref"].notna().all()
    assert ok.loc[ok["kind"] == "ode", "error_rmse"].notna().all()


def test_a_changed_weights_file_gets_a_new_fingerprint_and_a_new_reference(tmp_path):
    from safetensors.torch import load_file, save_file
    from user_models.pipelines import save_ddpm

    d = tmp_path / "pipe"
    save_ddpm(d)
    argv = ["--models", f"diffusers:{d}", "--solvers", "ddim", "--nfe", "4", "--samples", "4"]
    code, first = run(argv, tmp_path, out="first")
    assert code == 0
    weights = next((d / "unet").glob("*.safetensors"))
    state = load_file(weights)
    key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[key] = state[key] + 0.01
    save_file(state, weights)
    code, second = run(argv, tmp_path, out="second")
    assert code == 0
    fp = [json.loads((o / "manifest.json").read_text())["models"] for o in (first, second)]
    (name,) = fp[0]
    assert fp[0][name]["fingerprint"] != fp[1][name]["fingerprint"]
    assert len(list((tmp_path / "cache" / "references").glob("*.safetensors"))) == 2
    assert not rows(second)["message"].fillna("").str.contains("cached").any()


# ---------------------------------------------------------------------------------------------------------------
# bad input: exit 2, one line naming what is valid, nothing written


BROKEN = {
    "missing.py": None,
    "syntax.py": "def make(:\n",
    "raises.py": "def make():\n    raise RuntimeError('no weights here')\n",
    "wrong_type.py": "def make():\n    return 3\n",
    "no_factory.py": "def build():\n    return 3\n",
}


def bad_run(argv, tmp_path, capsys) -> str:
    small = [] if "--samples" in argv else ["--samples", "2"]
    code, out = run([*argv, "--solvers", "ddim", "--nfe", "2", *small], tmp_path)  # small, should it run after all
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert not out.exists()
    assert not (tmp_path / "cache" / "references").exists()
    return err


@pytest.mark.parametrize("file, needle", [("missing.py", "missing.py"), ("syntax.py", "SyntaxError"),
                                          ("raises.py", "no weights here"), ("wrong_type.py", "int"),
                                          ("no_factory.py", "build")])
def test_a_broken_factory_exits_2(file, needle, tmp_path, capsys):
    if BROKEN[file] is not None:
        (tmp_path / file).write_text(BROKEN[file])
    err = bad_run(["--models", f"{tmp_path / file}:make"], tmp_path, capsys)
    assert needle in err and "--models" in err


def test_a_module_that_cannot_be_imported_exits_2(tmp_path, capsys):
    err = bad_run(["--models", "no_such_package_here.models:make"], tmp_path, capsys)
    assert "no_such_package_here" in err


def test_a_model_whose_output_shape_differs_exits_2(tmp_path, capsys):
    path = factory(tmp_path, steps=0, output="net(x, t)[:, :1]")
    err = bad_run(["--models", f"{path}:make"], tmp_path, capsys)
    assert "shape" in err


def test_two_models_with_the_same_name_exit_2(tmp_path, capsys):
    a = factory(tmp_path, "a.py", steps=0)
    b = factory(tmp_path, "b.py", steps=0)
    err = bad_run(["--models", f"{a}:make,{b}:make"], tmp_path, capsys)
    assert "two models are named 'toy'" in err
    c = factory(tmp_path, "c.py", name='"gmm2d"', steps=0)
    err = bad_run(["--models", f"gmm2d,{c}:make"], tmp_path, capsys)
    assert "'gmm2d'" in err


@pytest.mark.parametrize("case", ["missing_dir", "no_scheduler", "bad_scheduler", "bad_prediction"])
def test_bad_diffusers_directories_exit_2(case, tmp_path, capsys):
    from user_models.pipelines import save_ddpm

    d = tmp_path / "pipe"
    if case != "missing_dir":
        save_ddpm(d)
    config = d / "scheduler" / "scheduler_config.json"
    if case == "no_scheduler":
        config.unlink()
    elif case in ("bad_scheduler", "bad_prediction"):
        c = json.loads(config.read_text())
        if case == "bad_scheduler":  # EDM's scheduler: sigmas, no discrete betas
            c = {"_class_name": "EDMEulerScheduler", "sigma_min": 0.002, "sigma_max": 80.0, "sigma_data": 0.5}
        else:
            c["prediction_type"] = "flow"
        config.write_text(json.dumps(c))
    err = bad_run(["--models", f"diffusers:{d}"], tmp_path, capsys)
    needle = {"missing_dir": "pipe", "no_scheduler": "scheduler", "bad_scheduler": "EDMEulerScheduler",
              "bad_prediction": "epsilon"}[case]
    assert needle in err


def test_bad_data_exits_2(tmp_path, capsys):
    spec = f"{image_factory(tmp_path)}:make"
    wrong = write_pngs(tmp_path / "wrong", 30)
    np.savez(tmp_path / "wrong_shape.npz", x=np.zeros((30, 3, 8, 8), np.float32))
    err = bad_run(["--models", spec, "--data", str(tmp_path / "wrong_shape.npz"), "--samples", "8"], tmp_path,
                  capsys)
    assert "(1, 8, 8)" in err and "--data" in err
    err = bad_run(["--models", spec, "--data", str(wrong), "--samples", "50"], tmp_path, capsys)
    assert "30" in err and "50" in err
    (tmp_path / "corrupt.npz").write_bytes(b"not a zip file")
    err = bad_run(["--models", spec, "--data", str(tmp_path / "corrupt.npz"), "--samples", "8"], tmp_path, capsys)
    assert "corrupt.npz" in err
    err = bad_run(["--models", f"gmm2d,{spec}", "--data", str(wrong)], tmp_path, capsys)
    assert "MODEL=PATH" in err
    err = bad_run(["--models", spec, "--data", f"nosuch={wrong}"], tmp_path, capsys)
    assert "'nosuch'" in err and "conv" in err


def test_an_unknown_model_name_names_the_forms_of_a_users_model(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--models", "gmm3d", "--out", str(tmp_path / "r")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "diffusers:PATH_OR_HUB_ID" in err and "MODULE:FACTORY" in err and "gmm2d" in err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_users_model_on_cuda(toy_run, tmp_path):
    _, path, _ = toy_run
    code, out = run(["--models", f"{path}:make", "--solvers", "dpm_solver_2", "--nfe", "6", "--samples", "32",
                     "--device", "cuda"], tmp_path)
    assert code == 0
    df = rows(out)
    assert (df["status"] == "ok").all() and (df["device"].str.startswith("cuda")).all()
    assert math.isfinite(df["error_rmse"].iloc[0])


def test_the_readme_examples_run(tmp_path):
    """The README's factory file and diffusers snippet, as a user copies them, through `bench run` (small)."""
    import subprocess
    import sys

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text().split("## Your model", 1)[1]
    (tmp_path / "my_model.py").write_text(readme.split("```python\n", 1)[1].split("```", 1)[0])
    code, out = run(["--models", f"{tmp_path / 'my_model.py'}:make", "--solvers", "ddim,dpm_solver_3", "--nfe", "6",
                     "--samples", "16"], tmp_path, out="factory")
    assert code == 0 and set(rows(out)["model"]) == {"my-mlp"} and (rows(out)["status"] == "ok").all()
    snippet = readme.split('python -c "\n', 1)[1].split('"\n', 1)[0]
    subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, check=True)
    code, out = run(["--models", f"diffusers:{tmp_path / 'my-ddpm'}", "--solvers", "ddim", "--nfe", "4",
                     "--samples", "4"], tmp_path, out="pipeline")
    df = rows(out)
    assert code == 0 and (df["status"] == "ok").all() and set(df["prediction"]) == {"v"}


def test_a_users_model_shards_under_torchrun_like_a_registered_one(toy_run, tmp_path):
    """Two gloo ranks give the single process's rows: the same samples (per-sample noise), so the same errors."""
    import os
    import signal
    import subprocess
    import sys

    _, path, _ = toy_run
    argv = ["--models", f"{path}:make", "--solvers", "dpm_solver_2,euler_maruyama", "--nfe", "6", "--samples", "40"]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "bench", "run", *argv, "--out", str(tmp_path / "two"), "--cache-dir",
                             str(tmp_path / "cache2"), "--repeats", "1", "--quiet"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        log = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, log[-3000:]
    code, one = run(argv, tmp_path, out="one")
    assert code == 0
    a, b = (rows(d).sort_values("solver").reset_index(drop=True) for d in (one, tmp_path / "two"))
    assert list(a["solver"]) == list(b["solver"]) and (b["status"] == "ok").all()
    assert np.allclose(a["error_rmse"], b["error_rmse"], rtol=1e-3, equal_nan=True)
    assert np.allclose(a["swd_ref"], b["swd_ref"], rtol=1e-3)


def test_fid_statistics_as_data_give_fid_rows(tmp_path):
    """Precomputed statistics (mu, sigma of the real features) in a .npz: FID against them, no KID (it needs the
    features themselves), the same FID as against the features they were computed from."""
    from reference_models import digits

    real = digits.held_out(64, torch.Generator().manual_seed(0))
    feats = quality.real_statistics(real, cache_dir=tmp_path / "cache")[0].numpy()
    np.savez(tmp_path / "stats.npz", mu=feats.mean(0), sigma=np.cov(feats, rowvar=False))
    np.savez(tmp_path / "real.npz", x=real.numpy())
    spec = f"{image_factory(tmp_path)}:make"
    out = {}
    for data in ("stats.npz", "real.npz"):
        code, out[data] = run(["--models", spec, "--data", str(tmp_path / data), "--solvers", "ddim", "--nfe", "4",
                               "--samples", "64"], tmp_path, out=f"run-{data}")
        assert code == 0
    by_stats, by_features = rows(out["stats.npz"]), rows(out["real.npz"])
    assert by_stats["kid"].isna().all() and by_features["kid"].notna().all()
    assert by_stats["fid"].iloc[0] == pytest.approx(by_features["fid"].iloc[0], rel=1e-6)


def test_data_for_a_registered_model_replaces_its_own(tmp_path):
    """--data MODEL=PATH on a registered model: quality against those points (here: the ring shifted by 3, so the
    distance to data is large), the same samples and errors as without it."""
    from reference_models import load

    pts = load("gmm2d").data(400, torch.Generator().manual_seed(5)) + 3.0
    np.savez(tmp_path / "shifted.npz", x=pts.numpy())
    base = ["--models", "gmm2d", "--solvers", "dpm_solver_2", "--nfe", "8", "--samples", "200"]
    code, own = run(base, tmp_path, out="own")
    assert code == 0
    code, shifted = run([*base, "--data", f"gmm2d={tmp_path / 'shifted.npz'}"], tmp_path, out="shifted")
    assert code == 0
    a, b = rows(own).iloc[0], rows(shifted).iloc[0]
    assert b["swd"] > 4 * a["swd"] and b["swd_lo"] > a["swd_hi"]
    assert a["error_rmse"] == b["error_rmse"] and a["swd_ref"] == b["swd_ref"]
    manifest = json.loads((shifted / "manifest.json").read_text())
    assert manifest["models"]["gmm2d"]["data"]["count"] == 400


@pytest.mark.parametrize("metric", ["swd_ref", "fd_ref"])
def test_the_data_free_metrics_interval_resamples_pairs(metric):
    """Samples near the reference's, pair by pair (same x_T): a resample takes the same pairs, so the interval is
    that of the paired distance, over 100x narrower than the sampling noise of the samples against a fixed
    reference set; identical samples give exactly 0."""
    from bench import intervals
    from bench.metrics import Evaluator, Observation

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(500, 3))
    x = ref + 1e-2 * rng.normal(size=ref.shape)
    ev = Evaluator(None, None, 0, "2d" if metric == "swd_ref" else "image", ref_points=ref, ref_metric=metric)
    got = ev.measure(Observation(points=x), 0)
    # half the samples: sizes differ, so the reference set stays fixed and only the samples are resampled
    _, lo_u, hi_u = intervals.bootstrap(ev._reference_statistic(Observation(points=x[:250]), metric), 250, 0)
    assert got[f"{metric}_hi"] - got[f"{metric}_lo"] < (hi_u - lo_u) / 100
    assert got[f"{metric}_lo"] <= got[metric] <= got[f"{metric}_hi"]
    assert ev.measure(Observation(points=ref.copy()), 0)[metric] == pytest.approx(0, abs=1e-12)
