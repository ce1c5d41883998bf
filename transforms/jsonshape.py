"""Reshape JSON documents: rename, move, drop and default keys.

Why: a JSON column's shape changes with the application (``phone`` moves into
``contact``, ``tel`` is renamed ``phone``); the rows written under the old
shape are migrated so readers need to handle only the new one.

Parsing is per row by nature (``json.loads`` on each value); it runs in one
list comprehension over the column, not ``DataFrame.apply``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pandas as pd

from transforms._common import check_name, require_columns

Transform = Callable[[pd.DataFrame], pd.DataFrame]
Path = tuple[str, ...]


class _Conflict(Exception):
    """A row the plan cannot reshape without losing a value."""


def restructure_json(
    src: str,
    dst: str | None = None,
    *,
    rename: Mapping[str, str] | None = None,
    move: Mapping[str, str] | None = None,
    drop: Iterable[str] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> Transform:
    """Reshape the JSON objects in ``src`` into ``dst`` (default: ``src``).

    Steps, in this order, each optional:

    - ``rename``: top-level keys, ``{"tel": "phone"}``; the key keeps its place.
    - ``move``: dotted paths to dotted paths, ``{"phone": "contact.phone"}``;
      missing intermediate objects are created, a missing source is skipped.
    - ``drop``: dotted paths to remove; missing ones are skipped.
    - ``defaults``: ``{"contact.country": "US"}`` set where the path is missing
      (an explicit JSON ``null`` is data and is kept).

    Values may be JSON text or ``dict`` (dicts are copied, never modified).
    Invalid JSON, non-object JSON (a list, a number), ``NaN``/``Infinity``
    (PostgreSQL rejects them) and NULL give NULL. So does a row the plan cannot
    apply without losing a value: a rename or move onto an existing key, or a
    move through a value that is not an object.

    Output: compact JSON text (``separators=(",", ":")``, non-ASCII kept),
    object dtype, ``None`` for NULL. Keys keep their order (untouched keys stay
    where they were, new ones go last): the same input always gives the same
    text, and a ``jsonb`` column ignores the order anyway.

    >>> df = pd.DataFrame({"doc": ['{"tel":"555","name":"Ann"}', "not json"]})
    >>> fn = restructure_json("doc", move={"tel": "contact.phone"}, defaults={"v": 2})
    >>> fn(df)["doc"].tolist()
    ['{"name":"Ann","contact":{"phone":"555"},"v":2}', None]
    """
    check_name(src, "src")
    target = src if dst is None else check_name(dst, "dst")
    renames = _check_renames(rename or {})
    moves = [(_path(a, "move"), _path(b, "move")) for a, b in _items(move, "move")]
    for source, dest in moves:
        if dest[: len(source)] == source:
            raise ValueError("move: a path cannot move inside itself")
    drops = [_path(p, "drop") for p in _strings(drop, "drop")]
    fills = [(_path(p, "defaults"), _json_value(v)) for p, v in _items(defaults, "defaults")]

    def reshape(value: Any) -> str | None:
        doc = _load(value)
        if doc is None:
            return None
        try:
            for old, new in renames:
                doc = _rename(doc, old, new)
            for source, dest in moves:
                _move(doc, source, dest)
            for path in drops:
                _pop(doc, path)
            for path, text in fills:
                _set_default(doc, path, text)
        except _Conflict:
            return None
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False)

    def restructure_json_fn(df: pd.DataFrame) -> pd.DataFrame:
        require_columns(df, [src])
        column = df[src]
        out = pd.Series([reshape(v) for v in column.tolist()], index=df.index, dtype=object)
        return df.assign(**{target: out})

    return restructure_json_fn


def _reject_constant(name: str) -> Any:
    raise ValueError(name)  # NaN, Infinity: not JSON, and PostgreSQL refuses them


def _load(value: Any) -> dict[str, Any] | None:
    """A private copy of the object in ``value``; None for anything else."""
    try:
        if isinstance(value, str):
            doc = json.loads(value, parse_constant=_reject_constant)
        elif isinstance(value, dict):
            # A round trip: a deep copy that also proves the dict is valid JSON.
            text = json.dumps(value, allow_nan=False)
            doc = json.loads(text)
        else:
            return None
    except (ValueError, TypeError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def _rename(doc: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    if old not in doc:
        return doc
    if new in doc:
        raise _Conflict
    return {new if k == old else k: v for k, v in doc.items()}


def _move(doc: dict[str, Any], source: Path, dest: Path) -> None:
    parent = _walk(doc, source[:-1], create=False)
    if parent is None or source[-1] not in parent:
        return
    holder = _walk(doc, dest[:-1], create=True)
    if holder is None or dest[-1] in holder:
        raise _Conflict
    holder[dest[-1]] = parent.pop(source[-1])


def _pop(doc: dict[str, Any], path: Path) -> None:
    parent = _walk(doc, path[:-1], create=False)
    if parent is not None:
        parent.pop(path[-1], None)


def _set_default(doc: dict[str, Any], path: Path, text: str) -> None:
    holder = _walk(doc, path[:-1], create=True)
    if holder is None:
        raise _Conflict
    if path[-1] not in holder:
        holder[path[-1]] = json.loads(text)  # a fresh copy per row


def _walk(doc: dict[str, Any], path: Path, *, create: bool) -> dict[str, Any] | None:
    """The object at ``path``; None when a step is missing or not an object."""
    node = doc
    for step in path:
        if step not in node and create:
            node[step] = {}
        child = node.get(step)
        if not isinstance(child, dict):
            return None
        node = child
    return node


def _path(text: object, what: str) -> Path:
    parts = tuple(check_name(text, f"{what} path").split("."))
    if any(not p for p in parts):
        raise ValueError(f"{what}: paths are dot-separated non-empty keys")
    return parts


def _items(mapping: Mapping[str, Any] | None, what: str) -> list[tuple[str, Any]]:
    if mapping is None:
        return []
    if not isinstance(mapping, Mapping):
        raise ValueError(f"{what} must be a mapping")
    return list(mapping.items())


def _strings(items: Iterable[str] | None, what: str) -> list[str]:
    if items is None:
        return []
    if isinstance(items, str):
        raise ValueError(f"{what} must be a list of paths, not one string")
    return list(items)


def _check_renames(rename: Mapping[str, str]) -> list[tuple[str, str]]:
    pairs = _items(rename, "rename")
    for old, new in pairs:
        check_name(old, "rename key")
        check_name(new, "rename target")
    if len({new for _, new in pairs}) != len(pairs):
        raise ValueError("rename: two keys cannot get the same new name")
    return pairs


def _json_value(value: Any) -> str:
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        raise ValueError("defaults: every value must be JSON-serializable") from None
