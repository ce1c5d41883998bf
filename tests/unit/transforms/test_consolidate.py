"""choose_survivors and merge_group_values: grouping, rules, NULL keys, filling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from transforms import choose_survivors, merge_group_values

PHI = "SSN 123-45-6789"


def people() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [10, 2, 3, 4, 5, 6, 7],
            "email": ["A@x.org", " a@x.org", "b@x.org", None, "a@X.org ", "", "b@x.org"],
            "name": ["Ann  Lee", "ann lee", "Bo", "Cy", "ANN LEE", "Di", "bo"],
            "created": pd.to_datetime(
                [
                    "2020-01-01",
                    "2019-01-01",
                    "2021-01-01",
                    "2018-01-01",
                    None,
                    "2017-01-01",
                    "2021-01-01",
                ]
            ),
            "tel": [None, "555", None, "111", "777", None, "888"],
            "visits": pd.array([None, 5, None, 1, 7, None, 2], dtype="Int64"),
        },
        index=list("abcdefg"),
    )


def survivors(df: pd.DataFrame, **kwargs: object) -> list[object]:
    return choose_survivors(df, **kwargs)["survivor_key"].tolist()  # type: ignore[arg-type]


def test_shape_of_the_answer() -> None:
    df = people()
    out = choose_survivors(df, ["email"])
    assert out.columns.tolist() == ["key", "survivor_key"]
    assert out.index.equals(df.index)
    assert out["key"].tolist() == df["id"].tolist()
    assert out["survivor_key"].dtype == df["id"].dtype


def test_oldest_by_key_and_by_order_column() -> None:
    df = people()
    # Groups: {10, 2, 5} (trim + casefold), {3, 7}; 4 (NULL) and 6 ("") stand alone.
    assert survivors(df, by="email") == [2, 2, 3, 4, 2, 6, 3]
    # 2019 beats 2020; 5 has no date so ranks last; 3 and 7 tie on date: smaller key wins.
    assert survivors(df, by="email", order_col="created") == [2, 2, 3, 4, 2, 6, 3]


def test_newest() -> None:
    df = people()
    assert survivors(df, by="email", rule="newest") == [10, 10, 7, 4, 10, 6, 7]
    assert survivors(df, by="email", rule="newest", order_col="created") == [10, 10, 3, 4, 10, 6, 3]


def test_most_complete_ties_go_to_the_oldest() -> None:
    df = people()
    # 2 has every cell; 3 and 7: 7 has tel and visits.
    assert survivors(df, by="email", rule="most_complete") == [2, 2, 7, 4, 2, 6, 7]
    twins = pd.DataFrame({"id": [9, 8], "e": ["x", "X"], "t": ["", None]})
    assert survivors(twins, by="e", rule="most_complete") == [8, 8]  # "" is not a value


def test_several_by_columns_and_whitespace() -> None:
    df = people()
    assert survivors(df, by=["email", "name"]) == [2, 2, 3, 4, 2, 6, 3]
    assert survivors(df, by="name") == [2, 2, 3, 4, 2, 6, 3]


def test_time_zone_aware_order_column() -> None:
    when = pd.to_datetime(["2020-01-01", None, "2019-01-01"]).tz_localize("UTC")
    df = pd.DataFrame({"id": [3, 1, 2], "e": ["a", "A", "a "], "ts": when})
    assert survivors(df, by="e", order_col="ts") == [2, 2, 2]
    assert survivors(df, by="e", order_col="ts", rule="newest") == [3, 3, 3]


def test_text_keys() -> None:
    df = pd.DataFrame({"uuid": ["u2", "u1", "u3"], "e": ["x", "X", "y"]})
    out = choose_survivors(df, "e", key="uuid", rule="newest")
    assert out["survivor_key"].tolist() == ["u2", "u2", "u3"]


def test_merge_fills_survivor_from_duplicates_in_rank_order() -> None:
    df = people()
    out = merge_group_values(df, ["email"], ["tel", "visits"], rule="newest", order_col="created")
    # Survivor 10 (newest) lacks tel and visits: next ranked is 2 (2019), then 5 (no date).
    assert out.loc["a", "tel"] == "555" and out.loc["a", "visits"] == 5
    # Survivor 3 is filled from 7; merged-away rows and lone rows are unchanged.
    assert out.loc["c", "tel"] == "888" and out.loc["c", "visits"] == 2
    pd.testing.assert_frame_equal(out.drop(index=["a", "c"]), df.drop(index=["a", "c"]))
    assert out["visits"].dtype == "Int64"


def test_merge_survivor_value_wins_unless_first_non_null() -> None:
    df = pd.DataFrame({"id": [1, 2, 3], "e": ["x", "x", "x"], "tel": ["mine", "b", "c"]})
    kept = merge_group_values(df, "e", "tel", rule="newest")
    assert kept["tel"].tolist() == ["mine", "b", "c"]
    first = merge_group_values(df, "e", "tel", rule="newest", prefer="first_non_null")
    assert first["tel"].tolist() == ["mine", "b", "mine"]


def test_null_by_values_never_match() -> None:
    df = pd.DataFrame({"id": [1, 2, 3], "e": [None, np.nan, pd.NA], "t": ["a", None, "c"]})
    assert survivors(df, by="e") == [1, 2, 3]
    merged = merge_group_values(df, "e", "t")["t"]
    assert merged.isna().tolist() == [False, True, False]
    assert merged.dropna().tolist() == ["a", "c"]


def test_input_untouched() -> None:
    df = people()
    before = df.copy(deep=True)
    choose_survivors(df, "email", rule="most_complete", order_col="created")
    merge_group_values(df, "email", ["tel"], prefer="first_non_null")
    pd.testing.assert_frame_equal(df, before)


def test_empty_frame() -> None:
    df = people().iloc[:0]
    out = choose_survivors(df, "email")
    assert out.columns.tolist() == ["key", "survivor_key"] and len(out) == 0
    merged = merge_group_values(df, "email", ["tel"])
    assert merged.columns.tolist() == df.columns.tolist() and len(merged) == 0
    assert merged.dtypes.equals(df.dtypes)


@pytest.mark.parametrize(
    "call",
    [
        lambda df: choose_survivors(df, []),
        lambda df: choose_survivors(df, "nope"),
        lambda df: choose_survivors(df, "email", key="nope"),
        lambda df: choose_survivors(df, "email", rule="random"),
        lambda df: choose_survivors(df, "email", order_col="nope"),
        lambda df: choose_survivors(df.assign(id=1), "email"),
        lambda df: choose_survivors(df.assign(id=[1, 2, 3, 4, 5, 6, None]), "email"),
        lambda df: merge_group_values(df, "email", ["id"]),
        lambda df: merge_group_values(df, "email", ["nope"]),
        lambda df: merge_group_values(df, "email", ["tel"], prefer="last"),
    ],
)
def test_misconfiguration(call: object) -> None:
    with pytest.raises(ValueError):
        call(people())  # type: ignore[operator]


def test_error_messages_never_quote_row_values() -> None:
    df = people().assign(id=[PHI] * 7)
    with pytest.raises(ValueError) as info:
        choose_survivors(df, "email")
    assert "id" in str(info.value) and PHI not in str(info.value)
