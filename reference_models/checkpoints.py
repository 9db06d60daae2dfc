"""Safe checkpoints: one safetensors file holding the weights and their JSON config, written atomically.

Nothing here unpickles: weights are read with safetensors only, so a pickle placed where a
checkpoint should be is reported as corrupt without running any of its code. The config lives in
the safetensors header, so weights and config are replaced together by one rename and can never
mismatch. (Older versions also wrote a JSON copy beside the weights; it is ignored on load and
removed when the checkpoint is rewritten.) `file_lock` serialises writers of one checkpoint.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import pathlib
import tempfile

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load_bytes
from safetensors.torch import save as st_save_bytes

try:
    import fcntl
except ImportError:  # not POSIX: no inter-process lock
    fcntl = None

CONFIG_KEY = "samplerbench_config"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt, unwritable, or does not match the requested model."""


def legacy_config_path(weights_path) -> pathlib.Path:
    """The JSON copy of the config that older versions wrote beside the weights (no longer read)."""
    return pathlib.Path(weights_path).with_suffix(".json")


def lock_path(path) -> pathlib.Path:
    path = pathlib.Path(path)
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def file_lock(path):
    """Hold an exclusive lock (fcntl.flock on `<path>.lock`) while writing `path`; other holders wait.

    Not re-entrant: a process must not take the lock of the same path twice.
    """
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (/proc), else by setting it back at once."""
    try:
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path, write) -> None:
    """Call write(tmp_path) on a temporary file beside `path`, fsync it and rename it over `path`.

    Readers see the old file or the new one, never a partial write; the directory is created. The
    file gets the mode a plain open() would give it (0666 minus the umask), not mkstemp's 0600.
    On any error (a full disk included) the temporary file is removed and `path` is left as it was.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
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
    """Write the weights with `config` (JSON) in their header as one atomic replace of `path`.

    A write that fails (e.g. a full disk) raises CheckpointError naming the path and leaves the old file.
    """
    path = pathlib.Path(path)
    text = json.dumps(config, sort_keys=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    try:
        atomic_write_bytes(path, st_save_bytes(tensors, metadata={CONFIG_KEY: text}))
    except OSError as exc:
        reason = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise CheckpointError(f"cannot write checkpoint {path}: {reason}; the previous file, if any, is unchanged") \
            from None
    if legacy_config_path(path) != path:
        legacy_config_path(path).unlink(missing_ok=True)  # an older version's JSON copy would now be stale
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
    except (SafetensorError, ValueError, KeyError, TypeError, RecursionError,
            UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt (not a valid safetensors file): "
                              f"{_one_line(exc)}") from None
    if CONFIG_KEY not in header:
        raise CheckpointError(f"checkpoint {path} has no samplerbench config in its header")
    config = _parse_config(header[CONFIG_KEY], path)
    for key, want in (expected or {}).items():
        got = config.get(key)
        if got != want:
            raise CheckpointError(f"checkpoint {path} was made for {key}={got!r}, but {key}={want!r} was requested; "
                                  "retrain it or use the matching options")
    return state, config


MAX_CONFIG_DEPTH = 32


def _parse_config(text, path) -> dict:
    """The header's config: a JSON object of at most MAX_CONFIG_DEPTH levels, else CheckpointError."""
    try:
        if not isinstance(text, str):
            raise TypeError(f"config is a {type(text).__name__}, not a JSON string")
        config = json.loads(text)
        if not isinstance(config, dict):
            raise TypeError(f"config is a JSON {type(config).__name__}, not an object")
        if _depth(config) > MAX_CONFIG_DEPTH:
            raise ValueError(f"config is nested deeper than {MAX_CONFIG_DEPTH} levels")
    except (ValueError, TypeError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"checkpoint {path} has an invalid config in its header: {_one_line(exc)}") from None
    return config


def _depth(value, level: int = 1) -> int:
    if level > MAX_CONFIG_DEPTH:
        return level
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return max((_depth(c, level + 1) for c in children), default=level)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _header_metadata(raw: bytes) -> dict:
    """The `__metadata__` of a safetensors file (8-byte little-endian header length, then JSON)."""
    if len(raw) < 8:
        raise ValueError("file shorter than a safetensors header")
    n = int.from_bytes(raw[:8], "little")
    if n <= 0 or 8 + n > len(raw):
        raise ValueError("header length out of range")
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    if not isinstance(header, dict):
        raise TypeError("header is not a JSON object")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise TypeError("header metadata is not a JSON object")
    return meta


def load_state_into(module: torch.nn.Module, state: dict[str, torch.Tensor], path) -> None:
    """Load `state` into `module` only if every key and shape matches (never half-loaded)."""
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    bad = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or bad:
        raise CheckpointError(f"checkpoint {path} does not fit the network: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}, wrong shapes {bad[:5]}")
    module.load_state_dict(state, strict=True)
