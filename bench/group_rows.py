"""A run's group rows (DIR/groups.parquet and .csv): per (model, schedule, prediction, guidance, seed) and metric, the quality
of the reference solution ("reference") and of real data against real data ("data", the noise floor)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from reference_models.checkpoints import atomic_write

from . import schema

GROUPS = "groups.parquet"


def write_group_rows(run_dir: Path, rows: list[dict]) -> pd.DataFrame:
    """Replace a group's rows in DIR/groups.parquet and .csv (reference quality and noise floor per metric)."""
    path = Path(run_dir) / GROUPS
    new = schema.conform(pd.DataFrame(rows), schema.GROUP_COLUMNS)
    old = read_group_rows(run_dir)
    if len(old) and len(new):
        keys = schema.GROUP_KEYS
        mine = old[keys].astype("string").fillna("<NA>").agg("|".join, axis=1).isin(set(new[keys].astype("string").fillna("<NA>").agg("|".join, axis=1)))
        old = old[~mine]
    table = schema.conform(pd.concat([old, new], ignore_index=True) if len(old) else new, schema.GROUP_COLUMNS)
    atomic_write(path, lambda p: table.to_parquet(p, index=False))
    atomic_write(path.with_suffix(".csv"), lambda p: table.to_csv(p, index=False))
    return table


def read_group_rows(run_dir: Path) -> pd.DataFrame:
    """DIR/groups.parquet, or an empty table (runs made before it existed have none)."""
    path = Path(run_dir) / GROUPS
    if not path.is_file():
        return schema.empty_table(schema.GROUP_COLUMNS)
    return schema.conform(pd.read_parquet(path), schema.GROUP_COLUMNS)
