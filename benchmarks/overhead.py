"""Solver overhead: wall-clock of `solvers.sample` against the time spent inside the model, per solver and NFE.

Two models: a near-free identity network (eps = x), whose wall time per evaluation is the solver's own
cost; and the digits U-Net (diffusers' UNet2DModel in the configuration of `reference_models.train`,
random weights) at batch 256. For the U-Net, the ratio wall / model time is the bar of issue 7
(<= 1.05 for fixed-step solvers, <= 1.15 for rk45); the model time is summed inside the same run
(`Model.timing`), so a machine that slows down between runs does not skew it. The same U-Net is
also sampled with diffusers' DDIMScheduler and DPMSolverMultistepScheduler (solver_order=2) at the same
NFE, timed the same way, and our wall time is divided by theirs (ddim vs DDIM, dpm_solver_2m vs DPM++2M).

    python benchmarks/overhead.py [--device cpu|cuda] [--batch 256] [--nfe 10,50] [--rounds 3] [--threads 1]

prints the tables; `pytest benchmarks --benchmark-only` runs the same cases under pytest-benchmark.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's solvers, not an installed copy's
from solvers import Model, get_solver, list_solvers, sample

NFES = (10, 50)
BATCH = 256
ADAPTIVE_CAP = 300  # an adaptive solver that needs more U-Net evaluations than this is reported, not run on
BARS = {"fixed": 1.05, "rk45": 1.15}
DIFFUSERS = {"ddim": "DDIMScheduler", "dpm_solver_2m": "DPMSolverMultistepScheduler"}  # ours -> theirs
DONE: list = []  # cases measured under pytest-benchmark, for the summary table (benchmarks/conftest.py)


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class TooManyEvaluations(RuntimeError):
    pass


class Timed:
    """A network call that sums its own wall time (synchronised on CUDA) and refuses calls beyond `cap`."""

    def __init__(self, fn, device, cap: int | None = None):
        self.fn, self.device, self.cap = fn, device, cap
        self.calls, self.seconds = 0, 0.0

    def __call__(self, x, t):
        if self.cap is not None and self.calls >= self.cap:
            raise TooManyEvaluations(f"more than {self.cap} evaluations")
        sync(self.device)
        start = time.perf_counter()
        out = self.fn(x, t)
        sync(self.device)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


def digits_unet(device="cpu", seed: int = 0):
    """The digits U-Net of reference_models (random weights from `seed`) in its eps-predicting wrapper."""
    from reference_models.train import build_denoiser, get_spec

    return build_denoiser(get_spec("digits"), "vp", "eps", seed=seed).to(device).eval()


def identity(x, t):
    return x


@dataclass
class Case:
    """One timing: `solver` (ours, or 'diffusers:<Scheduler>') on `network` ('identity' or 'unet') at `nfe`."""

    solver: str
    network: str
    nfe: int | None  # None: adaptive, at default tolerances
    label: str = ""
    generator: str = "one"  # stochastic solvers: 'one' generator for the batch, or 'per-sample'
    walls: list = field(default_factory=list)
    model_s: list = field(default_factory=list)
    nfe_used: int | None = None
    note: str = ""

    @property
    def name(self) -> str:
        return self.label or self.solver

    @property
    def wall(self) -> float:
        return statistics.median(self.walls) if self.walls else float("nan")

    @property
    def ratio(self) -> float:
        """Median over rounds of wall / time inside the model."""
        if not self.walls:
            return float("nan")
        return statistics.median(w / m for w, m in zip(self.walls, self.model_s))

    @property
    def overhead_us(self) -> float:
        """Median time outside the model per evaluation, in microseconds."""
        if not self.walls:
            return float("nan")
        return 1e6 * statistics.median((w - m) / self.nfe_used for w, m in zip(self.walls, self.model_s))


def cases(nfes=NFES, networks=("identity", "unet"), solvers=None) -> list[Case]:
    """Every registered solver at every valid budget of `nfes` (adaptive: once), plus the diffusers baselines."""
    out = []
    for network in networks:
        for name in list_solvers() if solvers is None else solvers:
            spec = get_solver(name)
            budgets = [None] if spec.adaptive else spec.budgets(nfes)
            out += [Case(name, network, n) for n in budgets]
            if network == "identity" and spec.stochastic():
                out += [Case(name, network, n, label=f"{name} (per-sample generators)", generator="per-sample")
                        for n in budgets]
        if network == "unet":
            out += [Case(f"diffusers:{cls}", network, n, label=f"diffusers {cls}") for cls in DIFFUSERS.values()
                    for n in nfes]
    return out


class Bench:
    """The networks and inputs shared by every case: x_T of shape (batch, 1, 8, 8), float32, on `device`."""

    def __init__(self, device="cpu", batch: int = BATCH, seed: int = 0):
        self.device, self.batch = torch.device(device), batch
        self.unet = digits_unet(self.device, seed)
        self.schedule = self.unet.schedule
        self.x_T = torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(seed)).to(self.device)

    def network(self, name: str):
        return identity if name == "identity" else self.unet

    def run(self, case: Case) -> None:
        """One round of `case`: appends its wall time and its time inside the model."""
        cap = ADAPTIVE_CAP if case.nfe is None and case.network == "unet" else None
        timed = Timed(self.network(case.network), self.device, cap)
        with torch.no_grad():
            sync(self.device)
            start = time.perf_counter()
            try:
                if case.solver.startswith("diffusers:"):
                    self._diffusers(case.solver.split(":", 1)[1], timed, case.nfe)
                else:
                    self._ours(case, timed)
            except TooManyEvaluations as e:
                case.note = f"skipped: {e}"
                return
            sync(self.device)
            wall = time.perf_counter() - start
        if case.nfe is not None and timed.calls != case.nfe:
            raise RuntimeError(f"{case.name} made {timed.calls} evaluations for a budget of {case.nfe}")
        case.walls.append(wall)
        case.model_s.append(timed.seconds)
        case.nfe_used = timed.calls

    def _ours(self, case: Case, timed: Timed) -> None:
        spec = get_solver(case.solver)
        gen = None
        if spec.stochastic():
            if case.generator == "per-sample":
                from solvers import per_sample_generators

                gen = per_sample_generators(range(self.batch), device=self.device)
            else:
                gen = torch.Generator(device=self.device).manual_seed(0)
        model = Model(timed, self.schedule, prediction="eps", check_outputs=True)
        sample(model, self.x_T, case.solver, nfe=case.nfe, generator=gen)

    def _diffusers(self, cls_name: str, timed: Timed, nfe: int) -> None:
        """The standard diffusers loop: set_timesteps, then model call and scheduler.step per timestep."""
        import diffusers

        kwargs = {"solver_order": 2} if cls_name == "DPMSolverMultistepScheduler" else {}
        scheduler = getattr(diffusers, cls_name)(num_train_timesteps=1000, **kwargs)
        scheduler.set_timesteps(nfe, device=self.device)
        x = self.x_T * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            tb = torch.full((x.shape[0],), (float(t) + 1.0) / 1000.0, device=self.device)  # continuous time of the net
            eps = timed(x, tb)
            x = scheduler.step(eps, t, x).prev_sample


def measure(bench: Bench, todo: list[Case], rounds: int = 3, warmup: bool = True, progress: bool = True) -> list[Case]:
    """Round-robin over the cases (so that a slow spell of a shared machine hits all of them alike)."""
    from tqdm import tqdm

    if warmup:
        for network in {c.network for c in todo}:
            bench.run(Case("ddim", network, 2))
    bar = tqdm(total=rounds * len(todo), desc="overhead", unit="run", disable=not progress)
    for r in range(rounds):
        for case in todo:
            bar.set_postfix_str(f"{case.network} {case.name} nfe={case.nfe}")
            if not case.note and (r == 0 or case.nfe is not None or case.network == "identity"):
                bench.run(case)  # adaptive solvers on the U-Net: one round (their NFE is not capped by a budget)
            bar.update()
    bar.close()
    return todo


def bar_for(case: Case) -> float | None:
    if case.solver.startswith("diffusers:"):
        return None
    spec = get_solver(case.solver)
    if case.solver == "rk45":
        return BARS["rk45"]
    return None if spec.adaptive else BARS["fixed"]


def markdown(df, floatfmt: str = ".4g", index: bool = True) -> str:
    """A pandas frame as a Markdown table (no tabulate dependency)."""
    if index:
        df = df.reset_index()
    cell = lambda v: format(v, floatfmt) if isinstance(v, float) else str(v)
    head = [str(c) for c in df.columns]
    body = [[cell(v) for v in row] for row in df.itertuples(index=False)]
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return "\n".join(out + ["| " + " | ".join(r) + " |" for r in body])


def format_tables(done: list[Case], device: str, batch: int, threads: int) -> str:
    """Markdown tables: identity overhead per evaluation; U-Net ratio with the bar; ours / diffusers."""
    import pandas as pd

    lines = [f"device {device}, batch {batch}, torch threads {threads}, float32, median of rounds"]
    ident = [c for c in done if c.network == "identity"]
    if ident:
        df = pd.DataFrame([{"solver": c.name if c.nfe is not None else f"{c.name} (NFE {c.nfe_used})",
                            "nfe": f"NFE {c.nfe}" if c.nfe is not None else "adaptive",
                            "us_per_eval": c.overhead_us} for c in ident])
        wide = df.pivot_table(index="solver", columns="nfe", values="us_per_eval", aggfunc="first", sort=False)
        wide = wide.astype(object).where(wide.notna(), "")
        lines += ["", "Identity model (eps = x): solver time per evaluation, microseconds", "",
                  markdown(wide, ".0f")]
    unet = [c for c in done if c.network == "unet"]
    if unet:
        rows = []
        for c in unet:
            b = bar_for(c)
            rows.append({"solver": c.name, "nfe": c.nfe if c.nfe is not None else f"adaptive ({c.nfe_used})",
                         "wall_s": c.wall, "ratio": c.ratio, "overhead_ms_per_eval": c.overhead_us / 1e3,
                         "bar": "" if b is None else f"<= {b}",
                         "ok": "" if b is None or c.ratio != c.ratio else ("yes" if c.ratio <= b else "NO"),
                         "note": c.note})
        lines += ["", "Digits U-Net: wall / (time inside the model), the issue's bar", "",
                  markdown(pd.DataFrame(rows), index=False)]
        comp = []
        for ours, theirs in DIFFUSERS.items():
            for n in {c.nfe for c in unet if c.nfe is not None}:
                a = next((c for c in unet if c.solver == ours and c.nfe == n and c.walls), None)
                b = next((c for c in unet if c.solver == f"diffusers:{theirs}" and c.nfe == n and c.walls), None)
                if a and b:
                    comp.append({"ours": ours, "diffusers": theirs, "nfe": n, "ours_s": a.wall, "theirs_s": b.wall,
                                 "ours / theirs": a.wall / b.wall,
                                 "at equal model time": a.ratio / b.ratio,  # robust to the model's speed drifting
                                 "overhead ours ms/eval": a.overhead_us / 1e3,
                                 "overhead theirs ms/eval": b.overhead_us / 1e3})
        if comp:
            lines += ["", ("Same U-Net, same NFE: our wall time / diffusers' wall time, and the same ratio with each "
                           "run's wall time divided by its own time inside the model"), "",
                      markdown(pd.DataFrame(comp).sort_values(["ours", "nfe"]), index=False)]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=BATCH)
    p.add_argument("--nfe", default=",".join(map(str, NFES)))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the machine is shared)")
    p.add_argument("--networks", default="identity,unet", help="identity, unet or both")
    p.add_argument("--solvers", default="all")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    nfes = [int(v) for v in args.nfe.split(",")]
    solvers = None if args.solvers == "all" else args.solvers.split(",")
    networks = tuple(args.networks.split(","))
    bad = set(networks) - {"identity", "unet"}
    if bad:
        p.error(f"unknown network(s) {', '.join(sorted(bad))}; valid: identity, unet")
    bench = Bench(args.device, args.batch)
    done = measure(bench, cases(nfes, networks, solvers), rounds=args.rounds)
    print(format_tables(done, args.device, args.batch, args.threads))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
