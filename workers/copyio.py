"""DataFrames in and out of PostgreSQL's COPY text format, losslessly.

CSV cannot tell NULL from an empty string once pandas has read it, so Ferry
uses the text format: NULL is the bare ``\\N`` and every backslash in a value
is escaped, which keeps the two apart. Escapes are undone only in columns
that contain a backslash, so the common case stays vectorized.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from workers.catalog import base_type

NULL = "\\N"
_UNESCAPE = {"t": "\t", "n": "\n", "r": "\r", "b": "\b", "f": "\f", "v": "\v", "\\": "\\"}
_ESCAPE_RE = re.compile(r"\\(.)")
_INTS = {"smallint", "integer", "bigint"}
_FLOATS = {"real", "double precision", "numeric"}
_NUMBERS = _INTS | _FLOATS
_PLAIN = _NUMBERS | {"uuid", "boolean", "date"}


def read_copy(
    data: bytes, columns: Sequence[str], types: Mapping[str, str], raw: Collection[str] = ()
) -> pd.DataFrame:
    """A frame from COPY text output; integers, floats and booleans typed, the rest text.

    ``raw`` columns keep their COPY text as it came, escapes and NULL's ``\\N`` and all, as
    plain ``str`` objects: values that go back into PostgreSQL untouched through
    ``write_copy(..., raw=...)``.
    """
    if not data:
        return pd.DataFrame({c: pd.Series([], dtype=_empty_dtype(types.get(c))) for c in columns})
    kinds = {c: "raw" if c in raw else base_type(types.get(c, "text")) for c in columns}
    # Numbers never hold a backslash: the parser types them itself, several times faster
    # than text then to_numeric. A value it cannot read (a float or numeric 'NaN') sends the
    # frame down the column-by-column path, which says what is wrong with it.
    parsed = {c: "Int64" if k in _INTS else "float64" for c, k in kinds.items() if k in _NUMBERS}
    try:
        frame = _read_text(data, columns, parsed, raw)
    except (ValueError, OverflowError):
        frame, parsed = _read_text(data, columns, {}, raw), {}
    # Every backslash of the common chunk starts a NULL (``\\N``): then no value holds an
    # escape, and no column needs scanning for one.
    escaped = data.count(b"\\") != data.count(b"\\N")
    for col in columns:
        if col in parsed or col in raw:
            continue
        series = frame[col]
        if escaped and series.str.contains("\\", regex=False).any():
            series = series.str.replace(_ESCAPE_RE, lambda m: _UNESCAPE.get(m[1], m[1]), regex=True)
        kind = kinds[col]
        if kind in _INTS:
            series = pd.to_numeric(series).astype("Int64")
        elif kind in _FLOATS:
            series = pd.to_numeric(series).astype("float64")
        elif kind == "boolean":
            series = series.map({"t": True, "f": False}).astype("boolean")
        frame[col] = series
    return frame


def _read_text(
    data: bytes, columns: Sequence[str], parsed: Mapping[str, str], raw: Collection[str]
) -> pd.DataFrame:
    return pd.read_csv(
        io.BytesIO(data),
        sep="\t",
        header=None,
        names=list(columns),
        dtype={c: object if c in raw else parsed.get(c, str) for c in columns},
        quoting=csv.QUOTE_NONE,
        na_values={c: [NULL] for c in columns if c not in raw},
        keep_default_na=False,
        engine="c",
    )


def _empty_dtype(type_text: str | None) -> str:
    kind = base_type(type_text or "text")
    if kind in _INTS:
        return "Int64"
    if kind in _FLOATS:
        return "float64"
    if kind == "boolean":
        return "boolean"
    return "object"


def write_copy(
    frame: pd.DataFrame,
    columns: Sequence[str],
    types: Mapping[str, str] | None = None,
    raw: Collection[str] = (),
) -> bytes:
    """COPY text input for ``columns`` of ``frame`` (NULLs as ``\\N``, escapes applied).

    ``types`` (catalog type names) lets columns that cannot hold a tab, newline or
    backslash, such as integer or uuid keys, skip the escape scan. Numbers are turned into
    text by Python's own ``str`` over plain lists and rows joined by ``str.join``: pandas'
    ``astype(str)`` validates every value into its string array and costs several times
    more, on the path that writes every row of a chunk. ``raw`` columns hold COPY text
    already (``read_copy(..., raw=...)``) and are written as they are.
    """
    if frame.empty:
        return b""
    plain = {c for c, t in (types or {}).items() if base_type(t) in _PLAIN}
    texts = [
        frame[c].tolist() if c in raw else _column_text(frame[c], escape=c not in plain)
        for c in columns
    ]
    return ("\n".join(map("\t".join, zip(*texts, strict=True))) + "\n").encode()


def _column_text(series: pd.Series, *, escape: bool = True) -> list[str]:
    missing = series.isna().to_numpy()
    dtype = series.dtype
    if isinstance(dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(dtype):
        return _with_nulls(series.astype(str).tolist(), missing)
    if pd.api.types.is_bool_dtype(dtype):
        flags = series.to_numpy(dtype=bool, na_value=False).tolist()
        return _with_nulls(["t" if v else "f" for v in flags], missing)
    if pd.api.types.is_integer_dtype(dtype):
        plain_dtype: Any = getattr(dtype, "numpy_dtype", None) or dtype  # Int64 -> int64
        values = series.to_numpy(dtype=plain_dtype, na_value=0)
        return _with_nulls(list(map(str, values.tolist())), missing)
    if pd.api.types.is_float_dtype(dtype):
        values = series.to_numpy(dtype="float64", na_value=np.nan)
        text = list(map(repr, values.tolist()))
        for i in np.flatnonzero(np.isinf(values)).tolist():
            text[i] = "Infinity" if values[i] > 0 else "-Infinity"
        return _with_nulls(text, missing)
    if pd.api.types.is_object_dtype(dtype) and any(
        isinstance(v, (dict, list)) for v in series.head(50)
    ):
        strings = pd.Series(
            [json.dumps(v) if isinstance(v, (dict, list)) else v for v in series],
            index=series.index,
            dtype=object,
        ).astype(str)
    else:
        strings = series.astype(str)
    if escape and strings.str.contains(r"[\\\t\n\r]", regex=True).any():
        strings = (
            strings.str.replace("\\", "\\\\", regex=False)
            .str.replace("\t", "\\t", regex=False)
            .str.replace("\n", "\\n", regex=False)
            .str.replace("\r", "\\r", regex=False)
        )
    return _with_nulls(strings.tolist(), missing)


def _with_nulls(text: list[str], missing: np.ndarray) -> list[str]:
    for i in np.flatnonzero(missing).tolist():
        text[i] = NULL
    return text
