"""computed, lookup, cached_reference, stamp and coalesce_history."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from transforms import (
    cached_reference,
    clear_reference_cache,
    coalesce_history,
    computed,
    lookup,
    stamp,
)

PHI = "SSN 123-45-6789"


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    clear_reference_cache()
    yield
    clear_reference_cache()


def patients() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "weight_kg": [70.0, None, 80.0, 60.0],
            "height_cm": [175.0, 160.0, 0.0, 150.0],
            "sex": ["M", "F", None, "X"],
            "ssn": [PHI, None, None, None],
        },
        index=pd.Index([40, 10, 30, 20], name="id"),
    )


# --- computed ----------------------------------------------------------------------------


def test_computed_bmi_with_null_and_zero_height() -> None:
    fn = computed("bmi", lambda d: (d.weight_kg / (d.height_cm / 100) ** 2).round(2))
    out = fn(patients())
    assert out["bmi"].tolist()[0] == 22.86 and out["bmi"].tolist()[3] == 26.67
    assert np.isnan(out["bmi"].iloc[1]) and np.isnan(out["bmi"].iloc[2])  # NULL, 1/0


def test_computed_accepts_arrays_and_checks_alignment() -> None:
    df = patients()
    assert computed("c", lambda d: np.arange(len(d)))(df)["c"].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="another index"):
        computed("c", lambda d: d.weight_kg.reset_index(drop=True))(df)
    with pytest.raises(ValueError, match="one per row"):
        computed("c", lambda d: np.arange(3))(df)
    with pytest.raises(ValueError, match="one per row"):
        computed("c", lambda d: 5)(df)


def test_computed_cannot_change_the_callers_frame() -> None:
    df = patients()
    before = df.copy(deep=True)

    def sneaky(d: pd.DataFrame) -> pd.Series:
        d["weight_kg"] = 0.0
        return d["height_cm"]

    computed("c", sneaky)(df)
    pd.testing.assert_frame_equal(df, before)


def test_computed_hides_the_exception_message() -> None:
    def boom(d: pd.DataFrame) -> pd.Series:
        raise KeyError(f"bad value {d['ssn'].iloc[0]}")

    with pytest.raises(ValueError) as info:
        computed("c", boom)(patients())
    assert "KeyError" in str(info.value) and PHI not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


# --- lookup ------------------------------------------------------------------------------


def test_lookup_maps_defaults_and_keeps_nulls() -> None:
    fn = lookup("sex", "sex_label", {"M": "male", "F": "female", None: "never"}, default="unknown")
    out = fn(patients())
    assert out["sex_label"].tolist() == ["male", "female", None, "unknown"]
    assert out["sex_label"].dtype == object


def test_lookup_matches_exactly_and_copies_the_mapping() -> None:
    mapping = {1: "one", 2: "two"}
    fn = lookup("c", "label", mapping, version="v1")
    mapping[3] = "three"
    df = pd.DataFrame({"c": pd.array([1, 2, 3, None], dtype="Int64")})
    assert fn(df)["label"].tolist() == ["one", "two", None, None]
    text = pd.DataFrame({"c": ["1", 1]}, dtype=object)
    assert fn(text)["label"].tolist() == [None, "one"]
    assert fn.reference_version == "v1"  # type: ignore[attr-defined]


def test_lookup_unhashable_cells_are_null_others_still_map() -> None:
    df = pd.DataFrame({"c": pd.Series([[1], {"a": 1}, 1], dtype=object)})
    assert lookup("c", "l", {1: "one"}, default="?")(df)["l"].tolist() == [None, None, "one"]


def test_lookup_value_none_means_null() -> None:
    df = pd.DataFrame({"c": ["a", "b"]})
    assert lookup("c", "l", {"a": None}, default="d")(df)["l"].tolist() == [None, "d"]


# --- cached_reference --------------------------------------------------------------------


def test_cached_reference_loads_once_per_version() -> None:
    calls: list[str] = []

    def loader(tag: str) -> dict[str, str]:
        calls.append(tag)
        return {"M": tag}

    first = cached_reference("sex", "v1", lambda: loader("a"))
    again = cached_reference("sex", "v1", lambda: loader("b"))
    assert first is again and first["M"] == "a" and calls == ["a"]
    newer = cached_reference("sex", "v2", lambda: loader("c"))
    assert newer["M"] == "c" and calls == ["a", "c"]
    other = cached_reference("site", "v1", lambda: loader("d"))
    assert other["M"] == "d" and calls == ["a", "c", "d"]
    with pytest.raises(TypeError):
        newer["M"] = "changed"  # type: ignore[index]


def test_cached_reference_misconfiguration() -> None:
    with pytest.raises(ValueError):
        cached_reference("", "v1", dict)
    with pytest.raises(ValueError):
        cached_reference("x", "", dict)
    with pytest.raises(ValueError):
        cached_reference("x", "v1", "not callable")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        cached_reference("x", "v1", lambda: [1, 2])  # type: ignore[arg-type, return-value]


# --- stamp -------------------------------------------------------------------------------


def test_stamp_constants_and_now() -> None:
    before = datetime.now(UTC)
    out = stamp(now=True, migration="2024_06_01", batch=7, note=None)(patients())
    after = datetime.now(UTC)
    assert out["migration"].tolist() == ["2024_06_01"] * 4
    assert out["batch"].tolist() == [7] * 4
    assert out["note"].tolist() == [None] * 4
    stamps = set(out["stamped_at"])
    assert len(stamps) == 1
    value = stamps.pop()
    assert value.endswith("+00:00") and before <= datetime.fromisoformat(value) <= after


def test_stamp_named_now_column() -> None:
    out = stamp(now="migrated_at")(patients())
    assert "migrated_at" in out.columns and "stamped_at" not in out.columns


# --- coalesce_history --------------------------------------------------------------------


def test_coalesce_first_non_null_in_order() -> None:
    df = pd.DataFrame(
        {
            "v3": [None, "x", None, np.nan],
            "v2": ["y", "z", None, ""],
            "v1": ["w", "w", None, "w"],
        }
    )
    out = coalesce_history("dob", ["v3", "v2", "v1"])(df)
    assert out["dob"].tolist() == ["y", "x", None, ""]  # "" is a value


def test_coalesce_keeps_a_shared_numeric_dtype_and_mixes_to_object() -> None:
    df = pd.DataFrame({"a": [1.0, None, None], "b": [9.0, 2.0, None], "s": ["t", "u", None]})
    same = coalesce_history("c", ["a", "b"])(df)["c"]
    assert same.dtype == "float64" and same.tolist()[:2] == [1.0, 2.0] and np.isnan(same.iloc[2])
    mixed = coalesce_history("c", ["a", "s"])(df)["c"]
    assert mixed.dtype == object and mixed.tolist() == [1.0, "u", None]


def test_coalesce_can_fill_its_own_gaps() -> None:
    df = pd.DataFrame({"dob": ["a", None], "old": ["b", "c"]})
    assert coalesce_history("dob", ["dob", "old"])(df)["dob"].tolist() == ["a", "c"]


def test_every_kind_of_null_stays_null() -> None:
    df = pd.DataFrame({"a": pd.Series([None, np.nan, pd.NA], dtype=object), "b": [None] * 3})
    assert lookup("a", "l", {"x": 1}, default=0)(df)["l"].tolist() == [None] * 3
    assert coalesce_history("c", ["a", "b"])(df)["c"].tolist() == [None] * 3
    nums = pd.DataFrame({"w": pd.array([None, 2.0, None], dtype="Float64")})
    out = computed("c", lambda d: d.w * 2)(nums)["c"]
    assert out.isna().tolist() == [True, False, True]


# --- shared rules ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn",
    [
        computed("bmi", lambda d: d.weight_kg / (d.height_cm / 100) ** 2),
        lookup("sex", "label", {"M": "male"}),
        stamp(now=True, v="1"),
        coalesce_history("w", ["weight_kg", "height_cm"]),
    ],
)
def test_input_untouched_other_columns_and_index_kept(fn: object) -> None:
    df = patients()
    before = df.copy(deep=True)
    out = fn(df)  # type: ignore[operator]
    pd.testing.assert_frame_equal(df, before)
    assert out.index.equals(df.index)
    pd.testing.assert_frame_equal(out[before.columns], before)


@pytest.mark.parametrize(
    "fn",
    [
        computed("bmi", lambda d: d.weight_kg / (d.height_cm / 100) ** 2),
        lookup("sex", "label", {"M": "male"}),
        stamp(v="1"),
        coalesce_history("w", ["weight_kg", "height_cm"]),
    ],
)
def test_empty_frame(fn: object) -> None:
    df = patients().iloc[:0]
    out = fn(df)  # type: ignore[operator]
    assert len(out) == 0
    assert out.columns.tolist()[:4] == ["weight_kg", "height_cm", "sex", "ssn"]
    assert out["weight_kg"].dtype == "float64"


@pytest.mark.parametrize(
    "build",
    [
        lambda: computed("", lambda d: d),
        lambda: computed("x", "not callable"),
        lambda: lookup("a", "b", [("M", "male")]),
        lambda: lookup("a", "", {}),
        lambda: lookup("a", "b", {}, version=""),
        lambda: stamp(),
        lambda: stamp(v=[1, 2]),
        lambda: stamp(now=1),
        lambda: stamp(now="v", v="1"),
        lambda: coalesce_history("x", []),
        lambda: coalesce_history("x", ["a", "a"]),
        lambda: coalesce_history("", ["a"]),
    ],
)
def test_misconfiguration(build: object) -> None:
    with pytest.raises(ValueError):
        build()  # type: ignore[operator]


def test_error_messages_never_quote_row_values() -> None:
    df = patients()
    for fn in (
        lookup("nope", "x", {PHI: 1}),
        coalesce_history("x", ["ssn", "nope"]),
        computed("x", lambda d: d["nope"]),
    ):
        with pytest.raises(ValueError) as info:
            fn(df)
        assert PHI not in str(info.value) and "123-45" not in str(info.value)
