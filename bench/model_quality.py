"""`python -m bench.model_quality`: the quality bars of the reference models, with numbers and scatter plots.

- toy2d-*: sliced Wasserstein distance of 10k samples (dpm_solver_3, 50 NFE) to 10k fresh data,
  against the distance between two independent 10k data draws (both averaged over --repeats draws).
- digits: FID/KID under the digit classifier of model samples, real train digits and Gaussian
  noise, each against the held-out digits; gmm-digits: exact held-out log-likelihood and FID.
Models missing from the cache are trained first (as `bench run` does); times come from their configs.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time

import torch

from reference_models import digits, features, load
from solvers import sample

from .quality import fid_kid, sliced_wasserstein

TOY = ["toy2d-swissroll", "toy2d-moons", "toy2d-checkerboard", "toy2d-8gaussians"]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _draw(ref, n: int, seed: int, nfe: int = 50) -> torch.Tensor:
    x_t = ref.schedule.prior_sample((n, *ref.shape), _gen(seed))
    with torch.inference_mode():
        return sample(ref.model, x_t, solver="dpm_solver_3", nfe=nfe)


def _train_info(ref) -> dict:
    return {k: ref.info.get(k) for k in ("steps", "batch_size", "seed", "train_time_s", "train_cpu_s", "final_loss")}


def toy_quality(name: str, n: int, repeats: int, out: pathlib.Path, cache_dir) -> dict:
    ref = load(name, cache_dir=cache_dir)
    x = _draw(ref, n, seed=1)
    data = [ref.data(n, _gen(100 + i)) for i in range(repeats + 1)]
    model_swd = [sliced_wasserstein(x, d, generator=_gen(7)) for d in data[1:]]
    data_swd = [sliced_wasserstein(data[0], d, generator=_gen(7)) for d in data[1:]]
    ms, ds = sum(model_swd) / repeats, sum(data_swd) / repeats
    png = out / f"{name}.png"
    _scatter(x, data[0], name, png)
    return {"model": name, "swd_model_vs_data": ms, "swd_data_vs_data": ds, "ratio": ms / ds, "passes": ms <= 3 * ds,
            "png": str(png), **_train_info(ref)}


def _scatter(x: torch.Tensor, d: torch.Tensor, name: str, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 4), sharex=True, sharey=True)
    for ax, pts, title in ((axes[0], x, "samples (dpm_solver_3, 50 NFE)"), (axes[1], d, "data")):
        ax.scatter(pts[:, 0].numpy(), pts[:, 1].numpy(), s=0.5, alpha=0.4, linewidths=0)
        ax.set_title(title, fontsize=9)
        ax.set_aspect("equal")
    fig.suptitle(name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _grid(x: torch.Tensor, path: pathlib.Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = min(12, int(math.sqrt(len(x))))  # a 12 x 12 grid of the first samples
    imgs = torch.nn.functional.pad(x[: k * k, 0].clamp(-1, 1), (1, 1, 1, 1), value=-1.0)  # a blank frame each
    tiles = torch.cat([torch.cat(list(imgs[r * k:(r + 1) * k]), dim=1) for r in range(k)], dim=0)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(tiles.numpy(), cmap="gray_r", vmin=-1, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def digit_quality(out: pathlib.Path, cache_dir) -> dict:
    test, _ = digits.test_split()
    train, _ = digits.train_split()
    n = len(train)  # every set compared with the held-out digits has the train split's size
    net, cls = features.load_classifier(cache_dir)
    res = {"classifier_test_accuracy": cls["test_accuracy"], "classifier_train_time_s": cls["train_time_s"],
           "classifier_train_cpu_s": cls.get("train_cpu_s"), "n_compared": n, "n_held_out": len(test)}
    kw = {"cache_dir": cache_dir, "real_cache_name": "digits-test"}
    res["train_vs_test"] = fid_kid(train, test, **kw)
    res["noise_vs_test"] = fid_kid(torch.randn(n, 1, 8, 8, generator=_gen(3)), test, **kw)
    ref = load("digits", cache_dir=cache_dir)
    x = _draw(ref, n, seed=2)
    res["digits_model_vs_test"] = fid_kid(x, test, **kw)
    res["digits_train"] = _train_info(ref)
    res["digits_passes"] = res["digits_model_vs_test"]["fid"] <= res["noise_vs_test"]["fid"] / 10
    _grid(x, out / "digits-samples.png", "digits: dpm_solver_3, 50 NFE")
    _grid(test, out / "digits-real.png", "held-out real digits")
    gref = load("gmm-digits")
    mix = gref.mixture
    gx = _draw(gref, n, seed=2)
    exact = mix.sample(n, _gen(4))
    ll_test, ll_train = float(mix.log_prob(test).mean()), float(mix.log_prob(train).mean())
    res["gmm_digits"] = {
        "loglik_held_out_nats": ll_test, "loglik_train_nats": ll_train,
        "bits_per_dim_held_out": -ll_test / (64 * math.log(2)),
        "loglik_of_own_samples_nats": float(mix.log_prob(gx).mean()),
        "fid_kid_dpm_solver_3_50nfe_vs_test": fid_kid(gx, test, **kw),
        "fid_kid_exact_draws_vs_test": fid_kid(exact, test, **kw)}
    _grid(gx, out / "gmm-digits-samples.png", "gmm-digits: dpm_solver_3, 50 NFE")
    res["pngs"] = [str(out / p) for p in ("digits-samples.png", "digits-real.png", "gmm-digits-samples.png")]
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.model_quality", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/runs/model-quality", help="folder for the PNGs and quality.json")
    p.add_argument("--cache-dir", default=None, help="model cache (default: $SAMPLERBENCH_CACHE, else ~/.cache)")
    p.add_argument("--samples", type=int, default=10_000, help="toy2d: samples and data points per set")
    p.add_argument("--repeats", type=int, default=5, help="toy2d: independent data draws averaged over")
    p.add_argument("--only", choices=["toy2d", "digits"], default=None, help="measure one family only")
    args = p.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start, report = time.perf_counter(), {}
    if args.only in (None, "toy2d"):
        report["toy2d"] = []
        for name in TOY:
            r = toy_quality(name, args.samples, args.repeats, out, args.cache_dir)
            report["toy2d"].append(r)
            print(f"{name:<20} SWD model {r['swd_model_vs_data']:.4f}  data {r['swd_data_vs_data']:.4f}  "
                  f"ratio {r['ratio']:.2f} ({'pass' if r['passes'] else 'FAIL'} <= 3)  trained in "
                  f"{r['train_time_s']} s wall / {r['train_cpu_s']} s CPU", flush=True)
    if args.only in (None, "digits"):
        d = report["digits"] = digit_quality(out, args.cache_dir)
        for key in ("digits_model_vs_test", "train_vs_test", "noise_vs_test"):
            print(f"{key:<22} FID {d[key]['fid']:9.3f}  KID {d[key]['kid']:.4f}")
        g = d["gmm_digits"]
        print(f"gmm-digits: held-out log-likelihood {g['loglik_held_out_nats']:.2f} nats "
              f"({g['bits_per_dim_held_out']:.3f} bits/dim); FID (dpm_solver_3, 50 NFE) "
              f"{g['fid_kid_dpm_solver_3_50nfe_vs_test']['fid']:.3f}, exact draws {g['fid_kid_exact_draws_vs_test']['fid']:.3f}")
        print(f"classifier accuracy {d['classifier_test_accuracy']:.4f}; digits FID <= noise FID / 10: "
              f"{'pass' if d['digits_passes'] else 'FAIL'}; digits trained in {d['digits_train']['train_time_s']} s wall / "
              f"{d['digits_train']['train_cpu_s']} s CPU")
    report["wall_s"] = round(time.perf_counter() - start, 1)
    (out / "quality.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out / 'quality.json'} and the PNGs in {out}", file=sys.stderr)
    return 0 if all(r["passes"] for r in report.get("toy2d", [])) and report.get("digits", {}).get(
        "digits_passes", True) else 1


if __name__ == "__main__":
    sys.exit(main())
