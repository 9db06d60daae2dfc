"""Label accuracy of digits-cond samples under classifier-free guidance (Ho & Salimans 2022), per guidance weight.

eps = eps_u + w (eps_c - eps_u), combined here in a plain `solvers.Model` (w = 0: the unconditional model);
n samples with intended labels 0..9 cycling, VP, one solver at one NFE, the same x_T for every w. Accuracy is the
digits classifier's (reference_models.features.label_accuracy) with its 95% Wilson interval.

    python -m benchmarks.digits_guidance [--weights 0,1,2,4] [--n 500] [--solver dpmpp_2m] [--nfe 50] [--seed 0]
"""
from __future__ import annotations

import argparse
import time

import torch

from reference_models.conditional import load_conditional
from reference_models.features import label_accuracy
from solvers import Model, sample


def cfg_model(cond, null: int, labels: torch.Tensor, w: float, schedule) -> Model:
    """A solvers.Model predicting eps_u + w (eps_c - eps_u) for the fixed per-sample `labels` (one batched call)."""
    def fn(x, t):
        n = len(x)
        both = cond(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, torch.full((n,), null)]))
        eps_c, eps_u = both[:n], both[n:]
        return eps_u + w * (eps_c - eps_u)

    return Model(fn, schedule, "eps")


def measure(weights=(0.0, 1.0, 2.0, 4.0), n: int = 500, solver: str = "dpmpp_2m", nfe: int = 50, seed: int = 0,
            cache_dir=None, name: str = "digits-cond", progress: bool = True) -> list[dict]:
    """One row per w: accuracy and its 95% Wilson interval, sampling wall time."""
    cond, null, classes, config = load_conditional(name, cache_dir=cache_dir, progress=progress)
    schedule = cond.denoiser.schedule
    labels = torch.arange(n) % classes
    x_T = torch.randn((n, 1, 8, 8), generator=torch.Generator().manual_seed(seed))
    rows = []
    for w in weights:
        start = time.perf_counter()
        x = sample(cfg_model(cond, null, labels, w, schedule), x_T, solver=solver, nfe=nfe)
        acc, lo, hi = label_accuracy(x, labels, cache_dir=cache_dir)
        rows.append({"w": w, "accuracy": acc, "lo": lo, "hi": hi, "n": n, "solver": solver, "nfe": nfe,
                     "seed": seed, "sample_s": round(time.perf_counter() - start, 1), "train_steps": config["steps"]})
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default="0,1,2,4")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--solver", default="dpmpp_2m")
    p.add_argument("--nfe", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = measure(tuple(float(w) for w in a.weights.split(",")), a.n, a.solver, a.nfe, a.seed, a.cache_dir)
    print("| w | accuracy | 95% interval | sampling s |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['w']:g} | {r['accuracy']:.3f} | [{r['lo']:.3f}, {r['hi']:.3f}] | {r['sample_s']} |")


if __name__ == "__main__":
    main()
