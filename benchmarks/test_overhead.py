"""Solver overhead under pytest-benchmark: `pytest benchmarks --benchmark-only` (not part of the plain `pytest` run).

Every registered solver at NFE 10 and 50 (adaptive ones at default tolerances) with the identity model and
with the digits U-Net at batch 256, plus diffusers' DDIM and DPM-Solver++(2M) on the same U-Net. These are
measurements: the only assertion is the exact NFE. The ratio tables are printed at the end (see conftest).
"""
import pytest
import torch

import overhead

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
