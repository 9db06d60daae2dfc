"""Real data a user brings with `--data PATH`: image folders, tensor files and precomputed FID statistics.

`read_data(path, shape)` reads, checks and maps the data once; nothing here unpickles (np.load with
allow_pickle=False, torch.load with weights_only=True). Every problem is one `DataError` line that
names the forms or choices that are valid.

Images (a sample shape of 2 or more axes) are mapped to [-1, 1] in float32 from their range, detected or
declared; low-dimensional data (a 1-D sample shape) is used as is, in float64.

`RealData.sha256` is the SHA-256 of the decoded array, before range mapping: its dtype, its (N, *shape)
layout (after an NHWC file is turned to NCHW), its range and its C-order bytes. The same pixels read from a
PNG folder or from a uint8 .npz therefore have the same hash; it keys cached statistics. For FID statistics
it is the hash of mu and sigma (float64 bytes).
"""
from __future__ import annotations

import hashlib
import numbers
import pathlib
import pickle
import zipfile
from dataclasses import dataclass

import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TENSOR_SUFFIXES = (".npz", ".npy", ".pt", ".pth")
ARRAY_KEYS = ("x", "data", "images", "samples", "arr_0")
RANGES = {"0,255": (0.0, 255.0), "0,1": (0.0, 1.0), "-1,1": (-1.0, 1.0)}
RANGE_CHOICES = ("auto", *RANGES)
RANGE_TOL = 1e-3  # values may leave a range by this fraction of its width (rounding); they are clipped after mapping
AS_IS = "as-is"
FORMS = ("a folder of PNG/JPEG images, a .npz/.npy or .pt/.pth file holding one array (or one under "
         f"{'/'.join(ARRAY_KEYS)}), or a .npz of FID statistics (mu, sigma)")


class DataError(ValueError):
    """The --data path is missing, unreadable, of an unsupported form, or does not fit the model."""


@dataclass(frozen=True)
class FidStats:
    """Precomputed FID statistics of real data: feature mean (F,) and covariance (F, F), float64."""

    mu: np.ndarray
    sigma: np.ndarray

    @property
    def dim(self) -> int:
        return len(self.mu)


@dataclass(frozen=True, eq=False)
class RealData:
    """Real data read by `read_data`. `count` is 0 for statistics only (`fid_stats` set, no samples)."""

    source: str
    shape: tuple[int, ...]
    range: str  # "0,255", "0,1", "-1,1" (images), "as-is" (low-dimensional), "" (statistics)
    sha256: str
    raw: torch.Tensor | None = None  # decoded (N, *shape), before range mapping
    fid_stats: FidStats | None = None

    @property
    def count(self) -> int:
        return 0 if self.raw is None else len(self.raw)

    def summary(self) -> dict:
        """What a run records of these data: source, content hash, range and count."""
        return {"source": str(self.source), "sha256": self.sha256, "range": self.range, "count": self.count}

    @property
    def noun(self) -> str:
        return "images" if len(self.shape) > 1 else "samples"

    def _mapped(self, x: torch.Tensor) -> torch.Tensor:
        if self.range == AS_IS:
            return x.to(torch.float64)
        lo, hi = RANGES[self.range]
        return ((x.to(torch.float64) - lo) / ((hi - lo) / 2.0) - 1.0).clamp(-1.0, 1.0).to(torch.float32)

    def all(self) -> torch.Tensor:
        """Every item, mapped: images in [-1, 1] (float32), low-dimensional data as is (float64)."""
        if self.raw is None:
            raise DataError(f"{self.source} holds FID statistics (mu, sigma), which have no samples")
        return self._mapped(self.raw)

    def draw(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n distinct items (n, *shape): the first n of a permutation drawn from `generator`."""
        if self.raw is None:
            raise DataError(f"{self.source} holds FID statistics (mu, sigma), which have no samples to draw")
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise DataError(f"the number of items to draw must be a positive integer, got {n!r}")
        if n > self.count:
            raise DataError(f"{self.source} has {self.count} {self.noun}; a cell needs {n} (--samples)")
        idx = torch.randperm(self.count, generator=generator)[:int(n)]
        return self._mapped(self.raw[idx])


def one_line(exc: BaseException, limit: int = 160) -> str:
    """An exception's message on one line (whitespace collapsed), at most `limit` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _check_shape(shape) -> tuple[int, ...]:
    try:
        out = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        out = ()
    if not out or any(s < 1 for s in out):
        raise DataError(f"the model's sample shape must be a tuple of positive integers, got {shape!r}")
    return out


def read_data(path, shape, data_range: str = "auto") -> RealData:
    """Read real data for samples of `shape` from `path` (see the module's docstring for the forms)."""
    shape = _check_shape(shape)
    if data_range not in RANGE_CHOICES:
        raise DataError(f"unknown data range {data_range!r}; valid: {', '.join(RANGE_CHOICES)}")
    if len(shape) == 1 and data_range != "auto":
        raise DataError(f"a data range applies to images; low-dimensional data (samples {shape}) are used as is: "
                        "pass auto")
    path = pathlib.Path(path).expanduser()
    if path.is_dir():
        return _finish(path, _read_folder(path, shape), shape, data_range, integer_source=True)
    if not path.is_file():
        raise DataError(f"no data at {path}; --data takes {FORMS}")
    suffix = path.suffix.lower()
    if suffix in (".npz", ".npy"):
        found = _read_numpy(path)
    elif suffix in (".pt", ".pth"):
        found = _read_torch(path)
    else:
        raise DataError(f"unsupported data file {path} (suffix {path.suffix or 'none'}); --data takes {FORMS}")
    if isinstance(found, FidStats):
        return _stats_data(path, shape, found)
    return _finish(path, _layout(path, found, shape), shape, data_range)


def _read_folder(path: pathlib.Path, shape) -> torch.Tensor:
    from PIL import Image

    if len(shape) != 3 or shape[0] not in (1, 3):
        raise DataError(f"a folder of images needs samples shaped (C, H, W) with 1 or 3 channels; the model's "
                        f"samples are {shape}")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"no images in {path}; a data folder holds {'/'.join(s[1:].upper() for s in IMAGE_SUFFIXES)} "
                        "files (other files are ignored)")
    mode = "L" if shape[0] == 1 else "RGB"
    arrays = []
    for f in files:
        try:
            with Image.open(f) as img:
                img.load()
                arr = np.asarray(img.convert(mode), dtype=np.uint8)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(f"cannot read image {f}: {one_line(exc)}") from None
        if arr.shape[:2] != shape[1:]:
            raise DataError(f"{f} is {arr.shape[1]}x{arr.shape[0]} pixels but the model's samples are "
                            f"{shape[2]}x{shape[1]} ({shape}); resize the images first (nothing is resized here)")
        arrays.append(arr.reshape(shape[1], shape[2], -1))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _pick(path, arrays: dict):
    """One array of a mapping (npz members or a saved dict), or FidStats when it holds mu and sigma."""
    keys = list(arrays)
    if "mu" in arrays or "sigma" in arrays:
        if not ("mu" in arrays and "sigma" in arrays):
            raise DataError(f"{path} has {', '.join(keys)}: FID statistics need both mu and sigma")
        return _stats(path, arrays["mu"], arrays["sigma"])
    if len(keys) == 1:
        return arrays[keys[0]]
    for k in ARRAY_KEYS:
        if k in arrays:
            return arrays[k]
    raise DataError(f"{path} holds {', '.join(map(str, keys)) or 'nothing'}; expected one array, or one under "
                    f"{', '.join(ARRAY_KEYS)}, or FID statistics (mu, sigma)")


def _read_numpy(path) -> np.ndarray | FidStats:
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return loaded
        with loaded:
            return _pick(path, {k: loaded[k] for k in loaded.files})
    except DataError:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "pickle" in str(exc).lower():
            raise DataError(f"refusing {path}: it holds pickled objects, which are never loaded; save plain "
                            f"numeric arrays; --data takes {FORMS}") from None
        raise DataError(f"cannot read {path}: {one_line(exc)}; --data takes {FORMS}") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise DataError(f"cannot read {path} (corrupt or not a numpy file: {one_line(exc)}); --data takes "
                        f"{FORMS}") from None


def _read_torch(path) -> torch.Tensor | FidStats:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if "Unsupported" in ln]
        reason = (lines[0].removeprefix("WeightsUnpickler error: ") if lines else one_line(exc))[:90]
        if reason.startswith("Unsupported global"):
            raise DataError(f"refusing {path}: it holds pickled objects ({reason}), which are never loaded; "
                            f"save plain tensors; --data takes {FORMS}") from None
        raise DataError(f"cannot read {path}: not plain tensors (corrupt, or a pickle that weights_only loading "
                        f"refuses: {reason}); --data takes {FORMS}") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read {path} (corrupt or not a torch file: {one_line(exc)}); --data takes "
                        f"{FORMS}") from None
    if isinstance(loaded, dict):
        loaded = _pick(path, loaded)
    if isinstance(loaded, FidStats):
        return loaded
    if not isinstance(loaded, torch.Tensor):
        raise DataError(f"{path} holds a {type(loaded).__name__}, not a tensor; --data takes {FORMS}")
    return loaded


def _stats(path, mu, sigma) -> FidStats:
    try:
        mu = np.asarray(mu.numpy() if isinstance(mu, torch.Tensor) else mu, dtype=np.float64)
        sigma = np.asarray(sigma.numpy() if isinstance(sigma, torch.Tensor) else sigma, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: mu and sigma must be numeric arrays ({one_line(exc)})") from None
    if mu.ndim != 1 or len(mu) < 1 or sigma.shape != (len(mu), len(mu)):
        raise DataError(f"{path}: FID statistics need mu shaped (F,) and sigma (F, F), got mu {mu.shape} and "
                        f"sigma {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise DataError(f"{path}: the FID statistics contain NaN or Inf")
    return FidStats(mu, sigma)


def _stats_data(path, shape, stats: FidStats) -> RealData:
    digest = hashlib.sha256(b"fid-stats\0" + stats.mu.tobytes() + stats.sigma.tobytes()).hexdigest()
    return RealData(str(path), shape, "", digest, None, stats)


_TORCH_ONLY = (torch.bfloat16,)


def _layout(path, data, shape) -> torch.Tensor:
    """(N, *shape) from (N, *shape), NHWC images, or (N, H, W) for one channel."""
    arr = data.detach().numpy() if isinstance(data, torch.Tensor) and data.dtype not in _TORCH_ONLY else data
    if isinstance(arr, np.ndarray):
        if arr.dtype.kind not in "uif":
            raise DataError(f"{path} holds {arr.dtype} data; expected real numbers (integers or floats)")
        if arr.dtype.kind in "ui" and arr.dtype != np.uint8:
            arr = arr.astype(np.int64)
        x = torch.from_numpy(np.ascontiguousarray(arr))
    else:
        x = data.detach().float()  # bfloat16 and other types numpy lacks
    got = tuple(x.shape)
    if len(got) == len(shape) + 1 and got[1:] == shape:
        return x
    if len(shape) == 3 and len(got) == 4 and got[1:] == (shape[1], shape[2], shape[0]):
        return x.permute(0, 3, 1, 2)
    if len(shape) == 3 and shape[0] == 1 and got[1:] == shape[1:]:
        return x[:, None]
    layouts = f"(N, {', '.join(map(str, shape))})" + (f" or NHWC (N, {shape[1]}, {shape[2]}, {shape[0]})"
                                                      if len(shape) == 3 else "")
    raise DataError(f"{path}: data shaped {got} does not fit the model's samples {shape}; expected {layouts}")


def _finish(path, x: torch.Tensor, shape, data_range: str, integer_source: bool = False) -> RealData:
    """Check values and range; hash the decoded array."""
    if len(x) < 1:
        raise DataError(f"{path} holds no samples")
    x = x.contiguous()
    integer = integer_source or not x.is_floating_point()
    if not integer and not torch.isfinite(x).all():
        raise DataError(f"{path} contains NaN or Inf")
    lo_v, hi_v = float(x.min()), float(x.max())
    if len(shape) == 1:
        rng = AS_IS
    elif data_range != "auto":
        rng = data_range
        _check_range(path, lo_v, hi_v, rng, f"outside the declared range {rng}")
    else:
        tol = RANGE_TOL
        rng = "0,255" if integer or hi_v > 1 + tol else "-1,1" if lo_v < -tol else "0,1"
        _check_range(path, lo_v, hi_v, rng, f"which fits none of the ranges {', '.join(RANGES)} (detected {rng}); "
                                            "rescale the data")
    if rng == AS_IS:
        x = x.to(torch.float64)
    h = hashlib.sha256(f"{x.dtype}|{tuple(x.shape)}|{rng}|".encode())
    h.update(x.numpy().tobytes())
    return RealData(str(path), shape, rng, h.hexdigest(), x, None)


def _check_range(path, lo_v: float, hi_v: float, rng: str, why: str) -> None:
    lo, hi = RANGES[rng]
    tol = RANGE_TOL * (hi - lo)
    if lo_v < lo - tol or hi_v > hi + tol:
        raise DataError(f"{path}: values span [{lo_v:g}, {hi_v:g}], {why}")
