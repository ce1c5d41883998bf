"""Checks and conversions every transform module shares.

Why one place: the package's two promises (misconfiguration fails early with a
message that never quotes a row value; NULL in means NULL out) are easier to keep
when every module checks names and turns values into text the same way.

Error messages here name columns and parameters only. Column names are schema,
not data; cell values may be patient data and never appear in an exception.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

_TEXT = pd.StringDtype("python")


def check_name(name: object, what: str) -> str:
    """``name`` if it is a non-empty string, else ``ValueError`` naming ``what``."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{what} must be a non-empty string")
    return name


def check_names(names: str | Iterable[str], what: str) -> tuple[str, ...]:
    """One name or several as a tuple; at least one, no repeats."""
    items = (names,) if isinstance(names, str) else tuple(names)
    if not items:
        raise ValueError(f"{what} needs at least one column")
    for item in items:
        check_name(item, what)
    if len(set(items)) != len(items):
        raise ValueError(f"{what} repeats a column")
    return items


def check_choice(value: object, allowed: Sequence[str], what: str) -> str:
    """``value`` if it is one of ``allowed``, else ``ValueError`` listing the choices."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(repr(a) for a in allowed)}")
    return value


def check_decimals(decimals: object, what: str = "decimals") -> int:
    """A digit count between 0 and 12 (beyond that float64 cannot keep the digits)."""
    if isinstance(decimals, bool) or not isinstance(decimals, int) or not 0 <= decimals <= 12:
        raise ValueError(f"{what} must be an integer from 0 to 12")
    return decimals


def require_columns(df: pd.DataFrame, columns: Iterable[str]) -> None:
    """``ValueError`` naming the first column ``df`` lacks (a spec bug, not a data error)."""
    if not isinstance(df, pd.DataFrame):
        raise ValueError("a transform takes a pandas DataFrame")
    for column in columns:
        if column not in df.columns:
            raise ValueError(f"unknown column {column!r}")


def as_text(series: pd.Series[Any]) -> pd.Series[Any]:
    """Values as a ``string`` Series: NULL (None, NaN, NA, NaT) becomes ``<NA>``.

    Non-text values are written with ``str`` (``12`` becomes ``"12"``), so a
    number that slipped into a text column is kept, not dropped. The Python
    storage is pinned: with pyarrow installed, ``"string"`` would switch to RE2
    regular expressions, whose ``\\s`` and lookbehinds differ.
    """
    return series.astype(_TEXT)


def to_object(text: pd.Series[Any]) -> pd.Series[Any]:
    """A text result as object dtype holding ``str`` or ``None``.

    Why object and None: it compares equal to plain Python values in callers'
    code and tests, and the COPY writer turns ``None`` into ``\\N`` (NULL).
    """
    out = text.astype(object)
    return out.where(text.notna().to_numpy(), None)


def finite_or_nan(values: np.ndarray[Any, np.dtype[np.float64]]) -> np.ndarray[Any, Any]:
    """``values`` with infinities as NaN: an infinite weight is garbage, not data."""
    return np.where(np.isfinite(values), values, np.nan)
