"""A COPY TO read whole: byte for byte what psycopg's own loop reads, its errors raised as
psycopg raises them, and the transaction where psycopg would leave it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import pq, sql
from psycopg.abc import Query

from migrations.errors import TransientChunkError
from workers.copyout import copy_out
from workers.failures import classify

# Values that need COPY's escapes, NULLs, and text beyond ASCII.
ROWS = sql.SQL(
    "COPY (SELECT g, CASE WHEN g % 7 = 0 THEN NULL ELSE 'v' || g || E'\\t\\\\x\\n' END,"
    " 'ünï ' || repeat('y', g % 40) FROM generate_series(1, {}) g) TO STDOUT"
)


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url) as c:  # not autocommit: as a chunk transaction reads
        yield c


def _psycopg_read(conn: psycopg.Connection[Any], statement: Query) -> bytes:
    with conn.cursor().copy(statement) as copy:
        return b"".join(bytes(block) for block in copy)


@pytest.mark.parametrize("rows", [0, 1, 100_000])
def test_reads_what_psycopg_reads(conn: psycopg.Connection[Any], rows: int) -> None:
    statement = ROWS.format(sql.Literal(rows))
    expected = _psycopg_read(conn, statement)
    assert copy_out(conn.cursor(), statement) == expected
    assert expected.count(b"\n") == rows
    assert conn.info.transaction_status == pq.TransactionStatus.INTRANS
    assert conn.execute("SELECT 1").fetchone() == (1,)  # psycopg's own state is whole


@pytest.mark.parametrize("rows", [5, 100_000])
def test_an_error_met_mid_stream_is_psycopgs(conn: psycopg.Connection[Any], rows: int) -> None:
    """Rows already sent, then the server's error: raised with its class and SQLSTATE."""
    statement = sql.SQL(
        "COPY (SELECT g, 1 / ({} - g) FROM generate_series(1, {}) g) TO STDOUT"
    ).format(sql.Literal(rows - 2), sql.Literal(rows))
    with pytest.raises(psycopg.errors.DivisionByZero) as caught:
        copy_out(conn.cursor(), statement)
    assert caught.value.diag.sqlstate == "22012"
    assert conn.info.transaction_status == pq.TransactionStatus.INERROR
    conn.rollback()
    assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_lock_wait_timed_out_mid_stream_is_worth_a_retry(
    conn: psycopg.Connection[Any], database_url: str
) -> None:
    """The pandas path's locking read meets a row the application holds: lock_timeout ends
    the COPY after the rows before it, and the chunk is retried, not failed."""
    with psycopg.connect(database_url, autocommit=True) as setup:
        setup.execute("DROP TABLE IF EXISTS copyout_locked")
        setup.execute(
            "CREATE TABLE copyout_locked AS SELECT g AS id FROM generate_series(1, 20000) g"
        )
    with psycopg.connect(database_url) as app:
        app.execute("SELECT 1 FROM copyout_locked WHERE id = 15000 FOR UPDATE")
        conn.execute("SET LOCAL lock_timeout = '200ms'")
        statement = sql.SQL(
            "COPY (SELECT id FROM copyout_locked ORDER BY id FOR NO KEY UPDATE) TO STDOUT"
        )
        with pytest.raises(psycopg.errors.LockNotAvailable) as caught:
            copy_out(conn.cursor(), statement)
        assert isinstance(classify(caught.value), TransientChunkError)
        conn.rollback()
