"""Where trained models, the digit classifier and cached reference statistics live (never the repo)."""
from __future__ import annotations

import os
import pathlib

ENV_VAR = "SAMPLERBENCH_CACHE"


def cache_dir(override=None) -> pathlib.Path:
    """The model cache: `override`, else $SAMPLERBENCH_CACHE, else the user's cache dir (~/.cache/samplerbench).

    The directory is not created here; writers create it when they first write.
    """
    if override is not None and str(override) != "":
        return pathlib.Path(override).expanduser()
    env = os.environ.get(ENV_VAR, "")
    if env:
        return pathlib.Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = pathlib.Path(xdg).expanduser() if xdg else pathlib.Path.home() / ".cache"
    return base / "samplerbench"


def model_stem(name: str, schedule: str, prediction: str) -> str:
    """File stem of one trained model in the cache: `<name>-<schedule>-<prediction>`."""
    return f"{name}-{schedule}-{prediction}"


def checkpoint_path(name: str, schedule: str, prediction: str, override=None) -> pathlib.Path:
    """Weights file (safetensors) of a trained model; its JSON config sits beside it."""
    return cache_dir(override) / "models" / f"{model_stem(name, schedule, prediction)}.safetensors"
