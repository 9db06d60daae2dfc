"""Argument types shared by every `python -m bench` command: one validator per kind of value.

Each is an argparse `type`: a bad value becomes argparse's one-line error (exit 2) naming what is
valid, before anything is read or written.
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

MAX_SEED = 2**63 - 1  # seeds are stored in Int64 columns and seed torch generators


def _named(parse, name: str):
    parse.__name__ = name  # argparse names the type in its messages
    return parse


def integer(minimum: int = 0, maximum: int | None = None):
    """An integer in [minimum, maximum]."""
    span = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer {span}, got {text!r}") from None
        if v < minimum or (maximum is not None and v > maximum):
            raise argparse.ArgumentTypeError(f"must be an integer {span}, got {text!r}")
        return v

    return _named(parse, f"integer {span}")


def positive_number(text: str) -> float:
    """A finite number > 0."""
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return v


positive_number = _named(positive_number, "positive number")


def integers(kind: str, minimum: int = 0, maximum: int | None = None):
    """Comma-separated integers in [minimum, maximum], duplicates dropped (order kept)."""
    one = integer(minimum, maximum)

    def parse(text: str) -> list[int]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"give at least one {kind}")
        try:
            return list(dict.fromkeys(one(s) for s in items))
        except argparse.ArgumentTypeError as e:
            raise argparse.ArgumentTypeError(f"{kind} must be comma-separated integers {str(e).split('integer ')[1]}")

    return _named(parse, kind)


def names(kind: str, valid, allow_all: bool = False):
    """Comma-separated names from `valid()` (a callable, so that the registry is read only when parsing)."""

    def parse(text: str) -> list[str]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"give at least one {kind}")
        known = list(valid())
        if allow_all and items == ["all"]:
            return known
        bad = [s for s in items if s not in known]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {kind} {', '.join(map(repr, bad))}; valid: "
                                             f"{'all, ' if allow_all else ''}{', '.join(known)}")
        return list(dict.fromkeys(items))

    return _named(parse, kind)


def model_specs(valid):
    """Comma-separated models: registered names from `valid()` ('all': every one), and a user's models given as
    diffusers:PATH_OR_HUB_ID, MODULE:FACTORY or path/to/file.py:FACTORY (resolved later, when they are loaded).
    Duplicates are dropped (order kept)."""

    def parse(text: str) -> list[str]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        if not items:
            raise argparse.ArgumentTypeError("give at least one model")
        known = list(valid())
        if items == ["all"]:
            return known
        bad = [s for s in items if s not in known and ":" not in s]
        if bad:
            raise argparse.ArgumentTypeError(
                f"unknown model {', '.join(map(repr, bad))}; valid: all, {', '.join(known)}, or a model of your own "
                "as diffusers:PATH_OR_HUB_ID, MODULE:FACTORY or path/to/file.py:FACTORY")
        return list(dict.fromkeys(items))

    return _named(parse, "model")


def writable_dir(text: str) -> Path:
    """A directory that exists and is writable, or can be created under a writable parent."""
    path = Path(text).expanduser()
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not a directory ({probe} is a file)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write to {text!r} ({probe} is not writable)")
    return path


writable_dir = _named(writable_dir, "directory")


def solver_names(valid):
    """Comma-separated solver names from `valid()`, or 'all', or variants NAME:OPTION=VALUE[:...] of them
    (bench.solver_variants)."""
    plain = names("solver", valid, allow_all=True)

    def parse(text: str) -> list[str]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        if items == ["all"]:
            return plain(text)
        plain(",".join(s.split(":")[0] for s in items))  # an unknown name: the list of valid ones
        from .solver_variants import variant
        for s in items:
            try:
                variant(s)  # a variant's options, checked by the solver's registry entry
            except ValueError as e:
                raise argparse.ArgumentTypeError(str(e)) from None
        return list(dict.fromkeys(items))

    return _named(parse, "solvers")
