"""What a stochastic sampler's noise costs: its wall time per evaluation over its deterministic counterpart's.

The identity network (eps = x) at batch 256 x 1x8x8 in float32, one CPU thread (as benchmarks/overhead.py's
Bench), so the time per evaluation is the sampler's own. Pairs (stochastic, deterministic): ddim eta=1 / ddim,
dpmpp_2m_sde / dpmpp_2m and edm_sde / heun where those are registered. Each stochastic sampler is timed with
every noise source a user can pass as `generator=`:

    torch.Generator       one generator for the batch (a sample then depends on its batch)
    per-sample generators solvers.per_sample_generators(seeds): a Python loop of 256 draws per step
    seeded_noise          solvers.seeded_noise(seeds, shape): the same per-sample independence, one hashed draw
    brownian_paths        solvers.brownian_paths(seeds, shape, t_end, T): one Brownian path per sample

Rounds alternate between the deterministic run and each stochastic one, so a slow spell of the shared machine
hits all; a ratio is the median over rounds of (stochastic / deterministic) within the round. Every run shares one
schedule, whose coefficients at the grid's times are memoised on the warm-up run: the steady cost of a sampler used
again, not the first call's (a fresh schedule adds ~70 us per grid time to both sides and flatters the ratio).

    python benchmarks/noise_cost.py [--nfe 10,50] [--rounds 15] [--threads 1] [--device cpu|cuda] [--shape 1,8,8]

--shape sets a sample's shape (default 1x8x8, the digits'; 2 is gmm2d's): the smaller the sample, the more a step
is per-call overhead rather than arithmetic, and the less its normals weigh.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's solvers, not an installed copy's
from solvers import Model, VPSchedule, brownian_paths, list_solvers, per_sample_generators, sample, seeded_noise

BATCH, SHAPE = 256, (1, 8, 8)
T_END = 1e-3
PAIRS = (  # stochastic solver, its options, deterministic counterpart, its options
    ("ddim", {"eta": 1.0}, "ddim", {}),
    ("dpmpp_2m_sde", {}, "dpmpp_2m", {}),
    ("edm_sde", {"s_churn": 40.0}, "heun", {}),  # s_churn = 0 (the default) draws no noise
)
SOURCES = {  # noise source name -> (per-sample seeds, sample shape, device) -> generator
    "torch.Generator": lambda seeds, shape, dev: torch.Generator(device=dev).manual_seed(0),
    "per-sample generators": lambda seeds, shape, dev: per_sample_generators(seeds, device=dev),
    "seeded_noise": lambda seeds, shape, dev: seeded_noise(seeds, shape, dtype=torch.float32, device=dev),
    "brownian_paths": lambda seeds, shape, dev: brownian_paths(seeds, shape, T_END, 1.0, dtype=torch.float32,
                                                               device=dev),
}


def label(name: str, options: dict) -> str:
    """A solver with its options, e.g. ddim(eta=1)."""
    return name + (f"({', '.join(f'{k}={v:g}' for k, v in options.items())})" if options else "")


def identity(x, t):
    return x


def pairs() -> list[tuple]:
    """The pairs whose two solvers are registered (edm_sde and dpmpp_2m_sde come with solvers/stochastic.py)."""
    names = set(list_solvers())
    return [p for p in PAIRS if p[0] in names and p[2] in names]


def _sync(x) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


SCHEDULE = VPSchedule.linear()  # one schedule for every run: its coefficients at the grid times are memoised once


def run(solver: str, options: dict, x_T, nfe: int, generator=None) -> float:
    """Seconds per evaluation of one sampling call (the budget checked exactly; CUDA synchronised)."""
    model = Model(identity, SCHEDULE, prediction="eps")
    _sync(x_T)
    start = time.perf_counter()
    sample(model, x_T, solver, nfe=nfe, t_end=T_END, generator=generator, **options)
    _sync(x_T)
    wall = time.perf_counter() - start
    assert model.nfe == nfe, (solver, model.nfe, nfe)
    return wall / nfe


def measure(nfes=(10, 50), rounds: int = 15, sources=tuple(SOURCES), device: str = "cpu",
            shape: tuple[int, ...] = SHAPE) -> list[dict]:
    """One row per (pair, NFE, noise source): deterministic and stochastic microseconds per evaluation, and the ratio."""
    x_T = torch.randn(BATCH, *shape, generator=torch.Generator().manual_seed(0)).to(device)
    seeds = list(range(BATCH))
    rows = []
    for sto, sto_opts, det, det_opts in pairs():
        for nfe in nfes:
            run(det, det_opts, x_T, nfe)  # warm up
            times = {"det": [], **{s: [] for s in sources}}
            for _ in range(rounds):
                times["det"].append(run(det, det_opts, x_T, nfe))
                for s in sources:
                    times[s].append(run(sto, sto_opts, x_T, nfe, SOURCES[s](seeds, shape, device)))
            d = times["det"]
            for s in sources:
                ratios = [a / b for a, b in zip(times[s], d)]
                rows.append({"pair": f"{label(sto, sto_opts)} / {label(det, det_opts)}", "nfe": nfe, "source": s,
                             "det_us": statistics.median(d) * 1e6, "sto_us": statistics.median(times[s]) * 1e6,
                             "ratio": statistics.median(ratios)})
    return rows


def format_rows(rows: list[dict], device: str = "cpu", shape: tuple[int, ...] = SHAPE) -> str:
    where = torch.cuda.get_device_name(device) if device.startswith("cuda") else f"{torch.get_num_threads()} thread(s)"
    out = [f"identity model, batch {BATCH} x {'x'.join(map(str, shape))} float32, {where}; "
           "microseconds per evaluation (median over rounds)",
           f"{'pair':30s} {'NFE':>4s} {'noise source':22s} {'det':>7s} {'stoch':>8s} {'ratio':>7s}"]
    out += [f"{r['pair']:30s} {r['nfe']:4d} {r['source']:22s} {r['det_us']:7.0f} {r['sto_us']:8.0f} {r['ratio']:6.2f}x"
            for r in rows]
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nfe", default="10,50")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda (timings synchronised)")
    p.add_argument("--shape", default=",".join(map(str, SHAPE)), help="a sample's shape, e.g. 1,8,8 (default) or 2")
    args = p.parse_args(argv)
    parts = args.shape.split(",")
    if not all(n.strip().isdigit() and int(n) > 0 for n in parts):
        p.error(f"--shape takes positive integers separated by commas (e.g. 1,8,8 or 2), got {args.shape!r}")
    shape = tuple(int(n) for n in parts)
    torch.set_num_threads(args.threads)
    rows = measure(tuple(int(n) for n in args.nfe.split(",")), args.rounds, device=args.device, shape=shape)
    print(format_rows(rows, args.device, shape))


if __name__ == "__main__":
    main()
