"""restructure_json: rename, move, drop, defaults; invalid JSON and conflicts become NULL."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest

from transforms import restructure_json

PHI = "SSN 123-45-6789"


def frame(values: Sequence[object]) -> pd.DataFrame:
    index = pd.Index(range(100, 100 - len(values), -1))
    return pd.DataFrame(
        {"doc": pd.Series(values, index=index, dtype=object), "n": range(len(values))}
    )


def test_all_steps_in_order() -> None:
    doc = '{"tel":"555","name":"Ann","contact":{"email":"a@x"},"old":1}'
    fn = restructure_json(
        "doc",
        "out",
        rename={"name": "full_name"},
        move={"tel": "contact.phone"},
        drop=["contact.email", "old"],
        defaults={"contact.country": "US", "v": 2},
    )
    assert fn(frame([doc]))["out"].tolist() == [
        '{"full_name":"Ann","contact":{"phone":"555","country":"US"},"v":2}'
    ]


def test_rename_keeps_position_and_move_creates_objects() -> None:
    fn = restructure_json("doc", rename={"b": "B"}, move={"a": "x.y.z"})
    assert fn(frame(['{"a":1,"b":2,"c":3}']))["doc"].tolist() == ['{"B":2,"c":3,"x":{"y":{"z":1}}}']


def test_missing_paths_are_skipped() -> None:
    fn = restructure_json("doc", rename={"q": "Q"}, move={"p.q": "r"}, drop=["s.t"])
    assert fn(frame(['{"a":1}']))["doc"].tolist() == ['{"a":1}']


def test_defaults_fill_missing_but_keep_explicit_null() -> None:
    fn = restructure_json("doc", defaults={"a": 0, "tags": []})
    out = fn(frame(['{"a":null}', "{}"]))["doc"].tolist()
    assert out == ['{"a":null,"tags":[]}', '{"a":0,"tags":[]}']


def test_dicts_are_read_and_never_modified() -> None:
    doc = {"tel": "555", "contact": {"email": "a@x"}}
    df = frame([doc])
    before = json.dumps(doc)
    out = restructure_json("doc", move={"tel": "contact.phone"}, drop=["contact.email"])(df)
    assert out["doc"].tolist() == ['{"contact":{"phone":"555"}}']
    assert json.dumps(doc) == before
    assert df["doc"].iloc[0] is doc


def test_invalid_non_object_and_null_values_are_null() -> None:
    values = [
        "not json",
        "[1,2]",
        "3",
        '"text"',
        '{"a": NaN}',
        '{"a": Infinity}',
        "",
        5,
        None,
        np.nan,
        pd.NA,
    ]
    out = restructure_json("doc", defaults={"v": 1})(frame(values))
    assert out["doc"].tolist() == [None] * len(values)


def test_unserializable_dict_is_null() -> None:
    out = restructure_json("doc")(frame([{"a": {1, 2}}, {"a": float("nan")}]))
    assert out["doc"].tolist() == [None, None]


def test_conflicts_make_the_row_null_not_lossy() -> None:
    fn = restructure_json("doc", rename={"a": "b"})
    assert fn(frame(['{"a":1,"b":2}', '{"a":1}']))["doc"].tolist() == [None, '{"b":1}']
    move = restructure_json("doc", move={"a": "c.d"})
    rows = ['{"a":1,"c":"text"}', '{"a":1,"c":{"d":0}}', '{"a":1,"c":{}}']
    assert move(frame(rows))["doc"].tolist() == [None, None, '{"c":{"d":1}}']
    default = restructure_json("doc", defaults={"c.d": 1})
    assert default(frame(['{"c":5}']))["doc"].tolist() == [None]


def test_output_is_compact_and_keeps_non_ascii() -> None:
    out = restructure_json("doc")(frame(['{ "name" : "Zoë",  "n" : [1, 2] }']))
    assert out["doc"].tolist() == ['{"name":"Zoë","n":[1,2]}']


def test_input_untouched_other_columns_and_index_kept() -> None:
    df = frame(['{"a":1}', None, "bad"])
    before = df.copy(deep=True)
    out = restructure_json("doc", "new", rename={"a": "b"})(df)
    pd.testing.assert_frame_equal(df, before)
    assert out.index.equals(df.index)
    pd.testing.assert_frame_equal(out[["doc", "n"]], before)
    assert out["new"].tolist() == ['{"b":1}', None, None]


def test_empty_frame() -> None:
    df = pd.DataFrame({"id": pd.Series([], dtype="int64"), "doc": pd.Series([], dtype=object)})
    out = restructure_json("doc", defaults={"v": 1})(df)
    assert out.columns.tolist() == ["id", "doc"] and len(out) == 0
    assert out["id"].dtype == "int64" and out["doc"].dtype == object


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rename": {"a": ""}},
        {"rename": {"a": "x", "b": "x"}},
        {"rename": ["a"]},
        {"move": {"a": "a.b"}},
        {"move": {"a..b": "c"}},
        {"move": {"a": ""}},
        {"drop": "a"},
        {"drop": ["a."]},
        {"defaults": {"a": object()}},
        {"defaults": {"a": float("nan")}},
    ],
)
def test_misconfiguration(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        restructure_json("doc", **kwargs)  # type: ignore[arg-type]


def test_error_messages_never_quote_row_values() -> None:
    with pytest.raises(ValueError) as info:
        restructure_json("profile")(frame([json.dumps({"ssn": PHI})]))
    assert "profile" in str(info.value) and PHI not in str(info.value)
