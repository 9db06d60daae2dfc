"""The models of a run: registered names and a user's own models, resolved and checked before anything is written.

`--models` mixes registered names (loaded per group, trained on first use) with a user's models
(`diffusers:PATH_OR_HUB_ID`, `MODULE:FACTORY`, `path/to/file.py:FACTORY`), which are resolved here,
once, before the run directory is chosen: a factory that fails, a model whose output has the wrong
shape, a `--data` that does not fit it, or two models of the same name are one-line errors (exit 2)
and nothing is written. A user's model has its own schedule and prediction kind: it runs once, with
the schedule label of its own schedule (`--schedules` applies to registered models).
"""
from __future__ import annotations

from dataclasses import dataclass

import reference_models
from reference_models import ReferenceModel
from reference_models.data_files import one_line, read_data
from reference_models.user import attach_data

DATA_RANGES = ("auto", "0,255", "0,1", "-1,1")


class ModelArgumentError(ValueError):
    """A model, --data or --data-range argument that cannot be used; its message is one line."""


@dataclass
class PlannedModel:
    spec: str  # as given on --models
    name: str  # the table's `model` column
    metric: str  # "2d" or "image"
    schedules: list[str]  # the schedule labels of its cells
    prediction: str
    record: ReferenceModel | None = None  # a user's model, resolved; None: a registered one, loaded per group
    fingerprint: str = ""
    real: object = None  # the RealData read from `data`

    @property
    def user(self) -> bool:
        return self.record is not None

    @property
    def real_data(self):
        """The RealData of its real data files, if any: --data, or a user's factory's data path."""
        return self.record.real_data if self.user else self.real


def is_user_spec(spec: str) -> bool:
    return ":" in spec


def parse_data(values: list[str] | None, specs: list[str]) -> dict[str, str]:
    """--data values (PATH, or MODEL=PATH, comma-separated) -> {model spec or name: path}. A bare PATH needs
    exactly one model in the run."""
    out: dict[str, str] = {}
    for text in values or []:
        for item in [s.strip() for s in text.split(",") if s.strip()]:
            key, sep, path = item.partition("=")
            if not sep:
                if len(specs) != 1:
                    raise ModelArgumentError(f"argument --data: {item!r} names no model and the run has "
                                             f"{len(specs)} models; give MODEL=PATH (models: {', '.join(specs)})")
                key, path = specs[0], item
            if not path:
                raise ModelArgumentError(f"argument --data: {item!r} has no path; give MODEL=PATH")
            out[key.strip()] = path.strip()
    return out


def plan(specs: list[str], schedules: list[str] | None, data: dict[str, str], data_range: str = "auto",
         device: str = "cpu", cache_dir=None, prediction: str = "eps") -> list[PlannedModel]:
    """Resolve the user's models and check every model's data; ModelArgumentError (one line) for anything wrong.

    schedules: the registered models' schedules; None: each its default schedules (registry.default_schedules).
    """
    from reference_models.registry import default_schedules, describe

    if data_range not in DATA_RANGES:
        raise ModelArgumentError(f"argument --data-range: invalid choice {data_range!r}; valid: {', '.join(DATA_RANGES)}")
    planned, claimed = [], set()
    for spec in specs:
        if is_user_spec(spec):
            try:
                rec = reference_models.resolve(spec, device=device, cache_dir=cache_dir, progress=False)
            except (ValueError, TypeError, ImportError, OSError) as e:
                raise ModelArgumentError(f"argument --models: {one_line(e, 400)}") from None
            p = PlannedModel(spec, rec.name, rec.metric, [rec.schedule_name], rec.model.prediction, rec,
                             fingerprint=rec.fingerprint)
        else:
            entry = describe(spec)
            own = default_schedules(spec) if schedules is None else list(schedules)
            p = PlannedModel(spec, spec, entry.metric, own, prediction)
        if p.name in claimed:
            raise ModelArgumentError(f"argument --models: two models are named {p.name!r}; give one of them another "
                                     "name (reference_models.user_model(..., name=...))")
        claimed.add(p.name)
        path = data.get(spec, data.get(p.name))
        if path is not None:
            shape = p.record.shape if p.user else describe(spec).shape
            p.real = read(p.name, path, shape, data_range)
            if p.user:
                attach_data(p.record, p.real)
        planned.append(p)
    unknown = sorted(set(data) - {p.spec for p in planned} - {p.name for p in planned})
    if unknown:
        raise ModelArgumentError(f"argument --data: no model {', '.join(map(repr, unknown))} in this run; valid: "
                                 + ", ".join(p.name for p in planned))
    return planned


def read(name: str, path: str, shape, data_range: str):
    """The real data at `path` for a model of sample shape `shape` (reference_models.data_files.RealData)."""
    try:
        return read_data(path, tuple(shape), data_range=data_range)
    except ValueError as e:
        raise ModelArgumentError(f"argument --data: {name}: {one_line(e, 400)}") from None


def check_samples(planned: list[PlannedModel], samples: dict[str, int]) -> None:
    """Every model whose real data are files has at least a cell's samples of them."""
    for p in planned:
        real = p.real_data
        if real is not None and real.fid_stats is None and real.count < samples[p.name]:
            raise ModelArgumentError(f"argument --data: {real.source} has {real.count} items; a cell of {p.name} "
                                     f"needs {samples[p.name]} (--samples)")


def loader(planned: list[PlannedModel]):
    """The sweep's model loader: registered models are loaded (and trained on first use) per group, with the
    --data they were given; a user's model is the record resolved at the start."""
    by_name = {p.name: p for p in planned}

    def load(name: str, schedule: str, prediction: str, cache_dir, device, progress: bool) -> ReferenceModel:
        p = by_name[name]
        if p.user:
            return p.record
        rec = reference_models.load(name, schedule=schedule, prediction=prediction, cache_dir=cache_dir,
                                    device=str(device), train=True, progress=progress)
        return attach_data(rec, p.real) if p.real is not None else rec

    return load
