"""The planner's walk on PostgreSQL's own key index: the same boundaries as the in-memory
reference, batch after batch, and none past the key that was last when the walk began."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
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


# -- every row in exactly one chunk, PostgreSQL the judge ------------------------------------
# Key columns: (type, strategy of key texts). Texts are cast to the column by PostgreSQL.
def _timestamptz() -> st.SearchStrategy[str]:
    instants = st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
    ).map(lambda d: d.isoformat())
    return st.one_of(instants, st.sampled_from(["infinity", "-infinity", "0044-03-15 BC"]))


def _date() -> st.SearchStrategy[str]:
    days = st.dates(min_value=date(1, 1, 1)).map(lambda d: d.isoformat())
    return st.one_of(days, st.sampled_from(["infinity", "-infinity", "4713-01-01 BC"]))


_TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from(list("aAbBzZäÄöø -_.,~\\'\"%{}\t\n")),
        st.characters(codec="utf-8", exclude_characters="\x00"),
    ),
    max_size=8,
)
_INT8 = st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from([-(2**63), 2**63 - 1, 0]))
KEY_COLUMNS: dict[str, tuple[str, st.SearchStrategy[str]]] = {
    "int": ("integer", st.integers(-(2**31), 2**31 - 1).map(str)),
    "int_dense": ("integer", st.integers(-40, 40).map(str)),
    "bigint": ("bigint", _INT8.map(str)),
    "numeric": (
        "numeric",
        st.one_of(
            st.decimals(allow_nan=False, allow_infinity=False, places=3).map(str),
            st.just("NaN"),
        ),
    ),
    "uuid": ("uuid", st.uuids().map(str)),
    "text": ("text", _TEXT),
    "text_c": ('text COLLATE "C"', _TEXT),
    "text_icu": ('text COLLATE "sv-x-icu"', _TEXT),
    "varchar_und": ('varchar(8) COLLATE "und-x-icu"', _TEXT),
    "timestamptz": ("timestamptz", _timestamptz()),
    "timestamp": ("timestamp", _timestamptz().map(lambda s: s.replace("+00:00", ""))),
    "date": ("date", _date()),
}


@pytest.fixture(scope="module")
def key_tables(database_url: str) -> Iterator[Walker]:
    """One table per key column type, refilled by every example."""
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        for name, (column, _) in KEY_COLUMNS.items():
            conn.execute(
                sql.SQL(
                    "DROP TABLE IF EXISTS {t}; "
                    "CREATE TABLE {t} (id {c} UNIQUE, a integer, score int)"
                ).format(t=sql.Identifier(f"part_{name}"), c=sql.SQL(column))
            )
        yield conn


@pytest.mark.parametrize("name", sorted(KEY_COLUMNS))
@settings(
    max_examples=int(os.environ.get("FERRY_PLANNER_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_planned_chunks_partition_the_rows_exactly(
    name: str, data: st.DataObject, key_tables: Walker
) -> None:
    """Random key sets (negative, sparse, int8 bounds, NaN, uuid, unicode and backslashes and
    the empty string in three collations, infinity and BC dates) and a random chunk size:
    each row lies in exactly one planned ``(lo, hi]`` as PostgreSQL evaluates the range
    predicate Ferry applies chunks with (``Statements.in_range``); every chunk holds
    chunk_size rows but the last, which holds the remainder."""
    column, keys = KEY_COLUMNS[name]
    conn = key_tables
    table = f"part_{name}"
    texts = data.draw(st.lists(keys, max_size=150), label="keys")
    chunk_size = data.draw(st.integers(1, 30), label="chunk_size")
    with_nulls = data.draw(st.integers(0, 3), label="null keys")
    t = sql.Identifier(table)
    conn.execute(sql.SQL("TRUNCATE {}").format(t))
    conn.execute(
        sql.SQL(
            "INSERT INTO {t} (id) SELECT CAST(k AS {c}) FROM unnest(%s::text[]) AS k "
            "ON CONFLICT DO NOTHING"
        ).format(t=t, c=sql.SQL(column.split(" COLLATE ")[0])),
        (texts,),
    )
    # rows with a NULL key are not the run's (resolve refuses them): never planned
    conn.execute(
        sql.SQL("INSERT INTO {t} (id) SELECT NULL FROM generate_series(1, %s)").format(t=t),
        (with_nulls,),
    )
    source, statements = _keys(conn, table, where="id IS NOT NULL")
    statements = Statements(replace(statements.spec, where=None), run_id=1)
    source = PostgresKeys(conn, statements)
    planned = list(plan_bounds(source, chunk_size))
    rows = {
        r["r"]
        for r in conn.execute(
            sql.SQL("SELECT ctid::text AS r FROM {t} WHERE id IS NOT NULL").format(t=t)
        )
    }
    seen: Counter[str] = Counter()
    sizes = []
    for lo, hi in planned:
        chunk = conn.execute(
            sql.SQL("SELECT t.ctid::text AS r FROM {t} AS t WHERE {r}").format(
                t=t, r=statements.in_range(KeyRange(lo, hi))
            )
        ).fetchall()
        seen.update(r["r"] for r in chunk)
        sizes.append(len(chunk))
    assert set(seen) == rows and all(n == 1 for n in seen.values())
    if not rows:
        assert planned == []
        return
    remainder = len(rows) % chunk_size or chunk_size
    assert sizes == [chunk_size] * (len(sizes) - 1) + [remainder]
    # A chunk too slow is cut after its first ``keep`` rows (workers.execution._split): the
    # two halves hold exactly the chunk's rows, the first exactly ``keep`` of them.
    which = data.draw(st.integers(0, len(planned) - 1), label="chunk to split")
    keep = data.draw(st.integers(1, sizes[which]), label="keep")
    lo, hi = planned[which]
    point = conn.execute(statements.split_point(KeyRange(lo, hi), keep)).fetchone()
    if keep == sizes[which]:  # nothing past the cut: the chunk runs whole
        assert point is None
        return
    assert point is not None and point["b"] is not None
    halves = [
        [
            r["r"]
            for r in conn.execute(
                sql.SQL("SELECT t.ctid::text AS r FROM {t} AS t WHERE {r}").format(
                    t=t, r=statements.in_range(part)
                )
            )
        ]
        for part in (KeyRange(lo, point["b"]), KeyRange(point["b"], hi))
    ]
    whole = [
        r["r"]
        for r in conn.execute(
            sql.SQL("SELECT t.ctid::text AS r FROM {t} AS t WHERE {r}").format(
                t=t, r=statements.in_range(KeyRange(lo, hi))
            )
        )
    ]
    assert len(halves[0]) == keep and sorted(halves[0] + halves[1]) == sorted(whole)
