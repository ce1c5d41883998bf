"""convert_units and round_numeric: parsing, units, decimal-exact rounding, NULLs."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal

import numpy as np
import pandas as pd
import pytest

from transforms import convert_units, round_numeric

PHI = "SSN 123-45-6789"


def frame(values: Sequence[object]) -> pd.DataFrame:
    index = pd.Index([10 * i for i in range(len(values))])
    return pd.DataFrame({"v": pd.Series(values, index=index, dtype=object), "other": "x"})


def same(got: list[float], expected: list[float]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert (np.isnan(g) and np.isnan(e)) or g == e, (got, expected)


def test_pounds_text_to_kilograms() -> None:
    df = frame(["154 lbs", "154.2", " 1,234.5 ", "154lb", "154 LBS", "-3", ".5", "12,345,678"])
    out = convert_units("v", "kg", unit_from="lb", unit_to="kg", decimals=2)(df)
    assert out["kg"].tolist() == [69.85, 69.94, 559.96, 69.85, 69.85, -1.36, 0.23, 5599905.34]
    assert out["kg"].dtype == "float64"


def test_garbage_and_wrong_units_are_null() -> None:
    df = frame(
        [
            "n/a",
            "70 kg",
            "1,5",
            "1.2.3",
            "12abc",
            "inf",
            "nan",
            "1e",
            "0x10",
            "1_000",
            "",
            PHI,
            "12 34",
        ]
    )
    out = convert_units("v", unit_from="lb", unit_to="kg")(df)
    assert out["v"].isna().all()


def test_scientific_notation_and_signs() -> None:
    df = frame(["1e3", "2.5E-1 lb", "+5", "-.5", " 7 "])
    same(convert_units("v", factor=1)(df)["v"].tolist(), [1000.0, 0.25, 5.0, -0.5, 7.0])


def test_nulls_stay_null() -> None:
    out = convert_units("v", factor=2.0)(frame([None, np.nan, pd.NA, "3"]))
    same(out["v"].tolist(), [np.nan, np.nan, np.nan, 6.0])


def test_numeric_columns_and_infinities() -> None:
    df = pd.DataFrame({"v": [100.0, np.inf, -np.inf, np.nan]})
    same(convert_units("v", factor=0.5)(df)["v"].tolist(), [50.0, np.nan, np.nan, np.nan])
    ints = pd.DataFrame({"v": pd.array([1, None], dtype="Int64")})
    same(convert_units("v", factor=2.54)(ints)["v"].tolist(), [2.54, np.nan])


@pytest.mark.parametrize(
    ("unit_from", "unit_to", "value", "expected"),
    [
        ("lb", "kg", 1.0, 0.45359237),
        ("kg", "lb", 0.45359237, 1.0),
        ("in", "cm", 1.0, 2.54),
        ("cm", "in", 2.54, 1.0),
        ("F", "C", 212.0, 100.0),
        ("F", "C", 98.6, 37.0),
        ("C", "F", -40.0, -40.0),
        ("C", "F", 37.0, 98.6),
        ("glucose mg/dL", "glucose mmol/L", 100.0, 5.55),
        ("glucose mmol/L", "glucose mg/dL", 5.55, 100.0),
        ("Pounds", "KG", 2.0, 0.90718474),
    ],
)
def test_units_table(unit_from: str, unit_to: str, value: float, expected: float) -> None:
    out = convert_units("v", unit_from=unit_from, unit_to=unit_to)(pd.DataFrame({"v": [value]}))
    assert out["v"].iloc[0] == pytest.approx(expected, rel=1e-12)


def test_factor_accepts_any_known_unit_label() -> None:
    same(
        convert_units("v", factor=10)(frame(["1 kg", "2", "3 parsecs"]))["v"].tolist(),
        [10, 20, np.nan],
    )


def test_half_up_is_decimal_exact() -> None:
    df = frame([2.675, "2.665", 1.005, -2.675, 0.125, 8.345, -0.001, 1234567.125])
    out = round_numeric("v", 2, rounding="half_up")(df)
    assert out["v"].tolist() == [2.68, 2.67, 1.01, -2.68, 0.13, 8.35, 0.0, 1234567.13]
    assert str(out["v"].iloc[6]) == "0.0"  # never -0.0


def test_half_even_breaks_ties_to_even() -> None:
    out = round_numeric("v", 2)(frame([2.675, 2.665, 0.125, 0.135, 1.005]))
    assert out["v"].tolist() == [2.68, 2.66, 0.12, 0.14, 1.0]
    whole = round_numeric("v", 0)(frame([0.5, 1.5, 2.5, -0.5, -1.5]))
    assert whole["v"].tolist() == [0.0, 2.0, 2.0, 0.0, -2.0]


@pytest.mark.parametrize(
    ("rounding", "mode"), [("half_up", ROUND_HALF_UP), ("half_even", ROUND_HALF_EVEN)]
)
def test_rounding_matches_decimal_on_many_values(rounding: str, mode: str) -> None:
    rng = np.random.default_rng(7)
    values = np.round(rng.uniform(-10_000, 10_000, 5_000), 3)
    got = round_numeric("v", 2, rounding=rounding)(pd.DataFrame({"v": values}))["v"].tolist()
    expected = [
        float(Decimal(repr(v)).quantize(Decimal("0.01"), rounding=mode)) for v in values.tolist()
    ]
    assert got == expected


def test_as_text_has_exactly_the_decimals() -> None:
    df = frame([2.675, "3", None, "junk", -0.004, 1e6])
    out = round_numeric("v", 2, dst="t", rounding="half_up", as_text=True)(df)
    assert out["t"].tolist() == ["2.68", "3.00", None, None, "0.00", "1000000.00"]
    assert out["t"].dtype == object
    kg = convert_units("v", unit_from="lb", unit_to="kg", decimals=1, as_text=True)(
        frame(["154 lbs"])
    )
    assert kg["v"].tolist() == ["69.9"]


def test_round_numeric_refuses_units() -> None:
    same(round_numeric("v", 1)(frame(["1.25 kg", "1.25"]))["v"].tolist(), [np.nan, 1.2])


def test_input_untouched_other_columns_and_index_kept() -> None:
    df = frame(["154 lbs", None])
    before = df.copy(deep=True)
    out = convert_units("v", "kg", unit_from="lb", unit_to="kg")(df)
    pd.testing.assert_frame_equal(df, before)
    assert out.index.equals(df.index)
    pd.testing.assert_frame_equal(out[["v", "other"]], before)
    round_numeric("v", 2)(df)
    pd.testing.assert_frame_equal(df, before)


def test_empty_frame() -> None:
    df = pd.DataFrame({"id": pd.Series([], dtype="int64"), "v": pd.Series([], dtype=object)})
    out = convert_units("v", "kg", factor=2)(df)
    assert out.columns.tolist() == ["id", "v", "kg"] and len(out) == 0
    assert out["kg"].dtype == "float64"
    text = round_numeric("v", 2, as_text=True)(df)
    assert text["v"].dtype == object and len(text) == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"factor": 2, "unit_from": "lb", "unit_to": "kg"},
        {"unit_from": "lb"},
        {"unit_from": "lb", "unit_to": "parsec"},
        {"unit_from": "lb", "unit_to": "cm"},
        {"unit_from": "mg/dL", "unit_to": "mmol/L"},
        {"factor": float("nan")},
        {"factor": "2"},
        {"factor": 2, "decimals": -1},
        {"factor": 2, "decimals": 2.5},
        {"factor": 2, "decimals": 13},
        {"factor": 2, "rounding": "half_down"},
        {"factor": 2, "as_text": True},
    ],
)
def test_convert_misconfiguration(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        convert_units("v", **kwargs)  # type: ignore[arg-type]


def test_round_misconfiguration() -> None:
    with pytest.raises(ValueError):
        round_numeric("v", True)
    with pytest.raises(ValueError):
        round_numeric("v", 2, rounding="up")
    with pytest.raises(ValueError):
        round_numeric("", 2)


def test_error_messages_never_quote_row_values() -> None:
    df = frame([PHI])
    for fn in (convert_units("weight", factor=2), round_numeric("weight", 2)):
        with pytest.raises(ValueError) as info:
            fn(df)
        assert "weight" in str(info.value) and PHI not in str(info.value)
