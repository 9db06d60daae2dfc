"""Inception-v3 weights for FID/KID on 3-channel images (any size), loaded without running pickled code.

torch-fidelity's own Inception loader unpickles its weights file (`torch.load(weights_only=False)`),
whether it is given a path or reads torch hub's cache, and checks no hash: a file placed there runs
code. Here the file -- given explicitly, through $SAMPLERBENCH_INCEPTION_WEIGHTS, or torch-fidelity's
file in torch hub's cache, downloaded there on first use as torch-fidelity would (with torch hub's
hash-prefix check) -- is read with `torch.load(weights_only=True)` (a `.safetensors` copy with
safetensors), and torch-fidelity's network receives the tensors only. A file that is not a plain
state dict of tensors is refused with InceptionWeightsError before anything in it runs.
"""
from __future__ import annotations

import io
import os
import pathlib
import pickle

import torch

WEIGHTS_ENV = "SAMPLERBENCH_INCEPTION_WEIGHTS"
EXTRACTOR_NAME = "samplerbench-inception-v3"


class InceptionWeightsError(RuntimeError):
    """The Inception-v3 weights are missing, not a plain tensor state dict, or do not fit the network."""


def url() -> str:
    """Where torch-fidelity downloads its Inception-v3 weights from."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return URL_INCEPTION_V3


def hub_weights_path() -> pathlib.Path:
    """Where torch-fidelity's download lands: <torch hub dir>/checkpoints/<file name of its URL>."""
    return pathlib.Path(torch.hub.get_dir()) / "checkpoints" / url().rsplit("/", 1)[-1]


def weights_path(explicit=None, download: bool = True) -> pathlib.Path:
    """The weights file: `explicit`, else $SAMPLERBENCH_INCEPTION_WEIGHTS, else torch hub's cached file.

    The cached file is downloaded first if missing and `download` (torch hub checks its hash prefix);
    FileNotFoundError if there is no file.
    """
    given = explicit or os.environ.get(WEIGHTS_ENV) or None
    if given is not None:
        path = pathlib.Path(given).expanduser()
        if not path.is_file():
            source = "given" if explicit else f"from ${WEIGHTS_ENV}"
            raise FileNotFoundError(f"no Inception-v3 weights file at {path} ({source})")
        return path
    path = hub_weights_path()
    if not path.is_file():
        if not download:
            raise FileNotFoundError(f"no Inception-v3 weights at {path}; set ${WEIGHTS_ENV} or allow the download")
        from torch.hub import HASH_REGEX, download_url_to_file

        path.parent.mkdir(parents=True, exist_ok=True)
        match = HASH_REGEX.search(path.name)
        download_url_to_file(url(), str(path), match.group(1) if match else None, progress=False)
    return path


def load_state_dict(path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file, read without unpickling code; InceptionWeightsError for anything else."""
    path = pathlib.Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, AttributeError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise InceptionWeightsError(f"refusing Inception-v3 weights {path}: not a plain tensor state dict that "
                                    f"loads without unpickling code ({type(exc).__name__}: {reason})") from None
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise InceptionWeightsError(f"refusing Inception-v3 weights {path}: not a state dict of named tensors")
    return state


def register_with_torch_fidelity() -> str:
    """Register torch-fidelity's Inception-v3 with the safe loader as `EXTRACTOR_NAME` (once); returns the name.

    It takes the same features and arguments as torch-fidelity's "inception-v3-compat".
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from torch_fidelity.registry import (
        FEATURE_EXTRACTORS_REGISTRY,
        register_feature_extractor,
    )

    if EXTRACTOR_NAME in FEATURE_EXTRACTORS_REGISTRY:
        return EXTRACTOR_NAME

    class SafeInceptionV3(FeatureExtractorInceptionV3):
        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            path = weights_path(feature_extractor_weights_path)
            state = load_state_dict(path)
            # torch-fidelity unpickles whatever it is given: give it these tensors, re-serialised here
            buf = io.BytesIO()
            torch.save(state, buf)
            buf.seek(0)
            try:
                super().__init__(name, features_list, feature_extractor_weights_path=buf, **kwargs)
            except RuntimeError as exc:  # load_state_dict: missing / unexpected keys or wrong shapes
                first = str(exc).strip().splitlines()[0][:160]
                raise InceptionWeightsError(f"{path} does not hold torch-fidelity's Inception-v3 weights: "
                                            f"{first}") from None

    register_feature_extractor(EXTRACTOR_NAME, SafeInceptionV3)
    return EXTRACTOR_NAME
