"""Text formatting shared by the report's sections."""
from __future__ import annotations

import math

import pandas as pd


def fmt(v, digits: int = 3) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def pct(v: float) -> str:
    return "—" if not math.isfinite(v) else f"{100 * v:+.1f}%"


def nfe_text(nfe) -> str:
    return "adaptive" if pd.isna(nfe) else str(int(nfe))
