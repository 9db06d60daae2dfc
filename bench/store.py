"""A run directory's storage: an append-only journal of rows, the tables rewritten from it, and a lock.

Every finished cell is one JSON line appended to `results.jsonl` and fsync'ed, so a run killed at
any point (Ctrl-C, SIGKILL, power loss) loses at most the cell it was working on; a torn last
line is cut off when the journal is reopened. A row is checked against the table's schema before
it is appended, so a bad row is an error before it is written and never poisons the directory.
`results.parquet` and `results.csv` are rewritten from the journal atomically (write to a temporary
file, then rename) at checkpoints and at the end. A write that fails (a full disk) raises
StoreError naming the file; a journal line that cannot be read raises JournalError naming the line.
"""
from __future__ import annotations

import contextlib
import errno
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


class StoreError(RuntimeError):
    """A run directory that cannot be read or written; the message is one line naming the file and the fix."""


class JournalError(StoreError):
    """A journal line that is not a row of the table."""


class RunLocked(RuntimeError):
    """Another process holds the run directory's lock."""


class RunLock:
    """An exclusive, non-blocking fcntl lock on DIR/.lock, released when the process ends (even by SIGKILL).

    The lock file is removed on a normal exit, while the lock is still held; a process that opened the
    old file meanwhile finds that its lock is on a file no longer at DIR/.lock, and locks the new one.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        while self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise RunLocked(f"another `bench run` (pid {holder}) is writing to {self.path.parent}; wait for it "
                                "to finish or choose another --out") from None
            if _is_file_at(fd, self.path):
                self._fd = fd
            else:  # the holder removed the file as it finished: lock the one at the path now
                os.close(fd)
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # before unlocking: no one can lock this file and take it for the lock
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _is_file_at(fd: int, path: Path) -> bool:
    """Whether the open file `fd` is the file now at `path`."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (opened.st_dev, opened.st_ino)


def _jsonable(value):
    """Row values as JSON: NaN and <NA> become null, numpy scalars Python numbers."""
    if value is None or value is pd.NA:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value
    return value


def row_problem(row: dict) -> str | None:
    """Why `row` does not fit the results table (schema.COLUMNS, schema.STATUSES), or None when it does."""
    for column, dtype in schema.COLUMNS.items():
        value = _jsonable(row.get(column))
        try:
            pd.Series([value], dtype=object).astype(dtype)
        except (TypeError, ValueError, OverflowError):
            return f"{column} = {value!r} does not fit the column's type {dtype}"
    if row.get("status") not in schema.STATUSES:
        return f"status {row.get('status')!r} is not one of {', '.join(schema.STATUSES)}"
    return None


class Journal:
    """Rows of one run, one JSON object per line, appended durably."""

    def __init__(self, run_dir: Path):
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        self.path = Path(run_dir) / JOURNAL
        self.rows: list[dict] = self._read_and_repair()

    def _read_and_repair(self) -> list[dict]:
        """The journal's rows (JournalError on a bad line, before anything is changed); a torn last line is cut off."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1  # everything after the last newline is a torn write
        rows = read_rows(self.path, data[:end])
        if end < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(end)
                os.fsync(f.fileno())
        return rows

    def append(self, row: dict) -> None:
        """Check `row` against the schema (StoreError, nothing written), then append it and fsync."""
        clean = {k: _jsonable(v) for k, v in row.items()}
        problem = row_problem(clean)
        if problem:
            raise StoreError(f"the row of cell {cell_key(clean)} does not fit the results table ({problem}); "
                             f"it was not written to {self.path}")
        line = json.dumps(clean, allow_nan=True) + "\n"
        _append_durably(self.path, line.encode())
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


def read_rows(path: Path, data: bytes) -> list[dict]:
    """The rows of a journal's complete lines; JournalError names the first line that is not a row of the table."""
    rows, numbers = [], []
    for i, line in enumerate(data.splitlines(), 1):
        if line.strip():
            rows.append(_parse_line(path, i, line))
            numbers.append(i)
    try:
        schema.conform(pd.DataFrame(rows))
    except (TypeError, ValueError, OverflowError):
        for i, row in zip(numbers, rows):
            problem = row_problem(row)
            if problem:
                raise JournalError(f"{path} line {i}: {problem}; {_fix(i)}") from None
        raise JournalError(f"{path} does not fit the results table; move it away to run every cell again") from None
    return rows


def _parse_line(path: Path, i: int, line: bytes) -> dict:
    if b"\0" in line:
        raise JournalError(f"{path} line {i} holds NUL bytes (left by a crash of the machine); {_fix(i)}")
    try:
        row = json.loads(line)
    except ValueError as e:
        raise JournalError(f"{path} line {i} is not JSON ({str(e)[:80]}); {_fix(i)}") from None
    if not isinstance(row, dict):
        raise JournalError(f"{path} line {i} is not a JSON object; {_fix(i)}")
    return row


def _fix(line: int) -> str:
    return f"delete line {line} (its cell is run again) and run the same command again"


def _append_durably(path: Path, data: bytes) -> None:
    """Append `data` and fsync; on failure the file is cut back to its old size (no torn line) and StoreError raised."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as e:
        raise write_error(path, e) from None
    size = os.fstat(fd).st_size
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
        raise write_error(path, e) from None
    finally:
        os.close(fd)


def write_error(path: Path, e: OSError) -> StoreError:
    """The one-line error of a failed write to `path`."""
    hint = "free some disk space" if e.errno == errno.ENOSPC else "make it writable"
    return StoreError(f"cannot write {path}: {e.strerror or e}; {hint} and run the same command again to resume "
                      "(finished cells are kept)")


def cell_key(row: dict) -> tuple:
    """A cell's identity (schema.IDENTITY) as a hashable tuple; a missing NFE (adaptive solvers) is None."""
    out = []
    for c in schema.IDENTITY:
        v = _jsonable(row.get(c))
        out.append(int(v) if isinstance(v, float) and v.is_integer() else v)
    return tuple(out)


def _write_atomically(path: Path, write) -> None:
    try:
        atomic_write(path, write)
    except OSError as e:
        raise write_error(path, e) from None


def write_tables(journal: Journal, run_dir: Path) -> pd.DataFrame:
    """Rewrite results.parquet and results.csv from the journal; returns the table."""
    df = journal.table()
    _write_atomically(Path(run_dir) / "results.parquet", lambda p: df.to_parquet(p, index=False))
    _write_atomically(Path(run_dir) / "results.csv", lambda p: df.to_csv(p, index=False))
    return df


def write_json(path: Path, obj) -> None:
    _write_atomically(path, lambda p: Path(p).write_text(json.dumps(obj, indent=2, default=str) + "\n"))
