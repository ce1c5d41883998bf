"""The demo's backfills: one SQL path, one pandas path, with validation rules."""

from __future__ import annotations

import pandas as pd

from migrations import Backfill, ValidationRule

weight_kg = Backfill(
    table="demo.patients",
    key="id",
    reads=["weight_lb"],
    writes=["weight_kg"],
    sql={
        "weight_kg": "round(nullif(regexp_replace(weight_lb, '[^0-9.]', '', 'g'), '')::numeric"
        " * 0.45359237, 2)"
    },
    rules=[
        ValidationRule(
            field="weight_kg",
            type="range",
            condition="0.5..400",
            error_message="implausible weight",
            severity="error",
            action="skip",
        )
    ],
    chunk_size=10_000,
)


def _parse_dob(df: pd.DataFrame) -> pd.DataFrame:
    text = df["dob_text"].astype("string").str.strip()
    parsed = pd.to_datetime(text, format="%Y-%m-%d", errors="coerce")
    for fmt in ("%m/%d/%Y", "%d.%m.%Y", "%Y%m%d"):
        missing = parsed.isna()
        if not missing.any():
            break
        parsed = parsed.fillna(pd.to_datetime(text.where(missing), format=fmt, errors="coerce"))
    out = pd.DataFrame({"id": df["id"]})
    out["dob"] = parsed.dt.strftime("%Y-%m-%d").astype(object).where(parsed.notna(), None)
    return out


normalize_dob = Backfill(
    table="demo.patients",
    key="id",
    reads=["dob_text"],
    writes=["dob"],
    transform=_parse_dob,
    rules=[
        ValidationRule(
            field="dob",
            type="range",
            condition="1900-01-01..today",
            error_message="implausible birth date",
            severity="error",
            action="skip",
        )
    ],
    chunk_size=10_000,
)
