"""COPY text round trips keep NULL apart from '' and survive escapes (no services)."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pandas as pd

from workers.copyio import read_copy, write_copy

TYPES = {"k": "bigint", "s": "text", "f": "double precision", "i": "integer", "b": "boolean"}


def test_round_trip() -> None:
    frame = pd.DataFrame(
        {
            "k": ["1", "2", "3", "4"],
            "s": ["tab\there", "", None, "back\\slash\nnew\rline"],
            "f": [1.1, np.nan, 0.1 + 0.2, float("inf")],
            "i": pd.array([1, None, 3, -4], dtype="Int64"),
            "b": pd.array([True, None, False, True], dtype="boolean"),
        }
    )
    data = write_copy(frame, list(frame.columns))
    assert b"\\N" in data and b"Infinity" in data
    back = read_copy(data.replace(b"Infinity", b"inf"), list(frame.columns), TYPES)
    assert back["s"].tolist()[:2] == ["tab\there", ""] and pd.isna(back["s"][2])
    assert back["s"][3] == "back\\slash\nnew\rline"
    assert back["f"][2] == 0.1 + 0.2 and pd.isna(back["f"][1])
    assert back["i"].tolist()[0] == 1 and pd.isna(back["i"][1])
    assert back["b"].tolist()[0] is True


def test_empty() -> None:
    assert write_copy(pd.DataFrame({"k": []}), ["k"]) == b""
    empty = read_copy(b"", ["k", "i"], {"k": "bigint", "i": "integer"})
    assert list(empty.columns) == ["k", "i"] and len(empty) == 0


def test_json_values_are_dumped() -> None:
    frame = pd.DataFrame({"k": ["1"], "j": [{"a": [1, "x"]}]})
    assert write_copy(frame, ["k", "j"]) == b'1\t{"a": [1, "x"]}\n'


def test_numbers_typed_by_the_parser_equal_text_then_to_numeric() -> None:
    """Numeric columns are typed by the CSV parser itself: the same values, to the bit, as
    reading them as text and converting them one column at a time."""
    types = {"k": "bigint", "f": "double precision", "s": "text"}
    rows = b"9223372036854775807\t0.30000000000000004\ta\\tb\n-9223372036854775808\t\\N\t\\N\n"
    fast = read_copy(rows, ["k", "f", "s"], types)
    assert fast["k"].dtype == "Int64" and fast["f"].dtype == "Float64"
    assert fast["k"].tolist() == [2**63 - 1, -(2**63)]
    assert fast["f"][0] == 0.1 + 0.2 and pd.isna(fast["f"][1])
    assert fast["s"][0] == "a\tb" and pd.isna(fast["s"][1])
    as_text = read_copy(rows, ["k", "f", "s"], {"k": "bigint", "f": "text", "s": "text"})
    slow = as_text.assign(f=pd.to_numeric(as_text["f"]).astype("Float64"))
    assert slow["k"].tolist() == fast["k"].tolist() and slow["f"][0] == fast["f"][0]


def test_numbers_are_written_as_python_writes_them() -> None:
    frame = pd.DataFrame(
        {
            "k": pd.array([2**63 - 1, None], dtype="Int64"),
            "u": np.array([2**64 - 1, 0], dtype="uint64"),
            "f": [0.1 + 0.2, float("-inf")],
            "g": [-0.0, 1e-07],
        }
    )
    assert write_copy(frame, list(frame.columns)) == (
        b"9223372036854775807\t18446744073709551615\t0.30000000000000004\t-0.0\n"
        b"\\N\t0\t-Infinity\t1e-07\n"
    )


def test_raw_columns_go_back_exactly_as_they_came() -> None:
    """Old values staged beside the new ones are COPY text in and the same text out, whatever
    their type: no unescaping, no number parsing (NaN, a numeric's scale), NULL kept apart."""
    data = b'1\tback\\\\slash\\ttab\t1.5000\t{a,"b c"}\n2\t\\N\tNaN\t\\N\n3\t\t-0\t{}\n'
    types = {"k": "bigint", "s": "text", "n": "numeric(12,4)", "a": "text[]"}
    frame = read_copy(data, ["k", "s", "n", "a"], types, raw=["s", "n", "a"])
    assert frame["s"][0] == "back\\\\slash\\ttab" and frame["s"][1] == "\\N"
    assert frame["s"][2] == "" and frame["n"][0] == "1.5000" and frame["n"][1] == "NaN"
    assert frame["a"][1] == "\\N"
    assert write_copy(frame, ["k", "s", "n", "a"], types, raw=["s", "n", "a"]) == data


def test_numeric_arrives_as_decimal_never_float() -> None:
    """A numeric(38,15) value keeps every digit and its scale; NaN and the infinities are
    Decimal's, NULL is NA: written back, the text is the text read (issue 20, item 1)."""
    data = (
        b"1\t12345678901234567.123456789012345\n2\tNaN\n3\t\\N\n4\t-Infinity\n"
        b"5\t1.500\n6\t0.000000150\n7\t" + b"9" * 1000 + b"\n"
    )
    types = {"k": "bigint", "n": "numeric(38,15)"}
    frame = read_copy(data, ["k", "n"], types)
    assert frame["n"].dtype == object
    assert frame["n"][0] == Decimal("12345678901234567.123456789012345")
    assert frame["n"][1].is_nan() and frame["n"][2] is pd.NA
    assert frame["n"][3] == Decimal("-Infinity") and str(frame["n"][4]) == "1.500"
    written = write_copy(frame, ["k", "n"], types)
    assert written.replace(b"1.50E-7", b"0.000000150") == data


def test_float_nan_is_not_null_and_real_keeps_its_digits() -> None:
    """NaN, -0 and the infinities survive; NULL stays NULL; a ``real`` is written with the
    digits PostgreSQL prints for it, not those of the double nearest it."""
    data = b"1\tNaN\t0.1\n2\t-0\t\\N\n3\t\\N\tNaN\n4\tInfinity\t3.4028235e+38\n"
    types = {"k": "bigint", "d": "double precision", "r": "real"}
    frame = read_copy(data, ["k", "d", "r"], types)
    assert frame["d"].dtype == "Float64" and frame["r"].dtype == "Float32"
    assert frame["d"].isna().tolist() == [False, False, True, False]
    assert frame["r"].isna().tolist() == [False, True, False, False]
    assert np.signbit(frame["d"].to_numpy(dtype="float64", na_value=0.0)[1])
    assert write_copy(frame, ["k", "d", "r"], types) == (
        b"1\tNaN\t0.1\n2\t-0.0\t\\N\n3\t\\N\tNaN\n4\tInfinity\t3.4028235e+38\n"
    )
    # the same chunk without a NaN goes through the parser's own float reading
    fast = read_copy(b"1\t-0\t0.1\n2\t\\N\t\\N\n", ["k", "d", "r"], types)
    assert fast["d"].dtype == "Float64" and fast["d"].isna().tolist() == [False, True]
    assert write_copy(fast, ["k", "d", "r"], types) == b"1\t-0.0\t0.1\n2\t\\N\t\\N\n"


def test_decimal_nan_in_an_object_column_is_nan_not_null() -> None:
    """pandas counts Decimal('NaN') as missing; numeric's NaN must not become NULL."""
    frame = pd.DataFrame(
        {"k": [1, 2, 3], "n": pd.Series([Decimal("NaN"), None, Decimal("2.50")], dtype=object)}
    )
    assert write_copy(frame, ["k", "n"]) == b"1\tNaN\n2\t\\N\n3\t2.50\n"
    late = pd.DataFrame({"k": range(60), "n": [None] * 59 + [Decimal("NaN")]})
    assert write_copy(late, ["k", "n"]).endswith(b"59\tNaN\n")
