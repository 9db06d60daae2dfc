"""Solver accuracy against results/baselines: the comparison of `python -m bench baseline`, as tests.

Each (model, schedule) is measured afresh (every registered solver, every valid NFE in 5..100) and
compared by `bench.baseline_compare.compare`: an error above baseline * 1.01 + 1e-12, a stochastic bias
whose size rises by more than 3 standard errors (or moves by more than 1e-3 of one without falling by 3: on the
same x_T and Brownian paths the output changed), or a measured order below its band fails. After an
intended change, rewrite the baselines with `python -m bench baseline --update` and commit them.
"""
import itertools

import pytest

from bench.baseline_compare import compare, failures, format_comparison, order_band
from bench.baseline_measure import MODELS, SCHEDULES, baselined, measure, order_rows, single_thread
from bench.baseline_store import BASELINE_DIR, NoBaselines, read_baselines, table
from solvers import get_solver, list_solvers

pytestmark = pytest.mark.regression


@pytest.fixture(scope="module")
def stored():
    try:
        return read_baselines()
    except NoBaselines as e:
        pytest.fail(str(e))


def check(stored, current):
    __tracebackhide__ = True
    comparison = compare(stored, current)
    assert len(comparison) >= len(current)
    if not failures(comparison).empty:
        pytest.fail(f"solver accuracy moved against {BASELINE_DIR} (if intended: `python -m bench baseline "
                    "--update`)\n" + format_comparison(comparison), pytrace=False)


@pytest.mark.parametrize("model,schedule", list(itertools.product(MODELS, SCHEDULES)))
def test_accuracy_matches_baseline(stored, model, schedule):
    current = measure([model], [schedule], orders=False, progress=False)
    assert set(current["solver"]) == {n for n in list_solvers() if baselined(n, schedule)}
    check(stored, current)


def test_measured_orders_stay_in_their_bands(stored):
    with single_thread():
        current = table(order_rows())
    for name, order, how in zip(current["solver"], current["value"], current["reference"]):
        lo = order_band(name)[0]
        assert order >= lo, f"{name}: declared order {get_solver(name).order}, measured {order:.3f} < {lo} ({how})"
    check(stored, current)


def test_baseline_covers_every_registered_solver(stored):
    for model, schedule in itertools.product(MODELS, SCHEDULES):
        rows = stored[(stored["model"] == model) & (stored["schedule"] == schedule)]
        missing = {n for n in list_solvers() if baselined(n, schedule)} - set(rows["solver"])
        assert not missing, f"{model}/{schedule}: no baseline for {sorted(missing)}; run `python -m bench baseline --update`"
