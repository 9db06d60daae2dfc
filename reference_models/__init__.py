"""Reference models: exact Gaussian mixtures and models trained here."""
from .gmm import GaussianMixture
from .registry import ReferenceModel, list_models, load, make_schedule

__all__ = ["GaussianMixture", "ReferenceModel", "list_models", "load", "make_schedule"]
