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
