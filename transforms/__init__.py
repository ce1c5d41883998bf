"""Pure pandas transformations: factories returning fn(df) -> df, no I/O.

Every factory checks its configuration when called (``ValueError``, with a
message that names columns and parameters, never a row value) and returns a
vectorized ``fn(df)`` that leaves its input alone, keeps the other columns and
the index, turns garbage into NULL and keeps NULL as NULL. Text results are
object dtype holding ``str`` or ``None``.

>>> import pandas as pd
>>> fix = pipeline(
...     standardize_dates("dob_text", "dob", dayfirst=True),
...     convert_units("weight_lb", "weight_kg", unit_from="lb", unit_to="kg", decimals=1),
...     select_output("id", ["dob", "weight_kg"]),
... )
>>> df = pd.DataFrame({"id": [1], "dob_text": ["3 Feb 1990"], "weight_lb": ["154 lbs"]})
>>> fix(df).to_dict("records")
[{'id': 1, 'dob': '1990-02-03', 'weight_kg': 69.9}]
"""

from __future__ import annotations

from transforms.compose import pipeline, select_output
from transforms.consolidate import choose_survivors, merge_group_values
from transforms.dates import standardize_dates
from transforms.enrich import (
    cached_reference,
    clear_reference_cache,
    coalesce_history,
    computed,
    lookup,
    stamp,
)
from transforms.jsonshape import restructure_json
from transforms.numbers import convert_units, round_numeric
from transforms.strings import format_phone, format_postal, normalize_strings

__all__ = [
    "cached_reference",
    "choose_survivors",
    "clear_reference_cache",
    "coalesce_history",
    "computed",
    "convert_units",
    "format_phone",
    "format_postal",
    "lookup",
    "merge_group_values",
    "normalize_strings",
    "pipeline",
    "restructure_json",
    "round_numeric",
    "select_output",
    "stamp",
    "standardize_dates",
]
