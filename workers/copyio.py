"""DataFrames in and out of PostgreSQL's COPY text format, losslessly.

CSV cannot tell NULL from an empty string once pandas has read it, so Ferry
uses the text format: NULL is the bare ``\\N`` and every backslash in a value
is escaped, which keeps the two apart. Escapes are undone only in columns
that contain a backslash, so the common case stays vectorized.

Every value arrives as something that goes back to PostgreSQL as the same
value (docs/types.md): integers as ``Int64``; ``double precision`` and
``real`` as nullable ``Float64``/``Float32``, where NULL is ``<NA>`` and a
stored NaN stays a NaN; ``numeric`` as ``decimal.Decimal`` objects (NULL as
``<NA>``, NaN as ``Decimal('NaN')``, never a float); booleans as ``boolean``;
every other type as its exact PostgreSQL text.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Collection, Mapping, Sequence
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
from pandas.arrays import FloatingArray

from workers.catalog import base_type

NULL = "\\N"
_UNESCAPE = {"t": "\t", "n": "\n", "r": "\r", "b": "\b", "f": "\f", "v": "\v", "\\": "\\"}
_ESCAPE_RE = r"\\(.)"
_INTS = {"smallint", "integer", "bigint"}
_FLOATS: dict[str, type[np.floating[Any]]] = {"real": np.float32, "double precision": np.float64}
_PLAIN = _INTS | set(_FLOATS) | {"numeric", "uuid", "boolean", "date"}


def read_copy(
    data: bytes, columns: Sequence[str], types: Mapping[str, str], raw: Collection[str] = ()
) -> pd.DataFrame:
    """A frame from COPY text output, each column in the dtype docs/types.md gives its type.

    ``raw`` columns keep their COPY text as it came, escapes and NULL's ``\\N`` and all, as
    plain ``str`` objects: values that go back into PostgreSQL untouched through
    ``write_copy(..., raw=...)``.
    """
    if not data:
        return pd.DataFrame({c: _empty(types.get(c)) for c in columns})
    kinds = {c: "raw" if c in raw else base_type(types.get(c, "text")) for c in columns}
    # Integers and floats never hold a backslash: the parser types them itself, several
    # times faster than text then conversion. A float 'NaN' is a word it refuses: then the
    # floats are read as text and converted below, NaN kept apart from NULL.
    parsed = {c: "Int64" for c, k in kinds.items() if k in _INTS}
    floats = {c: "float64" for c, k in kinds.items() if k in _FLOATS}
    try:
        frame = _read_text(data, columns, {**parsed, **floats}, raw)
    except (ValueError, OverflowError):
        frame = _read_text(data, columns, parsed, raw)
    # Every backslash of the common chunk starts a NULL (``\\N``): then no value holds an
    # escape, and no column needs scanning for one.
    escaped = data.count(b"\\") != data.count(b"\\N")
    for col in columns:
        kind = kinds[col]
        if col in parsed or col in raw:
            continue
        series = frame[col]
        if kind in _FLOATS:
            frame[col] = _floats(series, _FLOATS[kind])
            continue
        if kind == "numeric":  # never holds a backslash either
            frame[col] = _decimals(series)
            continue
        if escaped and series.str.contains("\\", regex=False).any():
            series = series.str.replace(_ESCAPE_RE, lambda m: _UNESCAPE.get(m[1], m[1]), regex=True)
        if kind == "boolean":
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


def _floats(series: pd.Series, dtype: type[np.floating[Any]]) -> pd.Series:
    """A float column as a nullable float array: NULL is ``<NA>``, a stored NaN a NaN.

    The column came either as float64 from the parser (no NaN in the chunk, so every NaN
    there is a NULL) or as text (``NaN``, ``Infinity`` and ``-0`` are words ``float``
    reads). A ``real`` is narrowed from the double nearest PostgreSQL's shortest text for
    it, which is that ``real`` exactly.
    """
    if pd.api.types.is_float_dtype(series.dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        mask = np.isnan(values)
    else:
        mask = series.isna().to_numpy()
        values = series.to_numpy(dtype=object, na_value="0").astype(np.float64)
    return pd.Series(FloatingArray(values.astype(dtype), mask), index=series.index)


def _decimals(series: pd.Series) -> pd.Series:
    """A numeric column as ``Decimal`` objects (exact: scale, NaN, Infinity, 1,000 digits)."""
    missing = series.isna().to_numpy()
    values: list[Any] = list(map(Decimal, series.fillna("0").tolist()))  # C loop, no isinstance
    for i in np.flatnonzero(missing).tolist():
        values[i] = pd.NA
    return pd.Series(values, index=series.index, dtype=object)


def _empty(type_text: str | None) -> pd.Series:
    kind = base_type(type_text or "text")
    if kind in _INTS:
        return pd.Series([], dtype="Int64")
    if kind in _FLOATS:
        return pd.Series([], dtype="Float32" if kind == "real" else "Float64")
    if kind == "boolean":
        return pd.Series([], dtype="boolean")
    return pd.Series([], dtype=object)


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
    dtype = series.dtype
    if isinstance(dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(dtype):
        return _with_nulls(series.astype(str).tolist(), series.isna().to_numpy())
    if pd.api.types.is_bool_dtype(dtype):
        flags = series.to_numpy(dtype=bool, na_value=False).tolist()
        return _with_nulls(["t" if v else "f" for v in flags], series.isna().to_numpy())
    if pd.api.types.is_integer_dtype(dtype):
        plain_dtype: Any = getattr(dtype, "numpy_dtype", None) or dtype  # Int64 -> int64
        values = series.to_numpy(dtype=plain_dtype, na_value=0)
        return _with_nulls(list(map(str, values.tolist())), series.isna().to_numpy())
    if pd.api.types.is_float_dtype(dtype):
        return _float_text(series)
    missing = series.isna().to_numpy().copy()
    if pd.api.types.is_object_dtype(dtype) and any(
        isinstance(v, (dict, list, float, Decimal)) for v in series.head(50)
    ):
        strings = pd.Series(
            [_object_text(v) for v in series.tolist()], index=series.index, dtype=object
        )
        missing = strings.isna().to_numpy()
    elif pd.api.types.is_object_dtype(dtype):
        # pandas counts Decimal('NaN') as missing (and its str as NaN): it is numeric's NaN.
        nans = [i for i in np.flatnonzero(missing).tolist() if isinstance(series.iat[i], Decimal)]
        strings = series.astype(str)
        if nans:
            strings = strings.astype(object)
            for i in nans:
                strings.iat[i] = str(series.iat[i])
                missing[i] = False
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


def _float_text(series: pd.Series) -> list[str]:
    """Floats as the shortest text that reads back as the same float (``real`` included).

    In a nullable float column only ``<NA>`` is NULL and a NaN is written as NaN; in a
    plain numpy float column NaN is pandas' missing value, so it is written as NULL.
    """
    nullable = isinstance(series.array, FloatingArray)
    missing = series.isna().to_numpy()
    narrow = series.dtype in (np.float32, pd.Float32Dtype())
    values = series.to_numpy(dtype=np.float32 if narrow else np.float64, na_value=np.nan)
    # numpy's str of a float32 is its shortest text, as PostgreSQL prints a ``real``.
    text = values.astype(str).tolist() if narrow else list(map(repr, values.tolist()))
    for i in np.flatnonzero(~np.isfinite(values)).tolist():
        v = values[i]
        text[i] = "NaN" if np.isnan(v) else "Infinity" if v > 0 else "-Infinity"
    return _with_nulls(text, missing if nullable else missing | np.isnan(values))


def _object_text(value: object) -> str | None:
    """One value of a mixed object column as text (None for NULL)."""
    if isinstance(value, str):
        return value
    if isinstance(value, Decimal):
        return str(value)  # scale kept: str(Decimal('1.50E-7')) reads back as 0.000000150
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float):
        if value != value:
            return None  # pandas' missing value in an object column
        return repr(value) if abs(value) != float("inf") else str(value).replace("inf", "Infinity")
    return str(value)


def _with_nulls(text: list[str], missing: np.ndarray[Any, Any]) -> list[str]:
    for i in np.flatnonzero(missing).tolist():
        text[i] = NULL
    return text
