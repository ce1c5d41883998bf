"""What an expression calls, and how a Backfill names the volatile functions it may call."""

from __future__ import annotations

import pytest

from migrations import Backfill
from migrations.errors import SpecError
from migrations.identifiers import called_functions


def test_every_function_and_operator_called_is_found() -> None:
    found = called_functions(
        "lower(a) || 'x' ~ 'y' AND pg_catalog.now() > b AND x = ANY(arr) AND app.f(a) #+# 1"
    )
    assert {("pg_catalog", "now"), (None, "lower"), ("app", "f"), (None, "#+#")} <= found
    assert {(None, "||"), (None, "~"), (None, "="), (None, ">")} <= found


@pytest.mark.parametrize("entry", ["x; drop table t", "a.b.c", "", "1abc"])
def test_an_allow_functions_entry_must_be_a_function_name(entry: str) -> None:
    with pytest.raises(SpecError, match="allow_functions entry"):
        Backfill(table="t", key="id", writes=["a"], sql={"a": "1"}, allow_functions=[entry])


def test_allow_functions_is_a_list_of_names() -> None:
    with pytest.raises(SpecError, match="list of function names"):
        Backfill(table="t", key="id", writes=["a"], sql={"a": "1"}, allow_functions="nextval")
    b = Backfill(
        table="t", key="id", writes=["a"], sql={"a": "1"}, allow_functions=["nextval", "app.f"]
    )
    assert b.to_dict()["allow_functions"] == ["nextval", "app.f"]
