"""Reference models: exact Gaussian mixtures, models trained here, pretrained diffusers checkpoints and a user's own."""
from .cache import cache_dir
from .checkpoints import CheckpointError
from .gmm import GaussianMixture
from .registry import DEFAULT_MODELS, ReferenceModel, list_models, load, make_schedule
from .user import ModelSpecError, parse_spec, resolve, user_model

__all__ = ["DEFAULT_MODELS", "CheckpointError", "GaussianMixture", "ModelSpecError", "ReferenceModel", "cache_dir",
           "diffusers_record", "from_diffusers", "list_models", "load", "make_schedule", "parse_spec", "resolve",
           "user_model"]


def from_diffusers(path_or_repo_id, device="cpu", **kwargs):
    """A solvers.Model from a diffusers UNet checkpoint and its scheduler config (see diffusers_adapter)."""
    from .diffusers_adapter import from_diffusers as _from_diffusers

    return _from_diffusers(path_or_repo_id, device=device, **kwargs)


def diffusers_record(path_or_repo_id, device="cpu", **kwargs):
    """The ReferenceModel of a diffusers UNet checkpoint and its scheduler config (see diffusers_adapter)."""
    from .diffusers_adapter import diffusers_record as _diffusers_record

    return _diffusers_record(path_or_repo_id, device=device, **kwargs)
