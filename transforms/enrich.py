"""Data enrichment: computed fields, reference lookups, metadata stamps, backfill.

Why in one module: each adds information to a row that the row did not hold
in that column before (from its own fields, from reference data, from the
migration itself, or from older columns), and each is one vectorized step.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable, Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from transforms._common import check_name, check_names, require_columns, to_object

Transform = Callable[[pd.DataFrame], pd.DataFrame]
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_SCALARS = (str, int, float, bool, Decimal, date, datetime, type(None))
_cache: dict[str, tuple[str, Mapping[Any, Any]]] = {}
_cache_lock = threading.Lock()


def computed(dst: str, expr: Callable[[pd.DataFrame], Any]) -> Transform:
    """A column ``dst`` computed by ``expr(df)`` over the whole frame.

    Why a wrapper: it checks the result lines up with the rows (a Series on the
    frame's own index, or an array of its length) so a misaligned expression
    fails loudly instead of writing one row's value into another, and it turns
    infinities (a division by a zero height) into NULL. ``expr`` gets a frame it
    may not change the caller's copy of. An exception inside ``expr`` becomes
    ``ValueError`` naming only its type (its message may quote a row value).

    >>> df = pd.DataFrame({"weight_kg": [70.0, None], "height_cm": [175.0, 160.0]})
    >>> bmi = computed("bmi", lambda d: d.weight_kg / (d.height_cm / 100) ** 2)
    >>> bmi(df)["bmi"].round(1).tolist()
    [22.9, nan]
    """
    check_name(dst, "dst")
    if not callable(expr):
        raise ValueError("expr must be a callable taking the frame")

    def computed_fn(df: pd.DataFrame) -> pd.DataFrame:
        require_columns(df, [])
        try:
            result = expr(df.copy(deep=False))
        except Exception as exc:
            raise ValueError(f"computed {dst!r}: expr raised {type(exc).__name__}") from None
        if isinstance(result, pd.Series):
            if not result.index.equals(df.index):
                raise ValueError(f"computed {dst!r}: expr returned a Series on another index")
            values = result.copy()
        elif isinstance(result, np.ndarray) and result.ndim == 1 and len(result) == len(df):
            values = pd.Series(result, index=df.index)
        else:
            raise ValueError(f"computed {dst!r}: expr must return a Series or array, one per row")
        if pd.api.types.is_float_dtype(values.dtype):
            values = values.where(~values.isin([np.inf, -np.inf]))
        return df.assign(**{dst: values})

    return computed_fn


def lookup(
    src: str,
    dst: str,
    mapping: Mapping[Any, Any],
    *,
    default: Any = None,
    version: str | None = None,
) -> Transform:
    """``dst`` = ``mapping[src]``: reference data joined in with ``Series.map``.

    Why: codes (``"M"``, ``"F"``; ICD codes; site ids) become the values the new
    schema stores. The mapping is copied when the transform is built, so every
    chunk of a run sees the same reference data even if the caller's dict
    changes. Matching is exact, type included: ``"1"`` does not match ``1``.

    NULL in ``src`` stays NULL; a value not in the mapping gets ``default``;
    unhashable cells (lists, dicts) are NULL. Output: object dtype.
    ``version`` (e.g. the reference table's ``updated_at``) is kept on the
    function as ``reference_version`` for logs; load the mapping once per worker
    with ``cached_reference``.

    >>> df = pd.DataFrame({"sex": ["M", "F", "X", None]})
    >>> lookup("sex", "sex_label", {"M": "male", "F": "female"}, default="unknown")(df)[
    ...     "sex_label"
    ... ].tolist()
    ['male', 'female', 'unknown', None]
    """
    check_name(src, "src")
    check_name(dst, "dst")
    if not isinstance(mapping, Mapping):
        raise ValueError("mapping must be a mapping (e.g. a dict)")
    if version is not None:
        check_name(version, "version")
    table = {k: v for k, v in mapping.items() if not _is_null(k)}
    # An index lookup (get_indexer) is one hash pass over the column.
    reference = pd.Index(list(table.keys()), dtype=object)
    values = np.empty(len(table), dtype=object)
    values[:] = list(table.values())

    def lookup_fn(df: pd.DataFrame) -> pd.DataFrame:
        require_columns(df, [src])
        keys = df[src]
        out = np.empty(len(keys), dtype=object)
        out.fill(default)
        garbage = np.zeros(len(keys), dtype=bool)
        try:
            positions = reference.get_indexer(keys)
        except TypeError:  # unhashable cells (lists, dicts): NULL, the rest still maps
            garbage = np.array([not _hashable(v) for v in keys.tolist()], dtype=bool)
            positions = np.full(len(keys), -1)
            positions[~garbage] = reference.get_indexer(keys[~garbage])
        hit = positions >= 0
        out[hit] = values[positions[hit]]
        out[keys.isna().to_numpy() | garbage] = None
        return df.assign(**{dst: pd.Series(out, index=df.index, dtype=object)})

    lookup_fn.reference_version = version  # type: ignore[attr-defined]
    return lookup_fn


def cached_reference(name: str, version: str, loader: Callable[[], Mapping[K, V]]) -> Mapping[K, V]:
    """Reference data ``name`` at ``version``; ``loader()`` runs only when the version changes.

    Why: a worker process handles many chunks; loading the reference table for
    each would repeat the same query thousands of times. One entry per name is
    kept (a new version replaces the old), so memory stays bounded. The result
    is read-only: chunks share it. ``loader`` is the caller's code (this package
    does no I/O). Thread-safe; each process has its own cache.

    >>> codes = cached_reference("sex_codes", "2024-06-01", lambda: {"M": "male"})
    >>> codes["M"]
    'male'
    """
    check_name(name, "name")
    check_name(version, "version")
    if not callable(loader):
        raise ValueError("loader must be a callable returning a mapping")
    with _cache_lock:
        hit = _cache.get(name)
        if hit is not None and hit[0] == version:
            return hit[1]
        loaded = loader()
        if not isinstance(loaded, Mapping):
            raise ValueError(f"reference {name!r}: loader must return a mapping")
        frozen: Mapping[K, V] = MappingProxyType(dict(loaded))
        _cache[name] = (version, frozen)
        return frozen


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _is_null(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # array-like keys: not NULL
        return False


def clear_reference_cache() -> None:
    """Forget every cached reference (tests; a worker never needs it)."""
    with _cache_lock:
        _cache.clear()


def stamp(now: bool | str = False, **fields: Any) -> Transform:
    """Constant metadata columns, e.g. ``stamp(migration_version="2024_06_01")``.

    Why: rows written by a migration can be traced to it afterwards. ``fields``
    are scalars (text, numbers, booleans, dates, None); an existing column of
    that name is overwritten. ``now=True`` adds ``stamped_at`` (``now="col"``
    names it) with the current UTC time as ISO text (``...+00:00``), taken once
    per call so every row of a chunk carries the same instant.

    >>> stamp(migration="v2")(pd.DataFrame({"id": [1, 2]}))["migration"].tolist()
    ['v2', 'v2']
    """
    if isinstance(now, str):
        stamp_column: str | None = check_name(now, "now")
    elif isinstance(now, bool):
        stamp_column = "stamped_at" if now else None
    else:
        raise ValueError("now must be True, False or a column name")
    if not fields and stamp_column is None:
        raise ValueError("stamp needs at least one field or now=True")
    for name, value in fields.items():
        check_name(name, "field name")
        if not isinstance(value, _SCALARS):
            raise ValueError(f"stamp field {name!r} must be a scalar")
    if stamp_column is not None and stamp_column in fields:
        raise ValueError(f"stamp: {stamp_column!r} is both a field and the now column")
    constants = dict(fields)

    def stamp_fn(df: pd.DataFrame) -> pd.DataFrame:
        require_columns(df, [])
        values = dict(constants)
        if stamp_column is not None:
            values[stamp_column] = datetime.now(UTC).isoformat(timespec="microseconds")
        return df.assign(**values)

    return stamp_fn


def coalesce_history(dst: str, sources: Iterable[str]) -> Transform:
    """``dst`` = the first non-NULL of ``sources``, in the order given.

    Why: history spread over columns of past schema versions (``dob_v3``,
    ``dob_v2``, ``dob_legacy``) is backfilled into one column, newest first.
    Values are taken as they are (an empty string is a value, not NULL: clean
    with ``normalize_strings`` first if it should not count). One source can be
    ``dst`` itself, to fill only its gaps. Sources of one non-text dtype keep
    it; text or mixed dtypes give object with ``None`` for NULL.

    >>> df = pd.DataFrame({"a": [None, "x", None], "b": ["y", "z", None]})
    >>> coalesce_history("c", ["a", "b"])(df)["c"].tolist()
    ['y', 'x', None]
    """
    check_name(dst, "dst")
    columns = check_names(sources, "sources")

    def coalesce_history_fn(df: pd.DataFrame) -> pd.DataFrame:
        require_columns(df, columns)
        frames = [df[c] for c in columns]
        dtypes = {str(s.dtype) for s in frames}
        result = frames[0] if len(dtypes) == 1 else frames[0].astype(object)
        for other in frames[1:]:
            if len(dtypes) > 1:
                other = other.astype(object)
            result = result.where(result.notna(), other)
        if result.dtype == object or pd.api.types.is_string_dtype(result.dtype):
            result = to_object(result)
        return df.assign(**{dst: result})

    return coalesce_history_fn
