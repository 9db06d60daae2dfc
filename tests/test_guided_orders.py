"""Orders under classifier-free guidance at w = 4 on the exact class-conditional gmm2d: every solver's measured order
(gmm2d and gmm-digits) against the band of its declaration (solvers.testing.check_order: DOP853 reference of the guided PF-ODE)."""
import pytest
import torch

from reference_models import load
from solvers import testing

SOLVERS = ["ddim", "heun", "dpm_solver_2m", "dpm_solver_3", "dpmpp_2m", "dpmpp_3m", "unipc"]
NFES = [20, 40, 80, 160, 320]


@pytest.fixture(scope="module", params=["gmm2d", "gmm-digits"])
def guided(request):
    ref = load(request.param, "vp").guided(4.0, "cfg")
    x_T = ref.schedule.prior_sample((64, *ref.shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref.model.labels = torch.arange(64) % ref.classes
    return ref.model, x_T


@pytest.mark.parametrize("solver", SOLVERS)
def test_orders_at_w4_are_in_the_declared_bands(guided, solver):
    model, x_T = guided
    budgets = [n for n in NFES if n % 2 == 0] if solver == "heun" else NFES
    outcome = testing.check_order(solver, model, x_T, budgets)
    assert outcome.status == "pass", outcome.detail
