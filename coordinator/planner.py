"""Keyset chunk boundaries: chunks of ~chunk_size rows whatever the gaps in the keys.

Walking the key index with ``OFFSET chunk_size - 1 LIMIT 1`` from the last
boundary reads index entries, never table rows, and gives every chunk the
same number of rows on sparse integer, uuid or text keys alike. A chunk is
the half-open range ``(lo, hi]``; the first is open below, and the last ends
at the greatest key that existed when the run was planned.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import psycopg

from workers.statements import Statements


class KeySource(Protocol):
    def boundary(self, after: str | None, skip: int) -> str | None:
        """The key ``skip`` keys past the first key greater than ``after``, or None."""

    def last(self) -> str | None:
        """The greatest key, or None when there are no rows."""


def plan_bounds(source: KeySource, chunk_size: int) -> Iterator[tuple[str | None, str]]:
    """Yield ``(lo, hi)`` for every chunk, lowest first."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    last = source.last()
    if last is None:
        return
    after: str | None = None
    while True:
        hi = source.boundary(after, chunk_size - 1)
        if hi is None or hi == last:
            yield after, last
            return
        yield after, hi
        after = hi


class PostgresKeys:
    """Boundaries read from the table's key index."""

    def __init__(self, conn: psycopg.Connection[Any], statements: Statements) -> None:
        self.conn = conn
        self.statements = statements

    def boundary(self, after: str | None, skip: int) -> str | None:
        row = self.conn.execute(self.statements.boundary(after, skip)).fetchone()
        return None if row is None else row["b"]

    def last(self) -> str | None:
        row = self.conn.execute(self.statements.last_key()).fetchone()
        return None if row is None else row["b"]


class MemoryKeys:
    """Boundaries over an in-memory sorted list, for planner unit tests."""

    def __init__(self, keys: Sequence[Any]) -> None:
        self.keys = sorted(keys)
        self.text = {str(k): k for k in self.keys}

    def boundary(self, after: str | None, skip: int) -> str | None:
        start = 0 if after is None else bisect.bisect_right(self.keys, self.text[after])
        index = start + skip
        return str(self.keys[index]) if index < len(self.keys) else None

    def last(self) -> str | None:
        return str(self.keys[-1]) if self.keys else None
