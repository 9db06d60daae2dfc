"""Solver variants on the command line: `NAME:OPTION=VALUE[:OPTION=VALUE...]`, e.g. `dpmpp_2m:thresholding=dynamic`.

A variant is a cell's `solver` of its own (its rows, colours and verdicts are separate from the plain solver's); its
options are validated by the solver's registry entry (the one option validator) and recorded in the `options` column.
Values are read as True/False, integers, numbers, or else text.
"""
from __future__ import annotations

import functools

from solvers import get_solver
from solvers.registry import SolverSpec

SEP = ":"


def _value(text: str):
    if text in ("True", "true", "False", "false"):
        return text in ("True", "true")
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@functools.lru_cache(maxsize=256)
def _parse(text: str) -> tuple[SolverSpec, tuple]:
    name, *pairs = text.split(SEP)
    spec = get_solver(name)  # an unknown name: its one-line error naming the registered solvers
    given = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise ValueError(f"solver variant {text!r}: give options as {name}:OPTION=VALUE[:OPTION=VALUE...]")
        given[key] = _value(value)
    spec.resolve_options(given)  # unknown option, wrong type or bad value: a one-line ValueError
    return spec, tuple(given.items())


def variant(text: str) -> tuple[SolverSpec, dict]:
    """(registry entry, the options given) of a solver name or variant "NAME:OPTION=VALUE..."; ValueError if bad."""
    spec, given = _parse(text)
    return spec, dict(given)
