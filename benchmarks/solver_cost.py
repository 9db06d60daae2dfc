"""Pure solver cost per evaluation, ours against diffusers for the same algorithm, measured side by side.

A near-free network (eps = 0.1 x) on a batch of 64 x 3x32x32 in float32, one CPU thread: the wall time per
evaluation is then the sampler's own cost (its tensor passes, its bookkeeping) plus one multiply. Pairs:

    ddim                      DDIMScheduler
    dpmpp_2m                  DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2)
    unipc (order 2, bh2)      UniPCMultistepScheduler (its defaults: solver_order=2, bh2, corrector on)

Each run is a whole sampling call as a user makes it (ours: `solvers.sample` on a `Model`, with its output
check; theirs: set_timesteps, then a model call and `scheduler.step` per timestep). Rounds alternate between the
two sides of a pair, so a slow spell of the shared machine hits both; the ratio is the median over rounds of
ours / theirs within the round, with the 10th-90th percentile range of those round ratios.

    python benchmarks/solver_cost.py [--nfe 10,50] [--rounds 30] [--threads 1] [--batch 64]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's solvers, not an installed copy's
from solvers import Model, VPSchedule, sample

PAIRS = (  # ours, our options, diffusers' scheduler, its options
    ("ddim", {}, "DDIMScheduler", {}),
    ("dpmpp_2m", {}, "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    ("unipc", {"order": 2, "variant": "bh2"}, "UniPCMultistepScheduler", {"solver_order": 2, "solver_type": "bh2"}),
)
SHAPE = (3, 32, 32)
N_TRAIN = 1000


def near_free(x, t):
    return x * 0.1


def ours(name: str, options: dict, schedule, x_T, nfe: int) -> int:
    model = Model(near_free, schedule, prediction="eps")
    sample(model, x_T, name, nfe=nfe, t_start=1.0, t_end=1.0 / N_TRAIN, **options)
    return model.nfe


def theirs(cls_name: str, options: dict, x_T, nfe: int) -> int:
    import diffusers

    scheduler = getattr(diffusers, cls_name)(num_train_timesteps=N_TRAIN, **options)
    scheduler.set_timesteps(nfe)
    x, calls = x_T * scheduler.init_noise_sigma, 0
    for t in scheduler.timesteps:
        eps = near_free(x, t)
        calls += 1
        x = scheduler.step(eps, t, x).prev_sample
    return calls


def timed(fn, *args) -> tuple[float, int]:
    start = time.perf_counter()
    calls = fn(*args)
    return time.perf_counter() - start, calls


def measure(nfes=(10, 50), rounds: int = 30, batch: int = 64, pairs=PAIRS) -> list[dict]:
    """One row per (pair, NFE): µs per evaluation of each side (median), and the round-wise ratio ours / theirs."""
    import diffusers  # noqa: F401  (import time out of the first round)

    betas = torch.linspace(1e-4, 0.02, N_TRAIN, dtype=torch.float64)  # diffusers' default linear betas
    schedule = VPSchedule.discrete(betas)
    x_T = torch.randn(batch, *SHAPE, generator=torch.Generator().manual_seed(0))
    rows = []
    for name, opts, cls_name, their_opts in pairs:
        for nfe in nfes:
            for _ in range(2):  # warm-up
                ours(name, opts, schedule, x_T, nfe), theirs(cls_name, their_opts, x_T, nfe)
            a, b = [], []
            for r in range(rounds):
                first, second = (0, 1) if r % 2 == 0 else (1, 0)
                got = [None, None]
                for side in (first, second):
                    got[side] = (timed(ours, name, opts, schedule, x_T, nfe) if side == 0 else
                                 timed(theirs, cls_name, their_opts, x_T, nfe))
                (wa, na), (wb, nb) = got
                if na != nfe or nb != nfe:
                    raise RuntimeError(f"{name}: {na} evaluations, {cls_name}: {nb}, for a budget of {nfe}")
                a.append(wa / nfe), b.append(wb / nfe)
            ratios = sorted(x / y for x, y in zip(a, b))
            lo, hi = ratios[int(0.1 * (rounds - 1))], ratios[int(round(0.9 * (rounds - 1)))]
            rows.append({"ours": f"{name}{' ' + str(opts) if opts else ''}", "diffusers": cls_name, "nfe": nfe,
                         "ours_us": 1e6 * statistics.median(a), "theirs_us": 1e6 * statistics.median(b),
                         "ratio": statistics.median(ratios), "ratio_p10": lo, "ratio_p90": hi})
    return rows


def table(rows: list[dict], threads: int, batch: int) -> str:
    head = (f"near-free model (eps = 0.1 x), batch {batch} x {'x'.join(map(str, SHAPE))}, float32, CPU, "
            f"{threads} thread(s); µs per evaluation, median of rounds; ratio ours / theirs per round: median "
            f"[10th, 90th percentile]")
    lines = [head, "", "| ours | diffusers | NFE | ours µs | diffusers µs | ours / diffusers |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['ours']} | {r['diffusers']} | {r['nfe']} | {r['ours_us']:.0f} | {r['theirs_us']:.0f} | "
                     f"{r['ratio']:.2f} [{r['ratio_p10']:.2f}, {r['ratio_p90']:.2f}] |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nfe", default="10,50")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = measure(tuple(int(v) for v in args.nfe.split(",")), args.rounds, args.batch,
                   pairs=[p for p in PAIRS if _registered(p[0])])
    print(table(rows, args.threads, args.batch))
    return 0


def _registered(name: str) -> bool:
    from solvers import list_solvers

    return name in list_solvers()


if __name__ == "__main__":
    raise SystemExit(main())
