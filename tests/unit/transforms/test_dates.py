"""standardize_dates: mixed formats, day/month order, offsets and time zones, NULLs."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest

from transforms import standardize_dates

PHI = "SSN 123-45-6789"


def frame(values: Sequence[object]) -> pd.DataFrame:
    index = pd.Index([f"r{i}" for i in range(len(values))], name="rid")
    return pd.DataFrame(
        {"d": pd.Series(values, index=index, dtype=object), "keep": range(len(values))}
    )


@pytest.mark.parametrize(
    "text",
    [
        "1990-02-03",
        "1990/02/03",
        "1990.02.03",
        "19900203",
        "3 Feb 1990",
        "3 February 1990",
        "February 3, 1990",
        "Feb 3 1990",
        "february 3rd, 1990",
        "  1990-02-03  ",
        "1990-02-03T10:00:00",
        "1990-02-03 10:00",
        "1990-02-03T10:00:00.250",
        "1990-02-03T10:00:00+02:00",
        "1990-02-03T10:00:00Z",
    ],
)
def test_each_default_format(text: str) -> None:
    out = standardize_dates("d", "dob")(frame([text]))
    assert out["dob"].tolist() == ["1990-02-03"]


def test_slash_dates_follow_dayfirst() -> None:
    df = frame(["03/02/1990", "03-02-1990", "03.02.1990", "13/02/1990"])
    assert standardize_dates("d")(df)["d"].tolist() == [
        "1990-03-02",
        "1990-03-02",
        "1990-03-02",
        None,  # month 13
    ]
    assert standardize_dates("d", dayfirst=True)(df)["d"].tolist() == [
        "1990-02-03",
        "1990-02-03",
        "1990-02-03",
        "1990-02-13",
    ]


def test_garbage_impossible_and_two_digit_years_are_null() -> None:
    df = frame(
        ["garbage", "31/02/1990", "1990-13-01", "1990-02", "03/02/90", "", "   ", PHI, "1990023"]
    )
    assert standardize_dates("d")(df)["d"].tolist() == [None] * 9


def test_nulls_stay_null() -> None:
    out = standardize_dates("d")(frame([None, np.nan, pd.NA, pd.NaT, "1990-02-03"]))
    assert out["d"].tolist() == [None, None, None, None, "1990-02-03"]


def test_offsets_keep_the_written_date_without_tz() -> None:
    df = frame(["1990-02-03T23:30:00-05:00", "1990-02-03T00:30:00+09:00"])
    assert standardize_dates("d")(df)["d"].tolist() == ["1990-02-03", "1990-02-03"]


def test_tz_converts_only_values_with_an_offset() -> None:
    df = frame(["1990-02-03T23:30:00-05:00", "1990-02-03T00:30:00+0900", "1990-02-03T23:30:00"])
    assert standardize_dates("d", tz="UTC")(df)["d"].tolist() == [
        "1990-02-04",
        "1990-02-02",
        "1990-02-03",
    ]
    out = standardize_dates("d", tz="Europe/Paris", output="datetime")(df)
    assert out["d"].tolist() == [
        pd.Timestamp("1990-02-04 05:30:00"),
        pd.Timestamp("1990-02-02 16:30:00"),
        pd.Timestamp("1990-02-03 23:30:00"),
    ]


def test_impossible_offset_is_null() -> None:
    out = standardize_dates("d", tz="UTC")(frame(["1990-02-03T10:00:00+25:00"]))
    assert out["d"].tolist() == [None]


def test_datetime_output_dtype_and_values() -> None:
    out = standardize_dates("d", "ts", output="datetime")(frame(["1990-02-03T10:15:00", "x"]))
    assert out["ts"].dtype == "datetime64[us]"
    assert out["ts"].iloc[0] == pd.Timestamp("1990-02-03 10:15:00")
    assert pd.isna(out["ts"].iloc[1])


def test_explicit_formats_are_the_only_ones_tried_in_order() -> None:
    df = frame(["02/03/1990", "1990-02-03", "03.02.90", "030290", "3290", "3 Feb 90"])
    out = standardize_dates("d", formats=["%d/%m/%Y", "%d.%m.%y", "%d%m%y", "%d %b %y"])(df)
    assert out["d"].tolist() == ["1990-03-02", None, "1990-02-03", "1990-02-03", None, "1990-02-03"]


def test_datetime_and_date_objects() -> None:
    df = frame([dt.date(1990, 2, 3), dt.datetime(1990, 2, 3, 22, 0), pd.Timestamp("1990-02-03")])
    assert standardize_dates("d")(df)["d"].tolist() == ["1990-02-03"] * 3


def test_datetime_columns_pass_through_and_aware_ones_convert() -> None:
    naive = pd.DataFrame({"d": pd.to_datetime(["1990-02-03 10:00", None])})
    assert standardize_dates("d")(naive)["d"].tolist() == ["1990-02-03", None]
    aware = pd.DataFrame({"d": pd.to_datetime(["1990-02-03 23:00"]).tz_localize("UTC")})
    assert standardize_dates("d", tz="Asia/Tokyo")(aware)["d"].tolist() == ["1990-02-04"]
    assert standardize_dates("d")(aware)["d"].tolist() == ["1990-02-03"]


def test_input_untouched_other_columns_and_index_kept() -> None:
    df = frame(["03/02/1990", None, "junk"])
    before = df.copy(deep=True)
    out = standardize_dates("d", "dob")(df)
    pd.testing.assert_frame_equal(df, before)
    assert out.index.equals(df.index)
    assert out.columns.tolist() == ["d", "keep", "dob"]
    pd.testing.assert_frame_equal(out[["d", "keep"]], before)
    assert out["dob"].dtype == object


def test_repeated_index_labels_keep_rows_apart() -> None:
    df = pd.DataFrame({"d": ["3 Feb, 1990", "1990-02-04T01:00:00+02:00", "x"]}, index=[7, 7, 7])
    out = standardize_dates("d", tz="UTC")(df)
    assert out["d"].tolist() == ["1990-02-03", "1990-02-03", None]
    assert out.index.tolist() == [7, 7, 7]


def test_string_dtype_input() -> None:
    df = pd.DataFrame({"d": pd.Series(["1990-02-03", None], dtype="string")})
    assert standardize_dates("d")(df)["d"].tolist() == ["1990-02-03", None]


def test_empty_frame_keeps_columns_and_dtypes() -> None:
    df = pd.DataFrame({"id": pd.Series([], dtype="int64"), "d": pd.Series([], dtype=object)})
    out = standardize_dates("d", "dob")(df)
    assert out.columns.tolist() == ["id", "d", "dob"]
    assert len(out) == 0 and out["id"].dtype == "int64" and out["dob"].dtype == object
    ts = standardize_dates("d", "ts", output="datetime")(df)
    assert ts["ts"].dtype == "datetime64[us]"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"output": "timestamp"},
        {"tz": "Mars/Olympus"},
        {"tz": ""},
        {"formats": []},
        {"formats": "%Y-%m-%d"},
        {"formats": ["YYYY-MM-DD"]},
        {"formats": ["%Y-%m-%dT%H:%M:%S%z"]},
        {"dayfirst": "yes"},
    ],
)
def test_misconfiguration_raises_value_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        standardize_dates("d", **kwargs)  # type: ignore[arg-type]


def test_bad_names_raise() -> None:
    with pytest.raises(ValueError):
        standardize_dates("")
    with pytest.raises(ValueError):
        standardize_dates("d", dst="")


def test_unknown_column_message_has_no_row_value() -> None:
    fn = standardize_dates("birth_date")
    with pytest.raises(ValueError) as info:
        fn(frame([PHI]))
    assert "birth_date" in str(info.value)
    assert PHI not in str(info.value) and "123-45" not in str(info.value)
