"""COPY text round trips keep NULL apart from '' and survive escapes (no services)."""

from __future__ import annotations

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
