"""The planner's walk on PostgreSQL's own key index: the same boundaries as the in-memory
reference, batch after batch, and none past the key that was last when the walk began."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from coordinator.resolve import resolve
from migrations import Backfill
from tests.helpers import make_numbers_table
from workers.planner import FIRST_BATCH, MemoryKeys, PostgresKeys, plan_bounds
from workers.statements import KeyRange, Statements

Walker = psycopg.Connection[Any]


@pytest.fixture
def walker(database_url: str) -> Iterator[Walker]:
    """A connection as the coordinator plans on: rows as dicts."""
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        yield conn


def _keys(conn: Walker, table: str, where: str | None = None) -> tuple[PostgresKeys, Statements]:
    backfill = Backfill(table=table, key="id", reads=["a"], writes=["score"], sql={"score": "a"})
    statements = Statements(resolve(conn, backfill, "test:walk", where=where), run_id=1)
    return PostgresKeys(conn, statements), statements


@pytest.mark.parametrize(
    ("key_type", "key_expr"),
    [("bigint", "g * g"), ("uuid", "md5(g::text)::uuid"), ("text", "'k' || md5(g::text)")],
)
def test_walk_matches_the_reference_across_batches(
    key_type: str, key_expr: str, db: psycopg.Connection[Any], walker: Walker
) -> None:
    table = f"walk_{key_type}"
    make_numbers_table(db, table, 3_000, key_expr=key_expr, key_type=key_type)
    keys = [r[0] for r in db.execute(sql.SQL("SELECT id FROM {}").format(sql.Identifier(table)))]
    source, statements = _keys(walker, table)
    # 7 rows a chunk: 429 chunks, over batches of 16, 32, 64, 128 and 256 boundaries
    walked = list(plan_bounds(source, 7))
    assert len(walked) > 16 * FIRST_BATCH
    reference = list(plan_bounds(MemoryKeys(keys), 7))
    if key_type == "text":  # the database's collation orders text, not Python: compare sizes
        assert len(walked) == len(reference)
    else:
        assert walked == reference
    counts = [
        row["n"]
        for lo, hi in walked
        for row in walker.execute(statements.count_range(KeyRange(lo, hi)))
    ]
    assert counts[:-1] == [7] * (len(counts) - 1) and sum(counts) == 3_000


def test_walk_follows_the_filter(db: psycopg.Connection[Any], walker: Walker) -> None:
    make_numbers_table(db, "walk_filtered", 2_000)
    walked = list(plan_bounds(_keys(walker, "walk_filtered", where="b = 0")[0], 10))
    kept = [r[0] for r in db.execute("SELECT id FROM walk_filtered WHERE b = 0")]
    assert walked == list(plan_bounds(MemoryKeys(kept), 10))


def test_rows_inserted_above_the_last_key_while_walking_are_not_planned(
    db: psycopg.Connection[Any], walker: Walker
) -> None:
    """An application inserting at the top of the key (a serial id) while a long table is
    walked: the walk stops at the key that was last when it began."""
    make_numbers_table(db, "walk_growing", 1_000)
    source = _keys(walker, "walk_growing")[0]
    walk_from = source.boundaries

    def boundaries(after: str | None, skip: int, count: int, last: str) -> list[str]:
        db.execute(
            "INSERT INTO walk_growing (id, a) "
            "SELECT g, 1 FROM generate_series(%s::bigint, %s::bigint) AS g",
            (1_001 + int(after or 0) * 10, 1_000 + int(after or 0) * 10 + 50),
        )
        return walk_from(after, skip, count, last)

    source.boundaries = boundaries  # type: ignore[method-assign]
    walked = list(plan_bounds(source, 3))
    assert walked[-1][1] == "1000" and all(int(hi) <= 1000 for _, hi in walked)
    assert walked == list(plan_bounds(MemoryKeys(list(range(1, 1_001))), 3))
