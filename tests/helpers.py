"""Shared test helpers: tables, spec files, fingerprints and waiting on runs."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tests.conftest import ferry
from workers.model import RunSpec
from workers.statements import Statements


def fingerprint(conn: psycopg.Connection[Any], table: str, key: str = "id") -> str:
    """md5 of the whole table's text, in key order: equal means byte-identical values."""
    name = sql.Identifier(*table.split("."))
    row = conn.execute(
        sql.SQL(
            "SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t.{k}), '')) FROM {t} t"
        ).format(t=name, k=sql.Identifier(key))
    ).fetchone()
    assert row is not None
    return str(row[0])


def ledger_id(conn: psycopg.Connection[Any]) -> str:
    """The ledger's identity (workers.identity): it names every Redis key and task."""
    row = conn.execute("SELECT id FROM ferry.identity").fetchone()
    assert row is not None
    return str(row[0])


def pre_image_counts(conn: psycopg.Connection[Any], run_id: int) -> tuple[int, int]:
    """(pre-images, distinct keys among them) of a run, read through its own layout."""
    row = conn.execute("SELECT spec FROM ferry.runs WHERE id = %s", (run_id,)).fetchone()
    assert row is not None
    st = Statements(RunSpec.from_dict(row[0]), run_id)
    counts = conn.execute(
        sql.SQL("SELECT count(*), count(DISTINCT b.{k}) FROM {p} AS b").format(
            k=st.key, p=st.pre_images()
        )
    ).fetchone()
    assert counts is not None
    return int(counts[0]), int(counts[1])


def spec_file(tmp_path: Path, body: str, name: str = "spec.py") -> Path:
    path = tmp_path / name
    path.write_text(
        "from migrations import Backfill, ValidationRule\nimport pandas as pd\n"
        + textwrap.dedent(body)
    )
    return path


def launch(env: dict[str, str], ref: str, *args: str) -> int:
    """Launch a run, with no database-load bound unless the test gives one.

    The db-load bound paces a run by the time its chunks take, which on a machine loaded by
    the test suite itself stretches runs many times over; the tests of that bound (and of the
    other limits) give their limits explicitly.
    """
    if "--db-load" not in args:
        args = (*args, "--db-load", "0")
    proc = ferry("launch", ref, "--json", *args, env=env)
    assert proc.returncode == 0, proc.stderr
    return int(json.loads(proc.stdout)["run_id"])


def wait_run(
    conn: psycopg.Connection[Any],
    run_id: int,
    timeout: float = 180,
    until: tuple[str, ...] = (
        "completed",
        "completed_with_errors",
        "failed",
        "rolled_back",
        "cancelled",
    ),
) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute("SELECT status FROM ferry.runs WHERE id = %s", (run_id,)).fetchone()
        assert row is not None
        if row[0] in until:
            return str(row[0])
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not finish in {timeout}s")


def chunk_counts(conn: psycopg.Connection[Any], run_id: int) -> dict[str, int]:
    rows = conn.execute(
        "SELECT status, count(*) FROM ferry.chunks WHERE run_id = %s GROUP BY status", (run_id,)
    ).fetchall()
    return {r[0]: int(r[1]) for r in rows}


def make_numbers_table(
    conn: psycopg.Connection[Any],
    table: str,
    rows: int,
    key_expr: str = "g",
    key_type: str = "bigint",
) -> None:
    """A table with an int key, two ints, a text column and NULLs sprinkled in."""
    t = sql.Identifier(*table.split("."))
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(t))
    conn.execute(
        sql.SQL(
            "CREATE TABLE {} (id {} PRIMARY KEY, a integer, b integer, name text, "
            "score integer, code text, note text DEFAULT 'x')"
        ).format(t, sql.SQL(key_type))
    )
    conn.execute(
        sql.SQL(
            "INSERT INTO {t} (id, a, b, name) SELECT {k}, "
            "CASE WHEN g %% 13 = 0 THEN NULL ELSE g %% 1000 END, g %% 7, "
            "CASE WHEN g %% 17 = 0 THEN NULL ELSE '  name ' || g || ' ' END "
            "FROM generate_series(1, %s) AS g"
        ).format(t=t, k=sql.SQL(key_expr)),
        (rows,),
    )
    conn.execute(sql.SQL("ANALYZE {}").format(t))


def copy_table(conn: psycopg.Connection[Any], src: str, dst: str) -> None:
    s, d = sql.Identifier(*src.split(".")), sql.Identifier(*dst.split("."))
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(d))
    conn.execute(sql.SQL("CREATE TABLE {} AS SELECT * FROM {}").format(d, s))


SLOW_SPEC = """
import time

def slow(df):
    time.sleep({sleep})
    out = pd.DataFrame({{"id": df["id"]}})
    out["score"] = df["a"] * 3 + df["b"]
    out["code"] = df["name"].str.strip().str.upper()
    return out

b = Backfill(table="{table}", key="id", reads=["a", "b", "name"], writes=["score", "code"],
             transform=slow, chunk_size={chunk})
s = Backfill(table="{table}", key="id", reads=["a", "b", "name"], writes=["score", "code"],
             sql={{"score": "a * 3 + b", "code": "upper(trim(name))"}}, chunk_size={chunk})
"""


def slow_spec(tmp_path: Path, table: str, chunk: int, sleep: float = 0.0) -> Path:
    """A spec file over a numbers table: ``b`` (pandas, sleeping per chunk) and ``s`` (SQL)."""
    return spec_file(
        tmp_path, SLOW_SPEC.format(table=table, chunk=chunk, sleep=sleep), name=f"spec_{table}.py"
    )


def prepare_reference(db: psycopg.Connection[Any], table: str, rows: int) -> tuple[str, str]:
    """A numbers table, and (its fingerprint now, the fingerprint a single UPDATE gives)."""
    make_numbers_table(db, table, rows)
    copy_table(db, table, f"{table}_ref")
    db.execute(f"UPDATE {table}_ref SET score = a * 3 + b, code = upper(trim(name))")
    return fingerprint(db, table), fingerprint(db, f"{table}_ref")
