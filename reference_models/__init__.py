"""Reference models: exact Gaussian mixtures and models trained here."""
from .gmm import GaussianMixture

__all__ = ["GaussianMixture"]
