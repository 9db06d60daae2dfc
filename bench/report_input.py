"""Report input: a run directory's table (checked against the schema) and manifest, and the report's options."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .schema import COLUMNS, conform

FORMATS = ("html", "md")
REQUIRED = ("model", "solver", "kind", "nfe", "nfe_used", "seed", "status")


class ReportError(ValueError):
    """Bad report input: printed as one line by the CLI, which exits with 2."""



@dataclass
class Run:
    path: Path
    label: str
    rows: pd.DataFrame
    manifest: dict | None


def load_run(run_dir) -> Run:
    """One run directory's table (checked against the schema) and manifest."""
    path = Path(run_dir)
    table = path / "results.parquet"
    if not table.is_file():
        raise ReportError(f"{table} not found: a run directory holds results.parquet (written by `python -m bench run`)")
    try:
        rows = pd.read_parquet(table)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise ReportError(f"cannot read {table}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    missing = [c for c in REQUIRED if c not in rows]
    if missing:
        raise ReportError(f"{table} lacks required column(s) {', '.join(missing)}; required: {', '.join(REQUIRED)}")
    try:
        rows = conform(rows)
    except (TypeError, ValueError) as e:
        raise ReportError(f"{table} has a column of the wrong type ({e}); expected dtypes: {COLUMNS}") from None
    bad = sorted(set(rows["status"].dropna()) - {"ok", "failed", "skipped"})
    if bad:
        raise ReportError(f"{table}: unknown status value(s) {bad}; valid: ok, failed, skipped")
    manifest = None
    if (path / "manifest.json").is_file():
        try:
            manifest = json.loads((path / "manifest.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ReportError(f"cannot read {path / 'manifest.json'}: {e}") from None
    label = str((manifest or {}).get("run_id") or path.resolve().name)
    return Run(path, label, rows, manifest)


def parse_formats(formats) -> tuple[str, ...]:
    items = [f.strip() for f in (formats.split(",") if isinstance(formats, str) else formats)]
    bad = [f for f in items if f not in FORMATS]
    if bad or not items:
        raise ReportError(f"unknown format(s) {', '.join(bad) or '(none)'}; valid: {', '.join(FORMATS)}")
    return tuple(dict.fromkeys(items))
