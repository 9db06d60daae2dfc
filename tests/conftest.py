"""Test-session settings: the tests never write into the user's model cache."""
import os

import pytest

from reference_models.cache import ENV_VAR


@pytest.fixture(scope="session", autouse=True)
def private_model_cache(tmp_path_factory):
    """Point $SAMPLERBENCH_CACHE at a temporary directory for the whole session, whatever it was; restore it after."""
    before = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = str(tmp_path_factory.mktemp("samplerbench-cache"))
    yield os.environ[ENV_VAR]
    if before is None:
        os.environ.pop(ENV_VAR, None)
    else:
        os.environ[ENV_VAR] = before


@pytest.fixture(autouse=True)
def restore_solver_registry():
    """Solvers and plugins a test registers or loads are gone after it: every test sees the built-in registry."""
    import sys

    from bench import plugins
    from solvers import registry

    solvers_before, loaded_before = dict(registry._REGISTRY), dict(plugins._loaded)
    yield
    for key, module in list(plugins._loaded.items()):
        if key not in loaded_before:  # imported again (and so registered again) by the next test that loads it
            sys.modules.pop(module, None)
    registry._REGISTRY.clear()
    registry._REGISTRY.update(solvers_before)
    plugins._loaded.clear()
    plugins._loaded.update(loaded_before)


@pytest.fixture
def diffusers_chain():
    """gmm2d on score_sde's VP, and a diffusers scheduler run on the wrapped DDPM chain (bench.contenders: timestep n
    <-> t = (n + 1) / N, alphas_cumprod[n] = alpha(t_n)^2, linspace timesteps): (model, x_T, run), where
    run(scheduler class, nfe, **config) -> (x, times) samples with it from t = 1 to 1e-3.

    diffusers' last step goes to alphas_cumprod[0] = 1 - beta_0 in float32 (final_sigmas_type="sigma_min", and
    always for DEIS): lambda 1.2e-4 below ours at t_end = 1e-3. The times returned end there, so that ours, run on
    them, compares updates. The plugin is loaded in the test, so that its contenders leave the registry after it."""
    import math
    import sys

    import torch

    from bench import plugins
    from reference_models import load
    from solvers import make_grid

    pytest.importorskip("diffusers")
    contenders = sys.modules[plugins.load("diffusers")]
    model = load("gmm2d", "vp").model
    sched = model.schedule
    x_T = torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ac0 = float(1.0 - torch.tensor(float(contenders._chain(sched, 1.0, 1e-3)[0]), dtype=torch.float32))
    t_last = float(sched.t_of_lambda(torch.tensor(0.5 * math.log(ac0 / (1.0 - ac0)), dtype=torch.float64)))

    def run(cls_name: str, nfe: int, **config):
        spec = contenders.Scheduler(cls_name, cls_name, 2, "", config)
        x, times = contenders._run(spec, model, x_T, make_grid(sched, "uniform", nfe, 1.0, 1e-3), nfe)
        assert float(times[-1]) == 1e-3 and len(times) == nfe + 1
        times[-1] = t_last
        return x, times

    return model, x_T, run
