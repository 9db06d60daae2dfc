"""`python -m bench run`: every expected row, paired x_T, failures as rows, resume after SIGKILL, lock, bad arguments.

The sharded (torchrun, gloo) run is compared with the single-process one in test_run_dist.py.
"""
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench import quality
from bench.__main__ import main
from bench.dist import World
from bench.store import Journal, RunLock
from bench.sweep import Sweep, load_model, run_sweep
from reference_models import GaussianMixture, ReferenceModel, make_schedule
from solvers import Model, get_solver, list_solvers, sample

ROOT = Path(__file__).resolve().parents[1]
NFES = [5, 8]  # 5 is a budget heun (even) and pc (multiples of 2) cannot spend: skipped rows


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """As `bench run` does by default: small solver steps run fastest on one thread, also on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_image_mixture() -> GaussianMixture:
    """An exact 3-component mixture shaped like 1x4x4 images, so the image-metric path runs on an exact score."""
    g = torch.Generator().manual_seed(3)
    means = torch.randn(3, 16, generator=g, dtype=torch.float64)
    return GaussianMixture(means, torch.tensor([0.2, 0.3, 0.4]), shape=(1, 4, 4))


def loader(name, schedule, prediction, cache_dir, device, progress):
    """gmm2d from the registry, plus test-only models: a tiny image-shaped mixture and a network returning NaN."""
    if name == "tiny-image":
        mix = tiny_image_mixture()
        return ReferenceModel(name, mix.model(make_schedule(schedule), prediction), mix.shape, "exact", "image",
                              lambda n, generator=None: mix.sample(n, generator), mix)
    if name == "nan-net":  # a network that breaks down below t = 0.3
        ref = load_model("gmm2d", schedule, prediction, cache_dir, device, progress)
        good = ref.model.fn

        def fn(x, t):
            out = good(x, t)
            return out if float(t[0]) > 0.3 else out * float("nan")

        return ReferenceModel(name, Model(fn, ref.schedule, prediction), ref.shape, "trained", "2d", ref.data)
    return load_model(name, schedule, prediction, cache_dir, device, progress)


def fake_features(x, cache_dir=None, device="cpu"):
    """The flattened pixels as FID features: a stand-in for the extractor that checks what the harness passes."""
    assert x.shape[1:] == (1, 4, 4)
    return x.flatten(1).double()


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setattr(quality, "extractor_problem", lambda shape, cache_dir=None: None)
    mp.setattr(quality, "sample_features", fake_features)
    mp.setattr(quality, "real_statistics", lambda real, cache_dir=None, device="cpu": (fake_features(real), False))
    sweep = Sweep(["gmm2d", "tiny-image"], list_solvers(), NFES, [0], samples=200, run_id="tiny")
    out = tmp_path_factory.mktemp("tiny")
    try:
        df = run_sweep(sweep, out, World(), loader=loader, progress=False)
    finally:
        mp.undo()
    return sweep, df, out


def test_tiny_sweep_has_every_expected_row(tiny_sweep):
    sweep, df, out = tiny_sweep
    expected = {c.key for c in sweep.cells()}
    got = [(r.model, r.schedule, r.prediction, None, None, r.solver, None if pd.isna(r.nfe) else int(r.nfe),
            int(r.seed)) for r in df.itertuples()]  # unguided: guidance_kind and guidance <NA>
    assert df["guidance"].isna().all() and df["guidance_kind"].isna().all()
    assert len(got) == len(set(got)) and set(got) == expected
    adaptive = [s for s in list_solvers() if get_solver(s).adaptive]
    assert len(df) == 2 * ((len(list_solvers()) - len(adaptive)) * len(NFES) + len(adaptive))
    # the tables on disk are the journal's rows
    assert len(pd.read_parquet(out / "results.parquet")) == len(df) == len(pd.read_csv(out / "results.csv"))
    assert len(Journal(out).rows) == len(df)


def test_budgets_are_spent_exactly_or_skipped_with_the_reason(tiny_sweep):
    _, df, _ = tiny_sweep
    skipped = df[df.status == "skipped"]
    assert {("heun", 5), ("pc", 5)} <= set(zip(skipped.solver, skipped.nfe))
    assert skipped.message.str.contains("valid budgets").all()
    assert (df.status != "failed").all(), df[df.status == "failed"].message.tolist()
    for r in skipped.itertuples():  # every skipped budget really is one the solver refuses
        with pytest.raises(ValueError):
            sample(Model(lambda x, t: x, make_schedule("vp")), torch.zeros(1, 2), r.solver, nfe=int(r.nfe))
    ok = df[df.status == "ok"]
    fixed = ok[ok.nfe.notna()]
    assert (fixed.nfe_used == fixed.nfe).all() and (fixed.steps >= 1).all()
    auto = ok[ok.nfe.isna()]
    assert set(auto.solver) == {s for s in list_solvers() if get_solver(s).adaptive}
    assert (auto.nfe_used > 0).all()
    assert (ok.wall_s > 0).all() and (ok.model_s > 0).all() and (ok.model_s <= ok.wall_s).all()


def test_errors_are_finite_for_ode_and_strong_for_stochastic_solvers(tiny_sweep):
    _, df, _ = tiny_sweep
    ok = df[df.status == "ok"]
    ode, sde = ok[ok.kind == "ode"], ok[ok.kind == "sde"]
    assert len(sde) > 0 and sde.error_rmse.map(math.isfinite).all() and (sde.error_max >= sde.error_rmse).all()
    assert sde.message.str.contains("strong error vs Euler-Maruyama at 4096 uniform steps").all()
    assert ode.error_rmse.map(math.isfinite).all() and (ode.error_max >= ode.error_rmse).all()
    assert ok.nll_gap.map(math.isfinite).all()  # both models are exact
    two_d, image = ok[ok.model == "gmm2d"], ok[ok.model == "tiny-image"]
    assert two_d.swd.notna().all() and two_d.mmd.notna().all() and two_d.fid.isna().all()
    assert image.fid.notna().all() and image.swd.isna().all()
    for model, rows in ode.groupby("model"):
        err = rows.set_index(["solver", "nfe"]).error_rmse
        # paired x_T: DDIM (eta=0) and DPM-Solver-1 are one method, so their errors agree to round-off
        assert err[("ddim", 8)] == pytest.approx(err[("dpm_solver_1", 8)], rel=1e-4)
        assert err[("euler", 8)] < err[("euler", 5)]
        assert rows[rows.solver == "rk45"].error_rmse.iloc[0] < 0.1 * err[("euler", 8)]


def test_a_model_that_returns_nan_gives_failed_rows_and_the_sweep_goes_on(tmp_path):
    sweep = Sweep(["nan-net", "gmm2d"], ["ddim", "euler_maruyama", "rk45"], [4], [0], samples=64)
    df = run_sweep(sweep, tmp_path, World(), loader=loader, progress=False)
    assert len(df) == 6
    bad, good = df[df.model == "nan-net"], df[df.model == "gmm2d"]
    assert (bad.status == "failed").all() and bad.message.str.contains("NaN").all()
    assert (good.status == "ok").all()


def test_failed_loading_fails_its_cells_only(tmp_path):
    def broken(name, *args):
        if name == "missing":
            raise FileNotFoundError("no checkpoint")
        return loader(name, *args)

    df = run_sweep(Sweep(["missing", "gmm2d"], ["ddim"], [4], [0], samples=32), tmp_path, World(), loader=broken,
                   progress=False)
    assert df.set_index("model").status.to_dict() == {"missing": "failed", "gmm2d": "ok"}
    assert "no checkpoint" in df.set_index("model").message["missing"]


def test_x_T_does_not_depend_on_batch_size(tmp_path):
    """Per-sample generators: the same samples whatever the batch size, so sweeps stay paired."""
    a = run_sweep(Sweep(["gmm2d"], ["dpm_solver_2m", "euler_maruyama"], [6], [1], samples=48), tmp_path / "a",
                  World(), progress=False)
    b = run_sweep(Sweep(["gmm2d"], ["dpm_solver_2m", "euler_maruyama"], [6], [1], samples=48, batch_size=20),
                  tmp_path / "b", World(), progress=False)
    for col in ("error_rmse", "nll_gap"):
        assert a[col].to_numpy() == pytest.approx(b[col].to_numpy(), rel=1e-5, nan_ok=True)


@pytest.mark.parametrize("argv, needle", [
    (["--solvers", "ddim,warp_drive"], "unknown solver 'warp_drive'; valid: all, ddim"),
    (["--models", "gmm2d,imagenet"], "unknown model 'imagenet'; valid: all, "),
    (["--nfe", "10,0"], "NFE must be comma-separated integers >= 1"),
    (["--nfe", "10,2.5"], "NFE must be comma-separated integers >= 1"),
    (["--seeds", "-1"], "seed must be comma-separated integers in [0, 9223372036854775807]"),
    (["--seeds", "0,18446744073709551615"], "seed must be comma-separated integers in [0, 9223372036854775807]"),
    (["--repeats", "0"], "must be an integer >= 1"),
    (["--schedules", "vp,subvp"], "unknown schedule 'subvp'; valid: vp, ve"),
    (["--samples", "0"], "must be an integer >= 1"),
    (["--threads", "-1"], "must be an integer >= 0"),
    (["--device", "tpu"], "invalid choice: 'tpu'"),
    (["--sovlers", "ddim"], "unrecognized arguments: --sovlers"),
])
def test_bad_arguments_exit_2_and_name_the_valid_choices(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert needle in err
    if "model" in needle:
        assert "gmm2d" in err.split("valid:")[1]


def test_an_unwritable_out_exits_2(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as e:
        main(["run", "--out", str(tmp_path / "file" / "run")])
    assert e.value.code == 2 and "--out" in capsys.readouterr().err


def test_a_second_run_into_a_locked_directory_is_refused(tmp_path, capsys):
    with RunLock(tmp_path):
        code = main(["run", "--models", "gmm2d", "--solvers", "ddim", "--nfe", "4", "--out", str(tmp_path), "--quiet"])
    assert code == 1
    assert f"another `bench run` (pid {os.getpid()}) is writing to {tmp_path}" in capsys.readouterr().err
    assert not (tmp_path / "results.jsonl").exists()


def test_resume_after_sigkill_loses_no_row_and_duplicates_none(tmp_path):
    """Kill `python -m bench run` with SIGKILL after a random number of cells, tear its journal, run it again."""
    cmd = [sys.executable, "-m", "bench", "run", "--models", "gmm2d", "--solvers", "ddim,euler,heun,dpm_solver_2m",
           "--nfe", "3,4,6,8", "--samples", "64", "--quiet"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    n_cells = 16
    kill_after = random.randint(1, n_cells - 2)
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    journal = None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        found = list((tmp_path / "results" / "runs").glob("*/results.jsonl"))
        if found and len(found[0].read_bytes().splitlines()) >= kill_after:
            journal = found[0]
            break
        time.sleep(0.02)
    assert journal is not None, f"the run ended before {kill_after} cells: {proc.communicate()[0].decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = [json.loads(line) for line in journal.read_bytes().splitlines()]
    with open(journal, "ab") as f:  # a torn write, as a kill in the middle of an append would leave
        f.write(b'{"model": "gmm2d", "schedule": "vp", "solv')
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resuming" in done.stderr  # the same command found the unfinished run without --out
    df = pd.read_parquet(journal.parent / "results.parquet")
    keys = list(zip(df.solver, df.nfe))
    assert len(keys) == len(set(keys)) == n_cells, f"killed after {kill_after} cells"
    rows = [json.loads(line) for line in journal.read_bytes().splitlines()]
    assert len(rows) == n_cells and rows[: len(before)] == before  # finished cells were kept, not rerun
    manifest = json.loads((journal.parent / "manifest.json").read_text())
    assert manifest["finished"] and len(manifest["resumed"]) == 1
