"""Backfill / ValidationRule checks, identifiers and reference loading (no services)."""

from __future__ import annotations

from pathlib import Path

import pytest

from migrations import Backfill, ValidationRule, load_backfill, normalize_reference
from migrations.errors import BadInput, IdentifierError, SpecError
from migrations.identifiers import QualifiedName, check_name
from migrations.spec import transform_identity


def _fn(df):  # type: ignore[no-untyped-def]
    return df


OK = {"table": "clinic.patients", "key": "id", "writes": ["dob"], "sql": {"dob": "1"}}


def test_valid_backfill_to_dict() -> None:
    b = Backfill(**OK, reads=["dob_text"])  # type: ignore[arg-type]
    d = b.to_dict()
    assert d["mode"] == "sql" and d["writes"] == ["dob"] and d["reads"] == ["dob_text"]
    assert Backfill(table="t", key="id", writes=["x"], transform=_fn).mode == "pandas"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"writes": []}, "at least one"),
        ({"writes": ["dob", "dob"], "sql": {"dob": "1"}}, "twice"),
        ({"key": "dob"}, "key column cannot"),
        ({"sql": None}, "exactly one"),
        ({"transform": _fn}, "exactly one"),
        ({"sql": {"other": "1"}}, "one expression"),
        ({"sql": {"dob": " "}}, "non-empty"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"rules": [ValidationRule(field="x", type="format", condition="a")]}, "not a written"),
    ],
)
def test_bad_backfills(changes: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        Backfill(**{**OK, **changes})


@pytest.mark.parametrize("name", ["a; drop", "1x", "x y", 'x"', "", "a-b", "é"])
def test_identifiers_refused(name: str) -> None:
    with pytest.raises(IdentifierError):
        check_name(name)
    with pytest.raises(IdentifierError):
        Backfill(**{**OK, "table": name})


def test_qualified_names() -> None:
    assert QualifiedName.parse("a.b").parts == ("a", "b")
    assert QualifiedName.parse("b").parts == ("b",)
    with pytest.raises(IdentifierError):
        QualifiedName.parse("a.b.c")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"type": "regex"}, "rule type"),
        ({"severity": "fatal"}, "severity"),
        ({"action": "drop"}, "action"),
        ({"condition": ""}, "condition"),
        ({"type": "range", "condition": "5"}, "lo..hi"),
        ({"type": "reference", "condition": "t"}, "schema"),
        ({"action": "transform"}, "fix"),
    ],
)
def test_bad_rules(kwargs: dict, message: str) -> None:
    base = {"field": "dob", "type": "format", "condition": "x"}
    with pytest.raises(SpecError, match=message):
        ValidationRule(**{**base, **kwargs})


def test_rule_round_trip() -> None:
    rule = ValidationRule(
        field="dob",
        type="range",
        condition="1900-01-01..today",
        error_message="m",
        severity="warning",
        action="skip",
    )
    assert ValidationRule.from_dict(rule.to_dict()) == rule


def test_load_by_module_and_file(tmp_path: Path) -> None:
    path = tmp_path / "spec_mod.py"
    path.write_text(
        "from migrations import Backfill\n"
        "b = Backfill(table='t', key='id', writes=['x'], sql={'x': '1'})\nn = 3\n"
    )
    ref = normalize_reference(f"{path}:b")
    assert ref == f"{path.resolve()}:b"
    assert load_backfill(ref).table == "t"
    assert load_backfill("coordinator.demo_backfills:weights_kg").key == "id"
    with pytest.raises(SpecError, match="not a Backfill"):
        load_backfill(f"{path}:n")
    with pytest.raises(BadInput, match="no attribute"):
        load_backfill(f"{path}:zzz")
    with pytest.raises(BadInput, match="cannot import"):
        load_backfill("no.such.module:x")
    with pytest.raises(BadInput, match="must look like"):
        load_backfill("nocolon")


def test_transform_identity_tracks_code() -> None:
    def one(df):  # type: ignore[no-untyped-def]
        return df

    def two(df):  # type: ignore[no-untyped-def]
        return df.copy()

    assert transform_identity(one)["sha256"] != transform_identity(two)["sha256"]
    assert transform_identity(one) == transform_identity(one)
