"""Storage of the solver accuracy baselines: the table's columns and the per-model CSVs of results/baselines.

Floats are written as repr, so a table read back compares equal to the one written, bit for bit.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from reference_models.checkpoints import atomic_write

BASELINE_DIR = Path(__file__).resolve().parents[1] / "results" / "baselines"
COLUMNS = ["model", "schedule", "solver", "options", "kind", "timesteps", "nfe", "nfe_used", "samples", "metric",
           "value", "stderr", "reference"]
KEY = ["model", "schedule", "solver", "options", "timesteps", "nfe", "metric"]  # one value per key
ERROR_METRICS = ("rmse", "max_error")  # deterministic solvers, against the reference solution
BIAS_METRICS = ("bias_logp", "bias_sq_norm")  # stochastic solvers, against exact samples


class NoBaselines(FileNotFoundError):
    """The baseline directory holds no CSV (or does not exist)."""


def table(rows) -> pd.DataFrame:
    """Rows (dicts) as a baseline table with the columns and dtypes of COLUMNS."""
    df = pd.DataFrame(list(rows), columns=COLUMNS)
    for c in ("nfe", "nfe_used", "samples"):
        df[c] = df[c].astype("Int64")
    for c in ("value", "stderr"):
        df[c] = df[c].astype("float64")
    df["options"] = df["options"].astype(object).fillna("").astype(str)
    return df


def _read(files) -> pd.DataFrame:
    frames = [pd.read_csv(f, keep_default_na=False, na_values=[""], dtype={"options": str, "reference": str})
              for f in files]
    return table(pd.concat(frames, ignore_index=True).to_dict("records")) if frames else table([])


def read_baselines(directory=BASELINE_DIR) -> pd.DataFrame:
    """Every *.csv of `directory`, concatenated; NoBaselines when there is none."""
    files = sorted(Path(directory).glob("*.csv"))
    if not files:
        raise NoBaselines(f"no baseline CSVs in {directory}; run `python -m bench baseline --update` to create them")
    return _read(files)


def write_baselines(measured: pd.DataFrame, directory=BASELINE_DIR) -> list[Path]:
    """Replace the measured (model, schedule, solver) rows in the per-model CSVs, keeping all other rows."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    old = _read(sorted(directory.glob("*.csv")))
    done = set(map(tuple, measured[["model", "schedule", "solver"]].drop_duplicates().to_numpy()))
    keep = old[[(m, s, v) not in done for m, s, v in old[["model", "schedule", "solver"]].to_numpy()]]
    merged = table(pd.concat([keep, measured], ignore_index=True).to_dict("records"))
    written = []
    for model, rows in merged.groupby("model", sort=True):
        rows = rows.sort_values(["schedule", "kind", "solver", "options", "metric", "nfe"], kind="stable",
                                na_position="first")
        path = directory / f"{model}.csv"
        atomic_write(path, lambda tmp, rows=rows: rows.to_csv(tmp, index=False))  # floats as repr: exact round trip
        written.append(path)
    return written
