"""Reference models: exact Gaussian mixtures, models trained here, and pretrained diffusers checkpoints."""
from .cache import cache_dir
from .checkpoints import CheckpointError
from .gmm import GaussianMixture
from .registry import DEFAULT_MODELS, ReferenceModel, list_models, load, make_schedule

__all__ = ["DEFAULT_MODELS", "CheckpointError", "GaussianMixture", "ReferenceModel", "cache_dir", "from_diffusers",
           "list_models", "load", "make_schedule"]


def from_diffusers(path_or_repo_id, device="cpu", **kwargs):
    """A solvers.Model from a diffusers UNet checkpoint and its scheduler config (see diffusers_adapter)."""
    from .diffusers_adapter import from_diffusers as _from_diffusers

    return _from_diffusers(path_or_repo_id, device=device, **kwargs)
