"""Keyset chunk boundaries: chunks of ~chunk_size rows whatever the gaps in the keys.

Walking the key index with ``OFFSET chunk_size - 1 LIMIT 1`` from the last
boundary reads index entries, never table rows, and gives every chunk the
same number of rows on sparse integer, uuid or text keys alike. A chunk is
the half-open range ``(lo, hi]``; the first is open below, and the last ends
at the greatest key that existed when the run was planned: rows the
application inserts above it while the walk goes on are not the run's.

The walk takes boundaries a batch at a time, one statement a batch (a
recursive query that steps from boundary to boundary), not one statement a
chunk: a round trip, a parse and a plan a chunk were a third of planning.
Batches start small and double, so a caller that wants only the first chunk
(the pre-flight sample) does not pay for the walk of a whole table.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import psycopg

from workers.statements import Statements

FIRST_BATCH = 16
LARGEST_BATCH = 1024


class KeySource(Protocol):
    def boundaries(self, after: str | None, skip: int, count: int, last: str) -> list[str]:
        """Up to ``count`` keys, none above ``last``, lowest first: each ``skip`` keys past the
        first key greater than the one before it (the first: greater than ``after``)."""

    def last(self) -> str | None:
        """The greatest key, or None when there are no rows."""


Bounds = list[tuple[str | None, str]]


def plan_bounds(source: KeySource, chunk_size: int) -> Iterator[tuple[str | None, str]]:
    """Yield ``(lo, hi)`` for every chunk, lowest first."""
    for batch, _ in walk_batches(source, chunk_size):
        yield from batch


def walk_batches(
    source: KeySource,
    chunk_size: int,
    *,
    after: str | None = None,
    last: str | None = None,
    first: int = FIRST_BATCH,
) -> Iterator[tuple[Bounds, bool]]:
    """The chunks a batch at a time, lowest first, each batch with whether it is the last.

    From the start, or (a walk that goes on) after boundary ``after`` up to ``last``. Every
    batch but the last holds ``first``, then twice as many, up to LARGEST_BATCH chunks.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    if last is None:
        last = source.last()
        if last is None:
            return
    batch = first
    while True:
        his = source.boundaries(after, chunk_size - 1, batch, last)
        chunks: Bounds = []
        for hi in his:
            if hi == last:
                break
            chunks.append((after, hi))
            after = hi
        else:
            if len(his) == batch:  # more boundaries may follow
                yield chunks, False
                batch = min(batch * 2, LARGEST_BATCH)
                continue
        # the walk reached the last key, or fewer than chunk_size keys are left before it
        chunks.append((after, last))
        yield chunks, True
        return


class PostgresKeys:
    """Boundaries read from the table's key index."""

    def __init__(self, conn: psycopg.Connection[Any], statements: Statements) -> None:
        self.conn = conn
        self.statements = statements

    def boundaries(self, after: str | None, skip: int, count: int, last: str) -> list[str]:
        rows = self.conn.execute(self.statements.boundaries(after, skip, count, last))
        return [row["b"] for row in rows]

    def last(self) -> str | None:
        row = self.conn.execute(self.statements.last_key()).fetchone()
        return None if row is None else row["b"]


class MemoryKeys:
    """Boundaries over an in-memory sorted list, for planner unit tests."""

    def __init__(self, keys: Sequence[Any]) -> None:
        self.keys = sorted(keys)
        self.text = {str(k): k for k in self.keys}

    def boundaries(self, after: str | None, skip: int, count: int, last: str) -> list[str]:
        end = bisect.bisect_right(self.keys, self.text[last])
        found: list[str] = []
        start = 0 if after is None else bisect.bisect_right(self.keys, self.text[after])
        while len(found) < count and start + skip < end:
            found.append(str(self.keys[start + skip]))
            start += skip + 1
        return found

    def last(self) -> str | None:
        return str(self.keys[-1]) if self.keys else None
