"""One check per kind of solver option, shared by every solver's `check_options`."""
from __future__ import annotations

import math

from .thresholding import THRESHOLDINGS

DEFAULT_MAX_NFE = 10_000  # evaluation cap of the adaptive solvers (float64 at rtol=atol=1e-8 needs ~3k on a 2-D mixture)


def positive(name: str, value) -> float:
    """`value` if it is a finite real number > 0 (not a bool), else a ValueError naming the option."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def non_negative(name: str, value) -> float:
    """`value` if it is a finite real number >= 0 (not a bool), else a ValueError naming the option."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def check_type(name: str, value, default) -> None:
    """A ValueError unless `value` has the type of the option's `default` (any number for a float default).

    bool, int, float and str defaults are checked; an option whose default is None (or another type) takes
    any value, left to the solver's own check.
    """
    if isinstance(default, bool):
        ok, what = isinstance(value, bool), "True or False"
    elif isinstance(default, int):
        ok, what = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(default, float):
        ok, what = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    elif isinstance(default, str):
        ok, what = isinstance(value, str), "a string"
    else:
        return
    if not ok:
        raise ValueError(f"option {name} must be {what} (its default is {default!r}), got {value!r}")


def one_of(options: dict, name: str, valid) -> None:
    """A ValueError naming the valid values unless options[name] is one of `valid`."""
    if options[name] not in valid:
        raise ValueError(f"{name} must be one of {', '.join(map(str, valid))}, got {options[name]!r}")


def check_positive(options: dict, names) -> None:
    """`positive` on each of `names` in `options`."""
    for name in names:
        positive(name, options[name])


def positive_int(name: str, value) -> int:
    """`value` if it is an integer >= 1 (not a bool), else a ValueError naming the option."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


class EvaluationCapError(RuntimeError):
    """An adaptive solver reached its evaluation cap `max_nfe` before the end of the interval."""


def check_cap(solver: str, needed: int, max_nfe: int, t: float) -> None:
    """Raise EvaluationCapError if going on would take the evaluations made to `needed` > `max_nfe`."""
    if needed > max_nfe:
        raise EvaluationCapError(f"{solver} reached its evaluation cap max_nfe={max_nfe} at t={t:.6g} before the end "
                                 "of the interval; loosen rtol/atol or raise max_nfe")


def check_thresholding(options: dict) -> None:
    """The thresholding options of the data-prediction solvers (solvers.thresholding): `thresholding` one of
    none/static/dynamic, `threshold_ratio` in (0, 1], `threshold_max` > 0."""
    one_of(options, "thresholding", THRESHOLDINGS)
    ratio = options["threshold_ratio"]
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
        raise ValueError(f"threshold_ratio must be a number in (0, 1], got {ratio!r}")
    positive("threshold_max", options["threshold_max"])
