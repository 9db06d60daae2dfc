"""A run directory's storage: an append-only journal of rows, the tables rewritten from it, and a lock.

Every finished cell is one JSON line appended to `results.jsonl` and fsync'ed, so a run killed at
any point (Ctrl-C, SIGKILL, power loss) loses at most the cell it was working on; a torn last
line is cut off when the journal is reopened. `results.parquet` and `results.csv` are rewritten
from the journal atomically (write to a temporary file, then rename) at checkpoints and at the end.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
from pathlib import Path

import pandas as pd

from reference_models.checkpoints import atomic_write

from . import schema

JOURNAL = "results.jsonl"
LOCK = ".lock"


class RunLocked(RuntimeError):
    """Another process holds the run directory's lock."""


class RunLock:
    """An exclusive, non-blocking fcntl lock on DIR/.lock, released when the process ends (even by SIGKILL)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLocked(f"another `bench run` (pid {holder}) is writing to {self.path.parent}; wait for it to "
                            "finish or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _jsonable(value):
    """Row values as JSON: NaN and <NA> become null, numpy scalars Python numbers."""
    if value is None or value is pd.NA:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value
    return value


class Journal:
    """Rows of one run, one JSON object per line, appended durably."""

    def __init__(self, run_dir: Path):
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        self.path = Path(run_dir) / JOURNAL
        self.rows: list[dict] = self._read_and_repair()

    def _read_and_repair(self) -> list[dict]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1  # everything after the last newline is a torn write
        if end < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(end)
                os.fsync(f.fileno())
        rows = []
        for i, line in enumerate(data[:end].splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise RuntimeError(f"{self.path} line {i} is corrupt ({e}); delete that line to resume") from None
        return rows

    def append(self, row: dict) -> None:
        line = json.dumps({k: _jsonable(v) for k, v in row.items()}, allow_nan=True) + "\n"
        with open(self.path, "ab") as f:
            f.write(line.encode())
            f.flush()
            os.fsync(f.fileno())
        self.rows.append(json.loads(line))

    def done(self, retry_failed: bool = False) -> set[tuple]:
        """Identity keys of every finished cell (ok, failed or skipped; without the failed ones with `retry_failed`)."""
        last = {cell_key(r): r.get("status") for r in self.rows}
        return {k for k, status in last.items() if not (retry_failed and status == "failed")}

    def table(self) -> pd.DataFrame:
        """The journal as a schema-conformant table, one row per cell (the last row of a cell wins)."""
        if not self.rows:
            return schema.empty_table()
        df = pd.DataFrame(self.rows)
        df = schema.conform(df)
        keys = df[schema.IDENTITY].astype("string").fillna("<NA>").agg("|".join, axis=1)
        return df[~keys.duplicated(keep="last")].reset_index(drop=True)


def cell_key(row: dict) -> tuple:
    """A cell's identity (schema.IDENTITY) as a hashable tuple; a missing NFE (adaptive solvers) is None."""
    out = []
    for c in schema.IDENTITY:
        v = _jsonable(row.get(c))
        out.append(int(v) if isinstance(v, float) and v.is_integer() else v)
    return tuple(out)


def write_tables(journal: Journal, run_dir: Path) -> pd.DataFrame:
    """Rewrite results.parquet and results.csv from the journal; returns the table."""
    df = journal.table()
    atomic_write(Path(run_dir) / "results.parquet", lambda p: df.to_parquet(p, index=False))
    atomic_write(Path(run_dir) / "results.csv", lambda p: df.to_csv(p, index=False))
    return df


def write_json(path: Path, obj) -> None:
    atomic_write(path, lambda p: Path(p).write_text(json.dumps(obj, indent=2, default=str) + "\n"))
