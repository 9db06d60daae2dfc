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
