"""Backfills that name a library transform with parameters instead of giving code."""

from __future__ import annotations

import pandas as pd
import pytest

from migrations import Backfill
from migrations.errors import SpecError
from migrations.named import steps_of
from migrations.spec import transform_identity
from transforms import standardize_dates


def _dates(**params: object) -> Backfill:
    return Backfill(
        table="patients",
        key="id",
        reads=["dob_text"],
        writes=["dob"],
        transform="standardize_dates",
        params={"src": "dob_text", "dst": "dob", **params},
    )


def test_a_named_transform_runs_and_is_stored_as_data() -> None:
    b = _dates(dayfirst=True)
    assert b.mode == "pandas"
    out = b.callable(pd.DataFrame({"id": [1, 2], "dob_text": ["03/02/1990", "garbage"]}))
    assert out["dob"].tolist() == ["1990-02-03", None]
    stored = b.to_dict()["transform"]
    assert stored["named"] == [
        {"name": "standardize_dates", "params": {"dayfirst": True, "dst": "dob", "src": "dob_text"}}
    ]
    assert steps_of(stored) == b.named


def test_a_pipeline_of_named_steps() -> None:
    b = Backfill(
        table="patients",
        key="id",
        reads=["dob_text", "weight_lb"],
        writes=["dob", "weight_kg"],
        transform=[
            ("standardize_dates", {"src": "dob_text", "dst": "dob"}),
            (
                "convert_units",
                {"src": "weight_lb", "dst": "weight_kg", "unit_from": "lb", "unit_to": "kg"},
            ),
        ],
    )
    frame = pd.DataFrame({"id": [1], "dob_text": ["1990-02-03"], "weight_lb": ["220 lbs"]})
    out = b.callable(frame)
    assert out.loc[0, "dob"] == "1990-02-03" and out.loc[0, "weight_kg"] == pytest.approx(
        99.79, 0.01
    )
    assert " | " in b.to_dict()["transform"]["name"]


def test_the_fingerprint_follows_the_parameters() -> None:
    assert _dates().to_dict()["transform"]["sha256"] == _dates().to_dict()["transform"]["sha256"]
    assert (
        _dates().to_dict()["transform"]["sha256"]
        != _dates(dayfirst=True).to_dict()["transform"]["sha256"]
    )


@pytest.mark.parametrize(
    ("transform", "params", "message"),
    [
        ("no_such_thing", {}, "unknown transform 'no_such_thing'"),
        ("pipeline", {}, "unknown transform 'pipeline'"),
        ("standardize_dates", {"src": "dob_text", "bogus": 1}, "transform standardize_dates"),
        ("standardize_dates", {"src": "dob_text", "formats": {1, 2}}, "must be JSON values"),
        ([("standardize_dates",)], None, "list of (name, {params}) pairs"),
        ([], None, "at least one step"),
    ],
)
def test_bad_named_transforms_are_refused(transform: object, params: object, message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Backfill(
            table="patients",
            key="id",
            reads=["dob_text"],
            writes=["dob"],
            transform=transform,  # type: ignore[arg-type]
            params=params,  # type: ignore[arg-type]
        )


def test_params_without_a_name_are_refused() -> None:
    with pytest.raises(SpecError, match="params go with a named transform"):
        Backfill(table="t", key="id", writes=["x"], transform=lambda df: df, params={"a": 1})


def test_a_factory_closure_edited_is_a_different_transform() -> None:
    """Editing dayfirst=True to False in a user's spec must not pass as the same code."""
    month_first = standardize_dates("dob_text", "dob")
    day_first = standardize_dates("dob_text", "dob", dayfirst=True)
    same = standardize_dates("dob_text", "dob")
    assert transform_identity(month_first)["sha256"] == transform_identity(same)["sha256"]
    assert transform_identity(month_first)["sha256"] != transform_identity(day_first)["sha256"]
