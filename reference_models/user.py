"""A user's own model as a reference model, and the model specs that name one.

`user_model(model, shape, data)` wraps a `solvers.Model` as a `ReferenceModel` (kind "user"). A spec
resolves to a record: a registered name, `diffusers:PATH_OR_HUB_ID`, `MODULE:FACTORY` or
`path/to/file.py:FACTORY` (FACTORY() returns `user_model(...)`). Every spec that cannot be used is
a one-line `ModelSpecError`.

Fingerprint of a user's model (sha256, hex): the schedule (its description and 32 values of alpha
and sigma, to 12 significant digits), prediction kind, shape and sample range, then the weights:
every tensor of the state_dict (name, dtype, shape, bytes) of each torch module reachable from
`model.fn` (fn itself, a bound method's object, closure cells, globals its code names, a
functools.partial's function and arguments, a callable object's attributes; 4 levels deep). With no
module found it hashes fn's outputs on a fixed probe (seed 0, t = T, T/2, T/10) as float64 bytes,
which depend on the device and dtype they were computed in.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import math
import pathlib
import re
import sys
import types

import torch

from solvers import Model

from .registry import MODELS, ReferenceModel, canonical_json, load

DEFAULT_NAME = "user-model"  # an unnamed model's name; the resolver names it after its spec instead
SPEC_FORMS = "a registered name, diffusers:PATH_OR_HUB_ID, MODULE:FACTORY or path/to/file.py:FACTORY"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_NAME_RULE = ("letters, digits and . _ - + only, starting with a letter or digit (names are table cells, file names "
              "and comma-separated lists)")


class ModelSpecError(ValueError):
    """A model spec that cannot be resolved; the message is one line and names the valid forms."""


def check_name(name) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"model name {name!r} is not valid: use {_NAME_RULE}")
    return name


def _one_line(e: BaseException) -> str:
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")


# --- fingerprints ------------------------------------------------------------------------------------------
def state_digest(modules, h) -> None:
    """Feed every state_dict tensor of `modules` (one nn.Module or a list) into hash `h`: name, dtype, shape, bytes."""
    for module in [modules] if isinstance(modules, torch.nn.Module) else modules:
        for key, t in module.state_dict().items():
            h.update(canonical_json([key, str(t.dtype), list(t.shape)]))
            h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def find_modules(obj, depth: int = 4) -> list[torch.nn.Module]:
    """The torch modules reachable from a callable (see the module docstring), in a fixed order, each once."""
    found, seen = [], set()

    def visit(o, d):
        if id(o) in seen or d < 0 or o is None or isinstance(o, (str, bytes, int, float, bool, types.ModuleType,
                                                                    type, torch.Tensor)):
            return
        seen.add(id(o))
        if isinstance(o, torch.nn.Module):
            found.append(o)
            return
        if isinstance(o, (list, tuple, set, frozenset)):
            children = list(o)
        elif isinstance(o, dict):
            children = list(o.values())
        elif isinstance(o, functools.partial):
            children = [o.func, *o.args, *o.keywords.values()]
        elif isinstance(o, types.MethodType):
            children = [o.__self__, o.__func__]
        elif isinstance(o, types.FunctionType):
            children = _cell_values(o) + [o.__globals__[n] for n in o.__code__.co_names if n in o.__globals__]
        elif callable(o) and hasattr(o, "__dict__"):
            children = [type(o).__call__, *vars(o).values()]
        else:
            return
        for c in children:
            visit(c, d - 1)

    visit(obj, depth)
    return found


def _cell_values(fn) -> list:
    out = []
    for cell in fn.__closure__ or ():
        try:
            out.append(cell.cell_contents)
        except ValueError:  # a cell not filled yet
            pass
    return out


def _device_of(modules) -> torch.device:
    for m in modules:
        for t in [*m.parameters(), *m.buffers()]:
            return t.device
    return torch.device("cpu")


def _schedule_digest(schedule, h) -> None:
    t = torch.linspace(0.0, schedule.T, 33, dtype=torch.float64)[1:]
    values = torch.cat([schedule.log_alpha(t), schedule.sigma(t)]).tolist()
    h.update(canonical_json({"schedule": schedule.describe(), "values": [f"{v:.12g}" for v in values]}))


def model_fingerprint(model: Model, shape, sample_range, device=None) -> tuple[str, str]:
    """(sha256 hex, what the weights part hashed: "weights" or "outputs"); see the module docstring."""
    h = hashlib.sha256(canonical_json({"prediction": model.prediction, "shape": list(shape),
                                   "sample_range": list(sample_range)}))
    _schedule_digest(model.schedule, h)
    modules = find_modules(model.fn)
    if modules:
        state_digest(modules, h)
        return h.hexdigest(), "weights"
    device = torch.device(device) if device is not None else torch.device("cpu")
    x = torch.randn((2, *shape), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        for t in (model.schedule.T, 0.5 * model.schedule.T, 0.1 * model.schedule.T):
            out = model.fn(x, torch.full((2,), t, device=device))
            h.update(torch.as_tensor(out).detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    return h.hexdigest(), "outputs"


# --- a user's model ----------------------------------------------------------------------------------------
def _check_shape(shape) -> tuple[int, ...]:
    rule = "one sample's shape, a tuple of positive ints: (D,) for low-dimensional data or (C, H, W) for images"
    try:
        out = tuple(shape)
    except TypeError:
        raise ValueError(f"shape must be {rule}; got {shape!r}") from None
    if not out or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in out):
        raise ValueError(f"shape must be {rule}; got {shape!r}")
    if len(out) not in (1, 3):
        raise ValueError(f"shape must be {rule}; got {len(out)} dimensions {out}")
    return out


def _check_output(model: Model, shape: tuple[int, ...], device) -> None:
    """Evaluate fn once on 2 prior samples at t = T (not counted in model.nfe); ValueError for a wrong output."""
    s = model.schedule
    x = s.prior_sample((2, *shape), generator=torch.Generator().manual_seed(0)).to(device)
    try:
        with torch.no_grad():
            out = model.fn(x, torch.full((2,), float(s.T), device=device))
    except Exception as e:  # noqa: BLE001 - the user's network: any failure is reported in one line
        raise ValueError(f"evaluating the model on 2 samples of shape {shape} at t={s.T:g} raised "
                         f"{_one_line(e)}") from None
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model output has shape {got}, expected {tuple(x.shape)} (2 samples of shape {shape})")
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"model returned NaN/Inf on 2 prior samples at t={s.T:g}")


def user_model(model, shape, data=None, name=None, *, sample_range=(-1.0, 1.0), fingerprint=None,
               device=None) -> ReferenceModel:
    """A user's `solvers.Model` as a reference model (kind "user"; metric "2d" for shape (D,), "image" for (C, H, W)).

    data: None, a callable (n, generator) -> tensor (n, *shape), or a path read by data_files.read_data.
    device: where fn's inputs go for the checks (default: the device of the first module found in fn, else cpu).
    fingerprint: any stable string; default computed (module docstring).
    """
    if not isinstance(model, Model):
        raise TypeError(f"model must be a solvers.Model (Model(fn, schedule, prediction)); got {type(model).__name__}")
    shape = _check_shape(shape)
    check_name(DEFAULT_NAME if name is None else name)
    try:
        lo, hi = (float(v) for v in sample_range)
    except (TypeError, ValueError):
        raise ValueError(f"sample_range must be two numbers (low, high); got {sample_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"sample_range must be finite with low < high; got {sample_range!r}")
    if fingerprint is not None and (not isinstance(fingerprint, str) or not fingerprint):
        raise ValueError(f"fingerprint must be a non-empty string; got {fingerprint!r}")
    device = torch.device(device) if device is not None else _device_of(find_modules(model.fn))
    _check_output(model, shape, device)
    rec = ReferenceModel(name or DEFAULT_NAME, model, shape, "user", "2d" if len(shape) == 1 else "image",
                         sample_range=(lo, hi))
    if fingerprint is None:
        rec.fingerprint, how = model_fingerprint(model, shape, (lo, hi), device)
    else:
        rec.fingerprint, how = fingerprint, "user"
    rec.info = {"fingerprint_of": how}
    if isinstance(data, (str, pathlib.Path)):
        from .data_files import read_data

        attach_data(rec, read_data(data, shape, data_range="auto"))
    elif callable(data):
        got = data(2, torch.Generator().manual_seed(0))
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != (2, *shape):
            got = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise ValueError(f"data(2, generator) returned {got}; expected a tensor of shape {(2, *shape)}")
        rec.data = data
    elif data is not None:
        raise TypeError(f"data must be None, a callable (n, generator) -> tensor or a path; got {type(data).__name__}")
    return rec


def attach_data(rec: ReferenceModel, real) -> ReferenceModel:
    """Make `real` (a data_files.RealData) the record's real data: its draws (None for statistics only), its FID
    statistics; the noise floor draws from the same source."""
    rec.data = real.draw if real.fid_stats is None else None
    rec.fid_stats = real.fid_stats
    rec.train_data = None
    rec.real_data = real
    rec.info = {**rec.info, "data": real.summary()}
    return rec


# --- specs -------------------------------------------------------------------------------------------------
def parse_spec(spec) -> tuple[str, str]:
    """("name", NAME), ("diffusers", PATH_OR_HUB_ID) or ("factory", "MODULE:FACTORY"); imports nothing."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelSpecError(f"model spec {spec!r} is empty; valid: {SPEC_FORMS}; registered: {', '.join(MODELS)}")
    spec = spec.strip()
    if spec in MODELS:
        return "name", spec
    if spec.startswith("diffusers:"):
        rest = spec.removeprefix("diffusers:")
        if not rest:
            raise ModelSpecError("model spec 'diffusers:' names no directory or hub id; valid: diffusers:PATH_OR_HUB_ID")
        return "diffusers", rest
    module, sep, factory = spec.rpartition(":")
    if sep and module and factory.isidentifier() and (
            module.endswith(".py") or all(p.isidentifier() for p in module.split("."))):
        return "factory", spec
    raise ModelSpecError(f"unknown model {spec!r}; valid: {SPEC_FORMS}; registered: {', '.join(MODELS)}")


def resolve(spec: str, schedule: str = "vp", device="cpu", cache_dir=None, train: bool = True, progress: bool = True,
            data=None, data_range: str = "auto", prediction: str = "eps") -> ReferenceModel:
    """The ReferenceModel a spec names (see parse_spec). schedule and prediction apply to registered names only (a
    user's model has its own; `device` goes to diffusers models, registered ones, and factories that take a `device`
    parameter; others place their model where they like); `data` (a
    path) replaces the model's real data. Errors: ModelSpecError, one line (a bad `data` path: DataError)."""
    form, rest = parse_spec(spec)
    if form == "name":
        rec = load(rest, schedule, prediction, cache_dir=cache_dir, device=device, train=train, progress=progress)
    elif form == "diffusers":
        from .diffusers_adapter import diffusers_record

        rec = diffusers_record(rest, device=device)
    else:
        rec = _from_factory(rest, device)
    if data is not None:
        from .data_files import read_data

        attach_data(rec, read_data(data, rec.shape, data_range=data_range))
    return rec


def _import(module: str, spec: str) -> types.ModuleType:
    try:
        if module.endswith(".py"):
            path = pathlib.Path(module).expanduser().resolve()
            if not path.is_file():
                raise ModelSpecError(f"model spec {spec!r}: no file {path}; valid: {SPEC_FORMS}")
            unique = f"samplerbench_user_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
            loader_spec = importlib.util.spec_from_file_location(unique, path)
            mod = importlib.util.module_from_spec(loader_spec)
            sys.modules[unique] = mod
            try:
                loader_spec.loader.exec_module(mod)
            except BaseException:
                sys.modules.pop(unique, None)
                raise
            return mod
        return importlib.import_module(module)
    except ModelSpecError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's module: any failure to import it is one line
        raise ModelSpecError(f"model spec {spec!r}: cannot import {module}: {_one_line(e)}") from None


def _accepts_device(make) -> bool:
    try:
        params = inspect.signature(make).parameters
    except (TypeError, ValueError):
        return False
    return "device" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _from_factory(spec: str, device=None) -> ReferenceModel:
    module, _, factory = spec.rpartition(":")
    mod = _import(module, spec)
    make = getattr(mod, factory, None)
    if not callable(make):
        names = sorted(n for n, v in vars(mod).items() if callable(v) and not n.startswith("_")
                       and getattr(v, "__module__", None) == mod.__name__)
        raise ModelSpecError(f"model spec {spec!r}: {module} has no callable {factory!r}; its callables: "
                             f"{', '.join(names) or 'none'}")
    try:  # a factory with a `device` parameter is told the run's device; others place their model themselves
        rec = make(device=str(device)) if device is not None and _accepts_device(make) else make()
    except Exception as e:  # noqa: BLE001 - the user's factory
        raise ModelSpecError(f"model spec {spec!r}: {factory}() raised {_one_line(e)}") from None
    if not isinstance(rec, ReferenceModel):
        raise ModelSpecError(f"model spec {spec!r}: {factory}() returned {type(rec).__name__}; expected "
                             "reference_models.user_model(...)")
    stem = pathlib.Path(module).stem if module.endswith(".py") else module.rpartition(".")[2]
    if rec.name == DEFAULT_NAME:
        rec.name = re.sub(r"[^A-Za-z0-9._+-]", "-", f"{stem}.{factory}").lstrip("._+-") or DEFAULT_NAME
    if rec.info.get("fingerprint_of") != "user":  # computed (or none): also the factory's source and name
        h = hashlib.sha256((rec.fingerprint or "").encode())
        source = getattr(mod, "__file__", None)
        h.update(pathlib.Path(source).read_bytes() if source and pathlib.Path(source).is_file() else b"")
        h.update(factory.encode())
        rec.fingerprint = h.hexdigest()
    rec.source = spec
    return rec
