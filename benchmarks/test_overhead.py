"""Solver overhead under pytest-benchmark: `pytest benchmarks --benchmark-only` (not part of the plain `pytest` run).

Every registered solver at NFE 10 and 50 (adaptive ones at default tolerances) with the identity model and
with the digits U-Net at batch 256, plus diffusers' DDIM and DPM-Solver++(2M) on the same U-Net. These are
measurements: the only assertion is the exact NFE. The ratio tables are printed at the end (see conftest).
"""
import pytest
import torch

import noise_cost
import overhead
import solver_cost

IDENTITY_ROUNDS, UNET_ROUNDS = 5, 1


@pytest.fixture(scope="session")
def bench(request):
    torch.set_num_threads(request.config.getoption("--overhead-threads"))
    b = overhead.Bench(request.config.getoption("--overhead-device"), request.config.getoption("--overhead-batch"))
    for network in ("identity", "unet"):
        b.run(overhead.Case("ddim", network, 2))  # warm up kernels and allocator
    return b


def case_id(case):
    return f"{case.network}-{case.name.replace(' ', '_')}-{'adaptive' if case.nfe is None else case.nfe}"


@pytest.mark.parametrize("case", overhead.cases(), ids=case_id)
def test_overhead(benchmark, bench, case):
    rounds = UNET_ROUNDS if case.network == "unet" else IDENTITY_ROUNDS
    benchmark.pedantic(bench.run, args=(case,), rounds=rounds, iterations=1)
    overhead.DONE.append(case)
    if case.note:
        pytest.skip(case.note)
    benchmark.extra_info.update(nfe_used=case.nfe_used, ratio_wall_to_model=case.ratio,
                                overhead_us_per_eval=case.overhead_us)
    assert case.nfe is None or case.nfe_used == case.nfe


@pytest.mark.parametrize("pair", solver_cost.PAIRS, ids=lambda p: p[0])
def test_solver_cost_against_diffusers(benchmark, pair):
    """Ours against diffusers for the same algorithm, rounds alternated (benchmarks/solver_cost.py); the budget is
    checked exactly inside `measure`."""
    torch.set_num_threads(1)
    rows = benchmark.pedantic(solver_cost.measure, kwargs={"nfes": (10, 50), "rounds": 10, "pairs": [pair]},
                              rounds=1, iterations=1)
    benchmark.extra_info.update({f"nfe{r['nfe']}_ratio": r["ratio"] for r in rows})
    assert [r["nfe"] for r in rows] == [10, 50]


@pytest.mark.parametrize("pair", noise_cost.pairs(), ids=lambda p: p[0])
def test_noise_cost_against_the_deterministic_counterpart(benchmark, pair):
    """A stochastic sampler's cost per evaluation over its deterministic counterpart's, per noise source
    (benchmarks/noise_cost.py); a measurement: the budget is checked exactly inside `run`."""
    torch.set_num_threads(1)
    noise_cost.PAIRS, saved = (pair,), noise_cost.PAIRS
    try:
        rows = benchmark.pedantic(noise_cost.measure, kwargs={"nfes": (10, 50), "rounds": 5}, rounds=1, iterations=1)
    finally:
        noise_cost.PAIRS = saved
    benchmark.extra_info.update({f"nfe{r['nfe']}_{r['source']}_ratio": r["ratio"] for r in rows})
    assert {r["source"] for r in rows} == set(noise_cost.SOURCES)
