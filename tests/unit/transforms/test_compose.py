"""pipeline and select_output, and the package's public surface."""

from __future__ import annotations

import pandas as pd
import pytest

import transforms
from transforms import (
    convert_units,
    normalize_strings,
    pipeline,
    select_output,
    stamp,
    standardize_dates,
)

PHI = "SSN 123-45-6789"


def chunk() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [7, 3],
            "dob_text": ["3 Feb 1990", "junk"],
            "weight_lb": ["154 lbs", None],
            "name": ["  ann  ", PHI],
        },
        index=[100, 200],
    )


def test_pipeline_runs_left_to_right_and_select_output_trims() -> None:
    fn = pipeline(
        standardize_dates("dob_text", "dob"),
        convert_units("weight_lb", "weight_kg", unit_from="lb", unit_to="kg", decimals=1),
        normalize_strings("name", case="title"),
        stamp(v="2"),
        select_output("id", ["dob", "weight_kg", "name", "v"]),
    )
    df = chunk()
    before = df.copy(deep=True)
    out = fn(df)
    pd.testing.assert_frame_equal(df, before)
    assert out.columns.tolist() == ["id", "dob", "weight_kg", "name", "v"]
    assert out.index.tolist() == [100, 200]
    assert out.to_dict("list") == {
        "id": [7, 3],
        "dob": ["1990-02-03", None],
        "weight_kg": [69.9, pytest.approx(float("nan"), nan_ok=True)],
        "name": ["Ann", PHI.title()],
        "v": ["2", "2"],
    }


def test_order_matters() -> None:
    upper_then_stamp = pipeline(stamp(v="a"), normalize_strings("v", case="upper"))
    assert upper_then_stamp(chunk())["v"].tolist() == ["A", "A"]
    stamp_last = pipeline(normalize_strings("name", case="upper"), stamp(name="x"))
    assert stamp_last(chunk())["name"].tolist() == ["x", "x"]


def test_select_output_returns_a_copy_of_just_those_columns() -> None:
    df = chunk()
    out = select_output("id", "name")(df)
    assert out.columns.tolist() == ["id", "name"]
    out.loc[100, "name"] = "changed"
    assert df.loc[100, "name"] == "  ann  "


def test_empty_frame() -> None:
    df = chunk().iloc[:0]
    out = pipeline(normalize_strings("name"), select_output("id", ["name"]))(df)
    assert out.columns.tolist() == ["id", "name"] and len(out) == 0
    assert out["id"].dtype == "int64"


@pytest.mark.parametrize(
    "build",
    [
        lambda: pipeline(),
        lambda: pipeline(stamp(v="1"), "not a transform"),
        lambda: select_output("", ["a"]),
        lambda: select_output("id", []),
        lambda: select_output("id", ["id"]),
        lambda: select_output("id", ["a", "a"]),
    ],
)
def test_misconfiguration(build: object) -> None:
    with pytest.raises(ValueError):
        build()  # type: ignore[operator]


def test_a_step_returning_no_frame_is_named_by_position() -> None:
    fn = pipeline(stamp(v="1"), lambda df: df["name"].tolist())  # type: ignore[arg-type, return-value]
    with pytest.raises(ValueError, match="step 2") as info:
        fn(chunk())
    assert PHI not in str(info.value)


def test_error_messages_never_quote_row_values() -> None:
    with pytest.raises(ValueError) as info:
        select_output("id", ["ssn"])(chunk())
    assert "ssn" in str(info.value) and PHI not in str(info.value)


def test_public_surface() -> None:
    assert sorted(transforms.__all__) == transforms.__all__
    for name in transforms.__all__:
        assert callable(getattr(transforms, name))
