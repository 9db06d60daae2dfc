"""Safe checkpoints: safetensors weights + a JSON config, written atomically, verified on load.

Nothing here unpickles: weights are read with safetensors only, so a pickle placed where a
checkpoint should be is reported as corrupt without running any of its code. The config is
stored twice: in the safetensors header (the source of truth, written in the same atomic
replace as the weights) and as a readable JSON file beside it; they must agree on load.
"""
from __future__ import annotations

import json
import os
import pathlib
import tempfile

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load_bytes
from safetensors.torch import save as st_save_bytes

CONFIG_KEY = "samplerbench_config"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt, or does not match the requested model."""


def config_path(weights_path) -> pathlib.Path:
    return pathlib.Path(weights_path).with_suffix(".json")


def atomic_write(path, write) -> None:
    """Call write(tmp_path) on a temporary file beside `path`, fsync it and rename it over `path`.

    Readers see the old file or the new one, never a partial write; the directory is created.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    """Write `data` to `path` atomically (see atomic_write)."""
    atomic_write(path, lambda p: pathlib.Path(p).write_bytes(data))


def save_checkpoint(path, state_dict: dict[str, torch.Tensor], config: dict) -> pathlib.Path:
    """Write weights (with `config` in their header) and then the JSON config, each atomically."""
    path = pathlib.Path(path)
    text = json.dumps(config, sort_keys=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    # The JSON copy goes first: if we are interrupted between the two replaces, the old weights'
    # header disagrees with the new JSON and loading reports it instead of mixing the two.
    atomic_write_bytes(config_path(path), (json.dumps(config, sort_keys=True, indent=2) + "\n").encode())
    atomic_write_bytes(path, st_save_bytes(tensors, metadata={CONFIG_KEY: text}))
    return path


def load_checkpoint(path, expected: dict | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Read and verify a checkpoint; returns (state_dict, config) or raises CheckpointError.

    `expected`: config entries that must match exactly (name, schedule, prediction, architecture...).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    raw = path.read_bytes()
    try:
        state = st_load_bytes(raw)
        header = _header_metadata(raw)
    except (SafetensorError, ValueError, KeyError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt (not a valid safetensors file): {exc}") from None
    if CONFIG_KEY not in header:
        raise CheckpointError(f"checkpoint {path} has no samplerbench config in its header")
    config = json.loads(header[CONFIG_KEY])
    cpath = config_path(path)
    try:
        side = json.loads(cpath.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} has no config file {cpath}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"config {cpath} is corrupt: {exc}") from None
    if side != config:
        raise CheckpointError(f"config {cpath} does not match the config stored in {path} (an interrupted write?); "
                              "retrain the model")
    for key, want in (expected or {}).items():
        got = config.get(key)
        if got != want:
            raise CheckpointError(f"checkpoint {path} was made for {key}={got!r}, but {key}={want!r} was requested; "
                                  "retrain it or use the matching options")
    return state, config


def _header_metadata(raw: bytes) -> dict:
    """The `__metadata__` of a safetensors file (8-byte little-endian header length, then JSON)."""
    if len(raw) < 8:
        raise ValueError("file shorter than a safetensors header")
    n = int.from_bytes(raw[:8], "little")
    if n <= 0 or 8 + n > len(raw):
        raise ValueError("header length out of range")
    return json.loads(raw[8:8 + n].decode("utf-8")).get("__metadata__", {}) or {}


def load_state_into(module: torch.nn.Module, state: dict[str, torch.Tensor], path) -> None:
    """Load `state` into `module` only if every key and shape matches (never half-loaded)."""
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    bad = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or bad:
        raise CheckpointError(f"checkpoint {path} does not fit the network: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}, wrong shapes {bad[:5]}")
    module.load_state_dict(state, strict=True)
