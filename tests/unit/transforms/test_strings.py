"""normalize_strings, format_phone and format_postal."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest

from transforms import format_phone, format_postal, normalize_strings

PHI = "SSN 123-45-6789"


def frame(values: Sequence[object]) -> pd.DataFrame:
    index = pd.Index([f"k{i}" for i in range(len(values))])
    return pd.DataFrame(
        {"s": pd.Series(values, index=index, dtype=object), "n": range(len(values))}
    )


# --- normalize_strings -------------------------------------------------------------------


def test_normalize_defaults() -> None:
    df = frame(["  Ann \t Lee ", "Zo\u0065\u0308", "a\u00a0\u00a0b\nc", "", "   ", 12, "Ok"])
    assert normalize_strings("s")(df)["s"].tolist() == [
        "Ann Lee",
        "Zo\u00eb",  # NFC composes e + diaeresis
        "a b c",
        None,
        None,
        "12",
        "Ok",
    ]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (None, "ann O'NEIL"),
        ("lower", "ann o'neil"),
        ("upper", "ANN O'NEIL"),
        ("title", "Ann O'Neil"),
    ],
)
def test_normalize_case(case: str | None, expected: str) -> None:
    assert normalize_strings("s", case=case)(frame(["ann O'NEIL"]))["s"].tolist() == [expected]


def test_normalize_switches_off() -> None:
    df = frame(["  a  b  ", ""])
    out = normalize_strings("s", trim=False, collapse_spaces=False, empty_as_null=False)(df)
    assert out["s"].tolist() == ["  a  b  ", ""]
    nfkc = normalize_strings("s", unicode_form="NFKC")(frame(["\ufb01ve"]))  # fi ligature
    assert nfkc["s"].tolist() == ["five"]
    raw = normalize_strings("s", unicode_form=None)(frame(["e\u0301"]))
    assert raw["s"].tolist() == ["e\u0301"]


def test_normalize_several_columns_and_nulls() -> None:
    df = pd.DataFrame({"a": [" x ", None], "b": [np.nan, pd.NA], "c": [1, 2]})
    out = normalize_strings(["a", "b"], case="upper")(df)
    assert out["a"].tolist() == ["X", None] and out["b"].tolist() == [None, None]
    assert out["c"].tolist() == [1, 2]


def test_normalize_string_dtype_input() -> None:
    df = pd.DataFrame({"s": pd.Series([" a ", None], dtype="string")})
    assert normalize_strings("s")(df)["s"].tolist() == ["a", None]


def test_repeated_index_labels_keep_rows_apart() -> None:
    df = pd.DataFrame({"s": ["a  b", "c", " d\te "]}, index=[5, 5, 5])
    assert normalize_strings("s")(df)["s"].tolist() == ["a b", "c", "d e"]
    phones = pd.DataFrame({"s": ["555 234 5678", "x", "(555) 234-0000"]}, index=[1, 1, 1])
    assert format_phone("s")(phones)["s"].tolist() == ["+15552345678", None, "+15552340000"]


# --- format_phone ------------------------------------------------------------------------


PHONES = [
    "555.234.5678",
    "+1 (555) 234-5678",
    "15552345678",
    "(555)2345678",
    "12345",
    "555-123-4567",  # exchange starts with 1: not diallable
    "055-234-5678",  # area code starts with 0
    "25552345678",  # 11 digits not starting with 1
    "555 234 5678 x12",
    "1-800-FLOWERS",
    PHI,
    None,
    np.nan,
]


def test_phone_e164() -> None:
    out = format_phone("s", "e164")(frame(PHONES))
    assert out["e164"].tolist() == ["+15552345678"] * 4 + [None] * 9


def test_phone_national() -> None:
    out = format_phone("s", style="national", region="CA")(frame(PHONES))
    assert out["s"].tolist() == ["(555) 234-5678"] * 4 + [None] * 9


def test_phone_numeric_columns() -> None:
    ints = pd.DataFrame({"s": pd.array([5552345678, None, 1], dtype="Int64")})
    assert format_phone("s")(ints)["s"].tolist() == ["+15552345678", None, None]
    floats = pd.DataFrame({"s": [5552345678.0, np.nan, 5552345678.5, 1e20]})
    assert format_phone("s")(floats)["s"].tolist() == ["+15552345678", None, None, None]


# --- format_postal -----------------------------------------------------------------------


def test_postal_us() -> None:
    df = frame(
        [
            "12345",
            "12345-6789",
            "123456789",
            " 12345 ",
            "12345 6789",
            "1234",
            "12345-678",
            "ABCDE",
            None,
        ]
    )
    assert format_postal("s")(df)["s"].tolist() == [
        "12345",
        "12345-6789",
        "12345-6789",
        "12345",
        "12345-6789",
        None,  # text is never padded
        None,
        None,
        None,
    ]


def test_postal_us_integers_get_their_leading_zero_back() -> None:
    df = pd.DataFrame({"s": pd.array([2134, 12345, 123456, -5, None], dtype="Int64")})
    assert format_postal("s")(df)["s"].tolist() == ["02134", "12345", None, None, None]


def test_postal_ca() -> None:
    df = frame(["k1a0b1", "K1A-0B1", "K1A 0B1", "D1A 0B1", "W1A 0B1", "K1A 0O1", "K1A0B", None])
    out = format_postal("s", "pc", country="CA")(df)
    assert out["pc"].tolist() == ["K1A 0B1"] * 3 + [None] * 5


def test_postal_gb() -> None:
    df = frame(
        [
            "sw1a1aa",
            "SW1A 1AA",
            "m1 1ae",
            "B33  8TH",
            "DN55 1PT",
            "gir0aa",
            "W1A0AX",
            "12345",
            "SW1A",
            None,
        ]
    )
    assert format_postal("s", country="GB")(df)["s"].tolist() == [
        "SW1A 1AA",
        "SW1A 1AA",
        "M1 1AE",
        "B33 8TH",
        "DN55 1PT",
        "GIR 0AA",
        "W1A 0AX",
        None,
        None,
        None,
    ]


@pytest.mark.parametrize(
    "fn",
    [
        normalize_strings("s"),
        format_phone("s"),
        format_postal("s"),
        format_postal("s", country="CA"),
        format_postal("s", country="GB"),
    ],
)
def test_every_kind_of_null_stays_null(fn: object) -> None:
    out = fn(frame([None, np.nan, pd.NA, pd.NaT]))  # type: ignore[operator]
    assert out["s"].tolist() == [None] * 4


# --- shared rules ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: normalize_strings("s", case="upper"),
        lambda: format_phone("s", "p"),
        lambda: format_postal("s", "p", country="GB"),
    ],
)
def test_input_untouched_other_columns_and_index_kept(build: object) -> None:
    df = frame([" sw1a 1aa ", "555.234.5678", None])
    before = df.copy(deep=True)
    out = build()(df)  # type: ignore[operator]
    pd.testing.assert_frame_equal(df, before)
    assert out.index.equals(df.index)
    assert out["n"].tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    "fn",
    [normalize_strings("s"), format_phone("s", "p"), format_postal("s", "p", country="CA")],
)
def test_empty_frame(fn: object) -> None:
    df = pd.DataFrame({"id": pd.Series([], dtype="int64"), "s": pd.Series([], dtype=object)})
    out = fn(df)  # type: ignore[operator]
    assert len(out) == 0 and out["id"].dtype == "int64"
    assert set(out.columns) >= {"id", "s"}
    assert all(out[c].dtype == object for c in out.columns if c != "id")


@pytest.mark.parametrize(
    "build",
    [
        lambda: normalize_strings([]),
        lambda: normalize_strings(["a", "a"]),
        lambda: normalize_strings("s", case="camel"),
        lambda: normalize_strings("s", unicode_form="NFX"),
        lambda: normalize_strings("s", trim="yes"),
        lambda: format_phone("s", region="FR"),
        lambda: format_phone("s", style="pretty"),
        lambda: format_phone(""),
        lambda: format_postal("s", country="DE"),
        lambda: format_postal("s", dst=""),
    ],
)
def test_misconfiguration(build: object) -> None:
    with pytest.raises(ValueError):
        build()  # type: ignore[operator]


def test_error_messages_never_quote_row_values() -> None:
    df = frame([PHI])
    for fn in (normalize_strings("ssn"), format_phone("ssn"), format_postal("ssn")):
        with pytest.raises(ValueError) as info:
            fn(df)
        assert "ssn" in str(info.value) and PHI not in str(info.value)
