"""Data consolidation, the pure part: which duplicate survives, what it inherits.

Why pure functions over a whole frame (not per-chunk transforms): a survivor
can only be chosen when every row of its natural-key group is in hand. The
engine, not this package, plans chunks by group (all rows of a group in one
chunk), writes the survivors' merged values, repoints child tables' foreign
keys from merged-away keys to ``survivor_key`` and retires the merged-away
rows. This module only decides; it never touches a database.

Grouping: the ``by`` columns are compared after trimming, collapsing inner
whitespace and ``casefold`` (``" ANN  Lee"`` groups with ``"ann lee"``). A row
with a NULL or empty ``by`` value matches no other row (as NULL never equals
NULL in SQL): it is its own survivor.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from transforms._common import as_text, check_choice, check_name, check_names, require_columns

RULES = ("oldest", "newest", "most_complete")
PREFER = ("survivor", "first_non_null")


def choose_survivors(
    df: pd.DataFrame,
    by: str | Iterable[str],
    *,
    key: str = "id",
    rule: str = "oldest",
    order_col: str | None = None,
) -> pd.DataFrame:
    """For every row, the key of the row its natural-key group keeps.

    Returns a frame on ``df``'s index with columns ``key`` and ``survivor_key``
    (equal for survivors and for rows that have no duplicate).

    ``rule``: ``"oldest"`` (smallest ``order_col``), ``"newest"`` (largest),
    ``"most_complete"`` (most non-NULL, non-empty cells; ties go to the
    oldest). NULL ``order_col`` values rank last; remaining ties go to the
    smallest key. Without ``order_col`` the key is the age (``"newest"`` is the
    largest key), which suits increasing ids. ``key`` must be unique, not NULL.

    >>> df = pd.DataFrame({"id": [1, 2, 3], "email": ["A@x.org", " a@x.org", "b@x.org"]})
    >>> choose_survivors(df, ["email"])["survivor_key"].tolist()
    [1, 1, 3]
    """
    by_cols, order = _check(df, by, key, rule, order_col)
    groups = group_ids(df, by_cols)
    ranked = _ranking(df, key, rule, order)
    keys = df[key].to_numpy()
    ranked_groups = groups[ranked]
    first = ~pd.Series(ranked_groups).duplicated().to_numpy()
    survivor_of_group = np.empty(int(groups.max()) + 1 if len(groups) else 0, dtype=object)
    survivor_of_group[ranked_groups[first]] = keys[ranked][first]
    survivors = pd.Series(survivor_of_group[groups], index=df.index, dtype=object)
    return pd.DataFrame(
        {"key": df[key], "survivor_key": survivors.astype(df[key].dtype)}, index=df.index
    )


def merge_group_values(
    df: pd.DataFrame,
    by: str | Iterable[str],
    columns: str | Iterable[str],
    *,
    key: str = "id",
    rule: str = "oldest",
    order_col: str | None = None,
    prefer: str = "survivor",
) -> pd.DataFrame:
    """A copy of ``df`` whose survivors' ``columns`` are filled from their duplicates.

    Why: the merged-away rows often hold what the survivor lacks (the newest
    record has the phone, the oldest the birth date); consolidation keeps it.

    ``prefer="survivor"``: the survivor's own value wins; a NULL is filled with
    the first non-NULL value of the other rows in survivor ranking order (see
    ``choose_survivors``; ``rule``, ``order_col`` and ``key`` mean the same).
    ``prefer="first_non_null"``: the first non-NULL value in ``df``'s row order
    (sort ``df`` first, e.g. by entry date), even over the survivor's own.
    Rows that are not survivors are returned unchanged, as are all other
    columns; empty strings count as values (clean them to NULL first if not).

    >>> df = pd.DataFrame({"id": [1, 2], "email": ["a@x", "A@X"], "tel": [None, "555"]})
    >>> merge_group_values(df, ["email"], ["tel"])["tel"].tolist()
    ['555', '555']
    """
    by_cols, order = _check(df, by, key, rule, order_col)
    check_choice(prefer, PREFER, "prefer")
    targets = check_names(columns, "columns")
    require_columns(df, targets)
    if key in targets:
        raise ValueError("columns cannot include the key column")
    groups = group_ids(df, by_cols)
    survivors = choose_survivors(df, by_cols, key=key, rule=rule, order_col=order)
    is_survivor = (survivors["key"] == survivors["survivor_key"]).to_numpy(dtype=bool)
    # "first_non_null" ranks by the frame's own row order.
    ranked = _ranking(df, key, rule, order) if prefer == "survivor" else np.arange(len(df))
    back = np.empty_like(ranked)
    back[ranked] = np.arange(len(ranked))
    picked = (
        df[list(targets)]
        .iloc[ranked]
        .reset_index(drop=True)
        .groupby(groups[ranked], sort=False)
        .transform("first")
        .iloc[back]
    )
    filled = {c: df[c].where(~is_survivor, picked[c].array) for c in targets}
    return df.assign(**filled)


def group_ids(df: pd.DataFrame, by: tuple[str, ...]) -> np.ndarray[Any, np.dtype[np.int64]]:
    """A group number per row (0..n-1); rows with a NULL ``by`` value alone in theirs."""
    norm = pd.DataFrame({c: _normalized(df[c]) for c in by}, index=df.index)
    ids = (
        norm.groupby(list(by), sort=False, dropna=True)
        .ngroup()
        .to_numpy(dtype="float64", copy=True)
    )
    alone = np.isnan(ids)
    start = int(np.nanmax(ids)) + 1 if (~alone).any() else 0
    ids[alone] = start + np.arange(int(alone.sum()))
    return ids.astype(np.int64)


def _normalized(values: pd.Series[Any]) -> pd.Series[Any]:
    text = as_text(values).str.replace(r"\s+", " ", regex=True).str.strip().str.casefold()
    return text.where(text != "")


def _ranking(
    df: pd.DataFrame, key: str, rule: str, order_col: str | None
) -> np.ndarray[Any, np.dtype[np.intp]]:
    """Row positions, best first: a group's survivor is its first row in this order."""
    sort = pd.DataFrame({"_key": df[key].array})
    columns: list[str] = []
    ascending: list[bool] = []
    if rule == "most_complete":
        sort["_filled"] = _filled_cells(df).to_numpy()
        columns.append("_filled")
        ascending.append(False)
    if order_col is not None:
        sort["_order"] = df[order_col].array
        columns.append("_order")
        ascending.append(rule != "newest")
    columns.append("_key")
    ascending.append(rule != "newest" or order_col is not None)
    try:
        ordered = sort.sort_values(columns, ascending=ascending, na_position="last", kind="stable")
    except TypeError:
        raise ValueError("key and order_col values must be mutually comparable") from None
    return ordered.index.to_numpy(dtype=np.intp)


def _filled_cells(df: pd.DataFrame) -> pd.Series[Any]:
    """Non-NULL, non-empty cells per row."""
    filled = pd.Series(0, index=df.index, dtype="int64")
    for column in df.columns:
        values = df[column]
        present = values.notna()
        if values.dtype == object or pd.api.types.is_string_dtype(values.dtype):
            present = present & (as_text(values).str.strip() != "").fillna(False)
        filled += present.to_numpy(dtype=np.int64)
    return filled


def _check(
    df: pd.DataFrame, by: str | Iterable[str], key: str, rule: str, order_col: str | None
) -> tuple[tuple[str, ...], str | None]:
    by_cols = check_names(by, "by")
    check_name(key, "key")
    check_choice(rule, RULES, "rule")
    if order_col is not None:
        check_name(order_col, "order_col")
    require_columns(df, [*by_cols, key, *([order_col] if order_col else [])])
    keys = df[key]
    if keys.isna().any():
        raise ValueError(f"key column {key!r} has NULLs")
    if not keys.is_unique:
        raise ValueError(f"key column {key!r} repeats a value")
    return by_cols, order_col
