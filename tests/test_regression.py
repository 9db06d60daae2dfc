"""Solver accuracy against results/baselines: the comparison of `python -m bench baseline`, as tests.

Each (model, schedule) is measured afresh (every registered solver, every valid NFE in 5..100) and
compared by `bench.baseline.compare`: an error above baseline * 1.01 + 1e-12, a stochastic bias whose
size rises by more than 3 standard errors, or a measured order below its band fails. After an
intended change, rewrite the baselines with `python -m bench baseline --update` and commit them.
"""
import itertools

import pytest

from bench import baseline as B
from solvers import get_solver, list_solvers

pytestmark = pytest.mark.regression


@pytest.fixture(scope="module")
def stored():
    table = B.read_baselines()
    if table.empty:
        pytest.fail(f"no baselines in {B.BASELINE_DIR}: run `python -m bench baseline --update`")
    return table


def check(stored, current):
    __tracebackhide__ = True
    comparison = B.compare(stored, current)
    assert len(comparison) >= len(current)
    if not B.failures(comparison).empty:
        pytest.fail("solver accuracy moved against results/baselines (if intended: `python -m bench baseline "
                    "--update`)\n" + B.format_comparison(comparison), pytrace=False)


@pytest.mark.parametrize("model,schedule", list(itertools.product(B.MODELS, B.SCHEDULES)))
def test_accuracy_matches_baseline(stored, model, schedule):
    current = B.measure([model], [schedule], orders=False, progress=False)
    assert set(current["solver"]) == set(list_solvers())
    check(stored, current)


def test_measured_orders_stay_in_their_bands(stored):
    with B.single_thread():
        current = B.table(B.order_rows())
    for name, order in zip(current["solver"], current["value"]):
        lo, hi = B.order_band(name)
        assert order >= lo, f"{name}: declared order {get_solver(name).order}, measured {order:.3f} < {lo}"
    check(stored, current)


def test_baseline_covers_every_registered_solver(stored):
    for model, schedule in itertools.product(B.MODELS, B.SCHEDULES):
        rows = stored[(stored["model"] == model) & (stored["schedule"] == schedule)]
        missing = set(list_solvers()) - set(rows["solver"])
        assert not missing, f"{model}/{schedule}: no baseline for {sorted(missing)}; run `python -m bench baseline --update`"
