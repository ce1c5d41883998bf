"""Keys end to end: NULL keys refused, date and time keys whatever the session's DateStyle and
TimeZone, text keys in any collation, uuid, negative and sparse keys: every row of the run is
applied exactly once (real CLI, real Celery workers, PostgreSQL as the judge).

The backfills here count: ``hits = coalesce(hits, 0) + 1``. A row no chunk covered keeps
NULL, a row two chunks covered holds 2, so "every row exactly once" is ``hits = 1``
everywhere, checked by PostgreSQL. Row counts are never multiples of the chunk size.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from coordinator.resolve import resolve
from migrations import Backfill
from tests.conftest import SERVER, WorkerPool, ferry
from tests.helpers import chunk_counts, fingerprint, launch, spec_file, wait_run
from workers.db import Database
from workers.planner import PostgresKeys
from workers.settings import Settings
from workers.statements import Statements

COUNTING_SPEC = """
b = Backfill(table="{table}", key="{key}", reads=[], writes=["hits"],
             sql={{"hits": "coalesce(hits, 0) + 1"}}, chunk_size={chunk})

def count(df):
    out = df[["{key}"]].copy()
    out["hits"] = pd.to_numeric(df["hits"]).fillna(0).astype("int64") + 1
    return out

p = Backfill(table="{table}", key="{key}", reads=["hits"], writes=["hits"], transform=count,
             chunk_size={chunk})
"""


def _counting(tmp_path: Path, table: str, chunk: int, key: str = "id", mode: str = "sql") -> str:
    """``b`` (SQL) or ``p`` (pandas): each row's ``hits`` one more than it was."""
    path = spec_file(
        tmp_path, COUNTING_SPEC.format(table=table, key=key, chunk=chunk), name=f"spec_{table}.py"
    )
    return f"{path}:{'b' if mode == 'sql' else 'p'}"


def _hits(conn: psycopg.Connection[Any], table: str) -> dict[Any, int]:
    """How many rows were applied 0 (NULL), 1, 2... times."""
    rows = conn.execute(
        sql.SQL("SELECT coalesce(hits, 0) AS h, count(*) FROM {} GROUP BY 1").format(
            sql.Identifier(table)
        )
    ).fetchall()
    return {int(r[0]): int(r[1]) for r in rows}


def _runs(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM ferry.runs").fetchone()
    assert row is not None
    return int(row[0])


# -- NULL keys -------------------------------------------------------------------------------
def _nullable_key_table(db: psycopg.Connection[Any], table: str, rows: int, nulls: int) -> None:
    db.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
    db.execute(
        sql.SQL("CREATE TABLE {} (id integer UNIQUE, hits integer, note text)").format(
            sql.Identifier(table)
        )
    )
    db.execute(
        sql.SQL(
            "INSERT INTO {} (id, note) SELECT CASE WHEN g <= %s THEN NULL ELSE g END, 'n' || g "
            "FROM generate_series(1, %s) AS g"
        ).format(sql.Identifier(table)),
        (nulls, rows),
    )


@pytest.mark.parametrize("verb", ["plan", "launch"])
def test_null_keys_are_refused_with_their_count(
    verb: str, db: psycopg.Connection[Any], env: dict[str, str], ledger_ready: None, tmp_path: Path
) -> None:
    """Found on main: UNIQUE(id) with NULL ids planned 0 chunks and completed, 0 of 60 rows
    written. Now: exit 2, one line with the count (no value), nothing written."""
    table = f"null_keys_{verb}"
    _nullable_key_table(db, table, 60, 7)
    before, runs = fingerprint(db, table), _runs(db)
    proc = ferry(verb, _counting(tmp_path, table, 25), env=env)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "NULL in 7 of the run's rows" in lines[0], proc.stderr
    assert "n1" not in proc.stderr and "Traceback" not in proc.stderr
    assert fingerprint(db, table) == before and _runs(db) == runs


def test_null_keys_left_out_by_the_filter_run_the_rest_exactly_once(
    db: psycopg.Connection[Any], env: dict[str, str], workers: WorkerPool, tmp_path: Path
) -> None:
    table = "null_keys_filtered"
    _nullable_key_table(db, table, 60, 7)
    run_id = launch(env, _counting(tmp_path, table, 10), "--where", "id IS NOT NULL")
    assert wait_run(db, run_id) == "completed"
    assert _hits(db, table) == {0: 7, 1: 53}
    assert chunk_counts(db, run_id) == {"done": 6}


def test_the_last_key_is_never_null(db: psycopg.Connection[Any], database_url: str) -> None:
    """The planner's own last key skips NULLs (NULLs sort first in DESC order): a NULL-key
    row the application inserts after the run's checks cannot empty the plan."""
    _nullable_key_table(db, "null_last", 30, 4)
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        spec = resolve(
            conn,
            Backfill(table="null_last", key="id", writes=["hits"], sql={"hits": "1"}),
            "test:last",
            where="id IS NOT NULL",
        )
        db.execute("INSERT INTO null_last (id) VALUES (NULL)")
        # the filter the checks were passed with, then the plan without it: NULLs are there
        unfiltered = Statements(replace(spec, where=None), 1)
        assert PostgresKeys(conn, unfiltered).last() == "30"


# -- DateStyle, TimeZone ---------------------------------------------------------------------
PINNED = (
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "extra_float_digits",
    "standard_conforming_strings",
)


@pytest.fixture
def odd_database(env: dict[str, str]) -> Iterator[str]:
    """A database of the test's own whose sessions default to ``DateStyle = 'SQL, DMY'`` and
    ``TimeZone = 'Pacific/Chatham'`` (+12:45/+13:45), with a ledger."""
    name = f"ferry_odd_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(SERVER, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        for setting, value in (
            ("DateStyle", "SQL, DMY"),
            ("TimeZone", "Pacific/Chatham"),
            ("IntervalStyle", "sql_standard"),
            ("extra_float_digits", "-15"),
        ):
            admin.execute(
                sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                    sql.Identifier(name), sql.Identifier(setting), sql.Literal(value)
                )
            )
    url = SERVER.rsplit("/", 1)[0] + "/" + name
    ferry("init", env={**env, "FERRY_DATABASE_URL": url}, check=True)
    yield url
    with psycopg.connect(SERVER, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def test_every_ferry_connection_has_the_pinned_settings(
    odd_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over the database's own defaults and over the user's PGOPTIONS alike."""
    monkeypatch.setenv("PGOPTIONS", "-c DateStyle=German -c TimeZone=Asia/Kolkata")
    db = Database(Settings(database_url=odd_database))
    try:
        with db.connect() as conn:
            shown = {
                name: conn.execute(
                    sql.SQL("SELECT current_setting({}) AS v").format(sql.Literal(name))
                ).fetchone()
                for name in PINNED
            }
    finally:
        db.dispose()
    assert {name: row["v"] if row else None for name, row in shown.items()} == {
        "DateStyle": "ISO, MDY",
        "IntervalStyle": "postgres",
        "TimeZone": "UTC",
        "extra_float_digits": "3",
        "standard_conforming_strings": "on",
    }


@pytest.mark.parametrize(
    ("key_type", "first", "mode"),
    [
        ("timestamptz", "2024-01-01 23:30:00+13:45", "sql"),
        ("timestamptz", "2024-01-01 23:30:00+13:45", "pandas"),
        ("date", "2024-01-01", "sql"),
        ("timestamp", "2024-01-01", "sql"),
    ],
)
def test_date_keys_apply_exactly_whatever_the_sessions_datestyle(
    key_type: str,
    first: str,
    mode: str,
    odd_database: str,
    own_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """Found on main: bounds written in the coordinator's DateStyle (``06/01/2024``) were read
    by a worker in another (June 1st): one chunk took all rows, the rest failed. Here the
    database says DMY in Chatham, the coordinator's PGOPTIONS say MDY in New York: days
    1..12 of each month read either way round. 150 rows of 7: the launch records 16 chunks
    and its walk the other 6, from a boundary it reads back from the ledger."""
    env = {**own_env, "FERRY_DATABASE_URL": odd_database}
    coordinator_env = {**env, "PGOPTIONS": "-c DateStyle=SQL,MDY -c TimeZone=America/New_York"}
    table = f"dated_{key_type}_{mode}"
    with psycopg.connect(odd_database, autocommit=True) as db:
        db.execute(
            sql.SQL(
                "CREATE TABLE {t} (id {kt} PRIMARY KEY, hits integer); "
                "INSERT INTO {t} (id) SELECT CAST({first} AS {kt}) + g * interval '1 day' "
                "FROM generate_series(0, 149) AS g"
            ).format(t=sql.Identifier(table), kt=sql.SQL(key_type), first=sql.Literal(first))
        )
        pool = WorkerPool(env, tmp_path)
        try:
            pool.start("dated")
            run_id = launch(coordinator_env, _counting(tmp_path, table, 7, mode=mode))
            status = wait_run(db, run_id, timeout=120)
        finally:
            pool.stop_all()
        assert (status, chunk_counts(db, run_id)) == ("completed", {"done": 22})
        assert _hits(db, table) == {1: 150}
        # the bounds are ISO text, the same whoever reads them
        bounds = db.execute(
            "SELECT hi FROM ferry.chunks WHERE run_id = %s ORDER BY chunk_no", (run_id,)
        ).fetchall()
        assert all(str(hi).startswith("2024-") for (hi,) in bounds), bounds


# -- key types and collations ----------------------------------------------------------------
KEYS: dict[str, tuple[str, str]] = {
    # name: (column type, key expression over g in 1..N); N is never a multiple of the chunk
    "int_negative_sparse": ("integer", "(g - 200) * (g % 7 + 1) * 1000 + g"),
    "bigint_bounds": (
        "bigint",
        "CASE g WHEN 1 THEN -9223372036854775808 WHEN 2 THEN 9223372036854775807 "
        "ELSE (g - 150) * 12345678901 END",
    ),
    "uuid": ("uuid", "md5(g::text)::uuid"),
    "numeric": ("numeric", "CASE WHEN g = 1 THEN 'NaN'::numeric ELSE (g - 100) / 7.0 END"),
    "text_c": (
        'text COLLATE "C"',
        "(ARRAY['a','B','b','A','ä','Z','-1','1',''])[g % 9 + 1] || '~' || g",
    ),
    "text_icu": (
        'text COLLATE "sv-x-icu"',
        "(ARRAY['a','B','b','A','ä','Z','-1','1',''])[g % 9 + 1] || '~' || g",
    ),
    "text_awkward": (
        "text",
        "CASE WHEN g = 1 THEN '' ELSE (ARRAY[E'back\\\\slash', E'tab\\t', 'ünï', '''q', "
        "'%s', '{a,b}', 'NULL', ' sp'])[g % 8 + 1] || g END",
    ),
    "varchar": ("varchar(12)", "'v' || (g * 7919 % 1000)::text || '-' || g"),
    "timestamptz_infinity": (
        "timestamptz",
        "CASE g WHEN 1 THEN '-infinity'::timestamptz WHEN 2 THEN 'infinity'::timestamptz "
        "WHEN 3 THEN '0044-03-15 12:00:00+00 BC'::timestamptz "
        "ELSE '2024-03-31 01:59:59.999999+00'::timestamptz + g * interval '37 minutes 1 us' END",
    ),
}


@pytest.mark.parametrize(
    ("name", "mode"), [(n, m) for n in sorted(KEYS) for m in ("sql", "pandas")]
)
def test_every_key_type_applies_every_row_exactly_once(
    name: str,
    mode: str,
    db: psycopg.Connection[Any],
    env: dict[str, str],
    workers: WorkerPool,
    tmp_path: Path,
) -> None:
    key_type, key_expr = KEYS[name]
    table = f"keys_{name}_{mode}"
    db.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
    db.execute(
        sql.SQL(
            "CREATE TABLE {t} (id {kt} PRIMARY KEY, hits integer); "
            "INSERT INTO {t} (id) SELECT {k} FROM generate_series(1, 301) AS g"
        ).format(t=sql.Identifier(table), kt=sql.SQL(key_type), k=sql.SQL(key_expr))
    )
    ref = _counting(tmp_path, table, 13, mode=mode)
    proc = ferry("plan", ref, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["chunks"] == 24  # 23 of 13 rows and one of 2
    run_id = launch(env, ref)
    status = wait_run(db, run_id)
    errors = db.execute(
        "SELECT DISTINCT error FROM ferry.chunks WHERE run_id = %s AND error IS NOT NULL", (run_id,)
    ).fetchall()
    assert (status, [e[0] for e in errors]) == ("completed", []), errors
    assert chunk_counts(db, run_id) == {"done": 24}
    assert _hits(db, table) == {1: 301}
    written = db.execute(
        "SELECT sum(rows_written) FROM ferry.chunks WHERE run_id = %s", (run_id,)
    ).fetchone()
    assert written is not None and int(written[0]) == 301
