"""`bench run` under torchrun with 2 CPU processes (gloo) gives the single-process table."""
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench.dist import World
from bench.sweep import Sweep, run_sweep

ROOT = Path(__file__).resolve().parents[1]
SOLVERS = ["dpm_solver_2m", "heun", "rk45", "euler_maruyama", "pc"]
NFES = [5, 10]
KEY = ["model", "schedule", "solver", "nfe", "seed"]


def torchrun_env() -> dict:
    """The environment of `bench` under torchrun: this checkout importable, one thread per rank."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


def test_shard_covers_every_sample_once():
    for n in (1, 7, 64):
        for size in (1, 2, 3):
            parts = [list(World(r, size).shard(n)) for r in range(size)]
            assert sum(parts, []) == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_two_gloo_processes_match_one(tmp_path):
    args = ["run", "--models", "gmm2d", "--solvers", ",".join(SOLVERS), "--nfe", ",".join(map(str, NFES)),
            "--seeds", "0,1", "--samples", "150", "--quiet"]
    env = torchrun_env()
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "bench", *args, "--out", str(tmp_path / "two")], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out = proc.communicate(timeout=300)[0]
    finally:  # never leave ranks behind
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun rank (OMP_NUM_THREADS=1)
    try:
        one = run_sweep(Sweep(["gmm2d"], SOLVERS, NFES, [0, 1], samples=150), tmp_path / "one", World(),
                        progress=False)
    finally:
        torch.set_num_threads(threads)
    two = pd.read_parquet(tmp_path / "two" / "results.parquet")
    assert set(two.device) == {"cpu"}
    a, b = (d.sort_values(KEY).reset_index(drop=True) for d in (one, two))
    assert a[KEY + ["status"]].astype(str).equals(b[KEY + ["status"]].astype(str))  # the same rows
    assert (a.status != "failed").all()
    fixed = a.nfe.notna() & (a.status == "ok")
    assert (a.loc[fixed, "nfe_used"] == b.loc[fixed, "nfe_used"]).all()
    # fixed-budget cells: the same samples (per-sample noise streams), so the same numbers up to reduction order
    for col in ("error_rmse", "error_max", "nll_gap", "swd", "mmd"):
        assert np.allclose(a.loc[fixed, col], b.loc[fixed, col], rtol=1e-4, atol=1e-7, equal_nan=True), col
    # adaptive cells: each rank solves its half as one system, so the steps differ; the error stays within noise
    auto = a.nfe.isna()
    ratio = b.loc[auto, "error_rmse"].to_numpy() / a.loc[auto, "error_rmse"].to_numpy()
    assert np.all((ratio > 1 / 3) & (ratio < 3)), ratio
    assert np.allclose(a.loc[auto, "nll_gap"], b.loc[auto, "nll_gap"], atol=0.05)


def test_more_ranks_than_samples_is_refused_up_front(tmp_path):
    """Two ranks and one sample: a one-line error and exit 2 on every rank, not gloo's 'Connection closed by peer'."""
    env = torchrun_env()
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "bench", "run", "--models", "gmm2d", "--solvers", "ddim", "--nfe", "4", "--samples", "1",
                           "--quiet", "--out", str(tmp_path / "run")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "error: 2 ranks but fewer samples per cell for gmm2d (1): every rank needs a sample" in out, out[-3000:]
    # No collective reached: each rank exits 2 on its own, unless torchrun stopped the slower one (SIGTERM)
    # after the first exit 2, which happens on a busy machine.
    codes = re.findall(r"exitcode  : (-?\d+)", out)
    assert len(codes) == 2 and "2" in codes and set(codes) <= {"2", "-15"}, codes
    assert "Connection closed" not in out
    assert not (tmp_path / "run").exists()
