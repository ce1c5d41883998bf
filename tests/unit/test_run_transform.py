"""A transform's output checked: keys back as read, or each one accounted for (no services)."""

from __future__ import annotations

import pandas as pd
import pytest

from migrations.errors import PermanentChunkError
from workers.staging import run_transform


def chunk() -> pd.DataFrame:
    return pd.DataFrame({"id": pd.array([1, 2, 3], dtype="Int64"), "lb": ["100", "200 lbs", None]})


def test_keys_back_in_order_keep_their_type() -> None:
    out = run_transform(lambda df: df.assign(kg=1.0), chunk(), "id", ("kg",))
    assert list(out.columns) == ["id", "kg"] and out["id"].dtype == "Int64"


def test_dropped_reordered_or_retyped_keys_are_checked_as_text() -> None:
    out = run_transform(lambda df: df.iloc[[2, 0]].assign(kg=1.0), chunk(), "id", ("kg",))
    assert out["id"].tolist() == ["3", "1"]
    retyped = run_transform(
        lambda df: df.assign(id=df["id"].astype(str), kg=1.0), chunk(), "id", ("kg",)
    )
    assert retyped["id"].tolist() == ["1", "2", "3"]


def test_a_key_changed_in_place_is_caught() -> None:
    def shift(df: pd.DataFrame) -> pd.DataFrame:
        df["id"] += 10  # changes the very frame the engine read
        return df.assign(kg=1.0)

    with pytest.raises(PermanentChunkError, match="keys that are not in the chunk"):
        run_transform(shift, chunk(), "id", ("kg",))


def test_repeated_keys_and_missing_columns_are_refused() -> None:
    with pytest.raises(PermanentChunkError, match="repeats a key"):
        run_transform(lambda df: df.iloc[[0, 0]].assign(kg=1.0), chunk(), "id", ("kg",))
    with pytest.raises(PermanentChunkError, match="lacks columns: kg"):
        run_transform(lambda df: df, chunk(), "id", ("kg",))


def test_a_key_set_to_missing_is_caught() -> None:
    def blank(df: pd.DataFrame) -> pd.DataFrame:
        out = df.assign(kg=1.0)
        out.loc[1, "id"] = pd.NA
        return out

    with pytest.raises(PermanentChunkError, match="keys that are not in the chunk"):
        run_transform(blank, chunk(), "id", ("kg",))
