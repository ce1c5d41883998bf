"""End to end: the real CLI launches, real Celery workers apply, PostgreSQL checks the result."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import WorkerPool, ferry
from tests.helpers import (
    chunk_counts,
    copy_table,
    fingerprint,
    launch,
    ledger_id,
    make_numbers_table,
    pre_image_counts,
    spec_file,
    wait_run,
)

pytestmark = pytest.mark.usefixtures("workers")

SQL_SPEC = """
score_sql = Backfill(table="{table}", key="id", reads=["a", "b", "name"], writes=["score", "code"],
                     sql={{"score": "a * 3 + b", "code": "upper(trim(name))"}}, chunk_size={chunk})
"""

PANDAS_SPEC = """
def fn(df):
    out = pd.DataFrame({{"id": df["id"]}})
    out["score"] = df["a"] * 3 + df["b"]
    out["code"] = df["name"].str.strip().str.upper()
    return out

score_pandas = Backfill(table="{table}", key="id", reads=["a", "b", "name"],
                        writes=["score", "code"], transform=fn, chunk_size={chunk})
"""

REFERENCE_UPDATE = "UPDATE {t} SET score = a * 3 + b, code = upper(trim(name))"


def _reference(db: psycopg.Connection[Any], table: str) -> str:
    copy_table(db, table, f"{table}_ref")
    db.execute(REFERENCE_UPDATE.format(t=f"{table}_ref"))
    return fingerprint(db, f"{table}_ref")


@pytest.mark.parametrize(("mode", "template"), [("sql", SQL_SPEC), ("pandas", PANDAS_SPEC)])
def test_100k_rows_equal_single_statement(
    mode: str, template: str, db: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    table = f"big_{mode}"
    make_numbers_table(db, table, 100_000)
    expected = _reference(db, table)
    before = fingerprint(db, table)
    path = spec_file(tmp_path, template.format(table=table, chunk=5000))
    attr = "score_sql" if mode == "sql" else "score_pandas"
    run_id = launch(env, f"{path}:{attr}")
    assert wait_run(db, run_id) == "completed"
    assert fingerprint(db, table) == expected
    counts = db.execute(
        "SELECT count(*), sum(rows_read), sum(rows_written), min(attempts) FROM ferry.chunks "
        "WHERE run_id = %s AND status = 'done'",
        (run_id,),
    ).fetchone()
    assert counts is not None
    assert counts[0] == 20 and counts[1] == 100_000 and counts[3] >= 1
    # rows whose values did not change are not written, and not backed up
    unchanged = db.execute(
        f"SELECT count(*) FROM {table}_ref WHERE score IS NULL AND code IS NULL"
    ).fetchone()
    assert unchanged is not None
    assert counts[2] == 100_000 - unchanged[0]
    assert pre_image_counts(db, run_id) == (counts[2], counts[2])

    status = ferry("status", str(run_id), "--json", env=env)
    assert status.returncode == 0, status.stderr
    health = json.loads(status.stdout)
    assert health["status"] == "healthy" and health["run_status"] == "completed"
    assert health["chunks"]["done"] == 20 and health["rows"]["processed"] == 100_000
    assert set(health["metrics"]) >= {"duration", "errorRate", "dataProcessed", "resourceUsage"}

    # rollback restores every byte
    rb = ferry("rollback", str(run_id), "--wait", env=env)
    assert rb.returncode == 0, rb.stderr
    assert wait_run(db, run_id, until=("rolled_back",)) == "rolled_back"
    assert fingerprint(db, table) == before
    assert chunk_counts(db, run_id) == {"rolled_back": 20}


@pytest.mark.parametrize(
    ("key_type", "key_expr"),
    [
        ("bigint", "g * g"),  # sparse: gaps grow with g
        ("uuid", "md5(g::text)::uuid"),
        ("text", "'k' || md5(g::text)"),
        ("integer", "g * 3"),
    ],
)
def test_key_types_and_sparse_keys(
    key_type: str, key_expr: str, db: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    table = f"keys_{key_type}"
    make_numbers_table(db, table, 7_000, key_expr=key_expr, key_type=key_type)
    expected = _reference(db, table)
    path = spec_file(tmp_path, SQL_SPEC.format(table=table, chunk=1000))
    run_id = launch(env, f"{path}:score_sql")
    assert wait_run(db, run_id) == "completed"
    assert fingerprint(db, table) == expected
    sizes = [
        r[0]
        for r in db.execute(
            "SELECT rows_read FROM ferry.chunks WHERE run_id = %s ORDER BY chunk_no", (run_id,)
        )
    ]
    assert sizes == [1000] * 7


RULED_SPEC = (
    PANDAS_SPEC
    + """
score_ruled = Backfill(table="{table}", key="id", reads=["a", "b", "name"],
                       writes=["score", "code"], transform=fn, chunk_size={chunk},
                       rules=[ValidationRule(field="score", type="range", condition="0..1000000",
                                             error_message="score", action="skip")])
"""
)


@pytest.mark.parametrize(
    ("mode", "template"), [("sql", SQL_SPEC), ("pandas", PANDAS_SPEC), ("ruled", RULED_SPEC)]
)
def test_where_filter_narrows_rows(
    mode: str, template: str, db: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    """The filter may name a written column (a backfill of only the rows still NULL): on the
    pandas path that column is staged too, and the filter must still mean the table's own."""
    make_numbers_table(db, "filtered", 5_000)
    db.execute("UPDATE filtered SET score = -1 WHERE id % 5 = 0")
    path = spec_file(tmp_path, template.format(table="filtered", chunk=500))
    run_id = launch(env, f"{path}:score_{mode}", "--where", "b = 0 AND score IS NULL")
    assert wait_run(db, run_id) == "completed"
    row = db.execute(
        "SELECT count(*) FILTER (WHERE score >= 0), "
        "count(*) FILTER (WHERE b = 0 AND id % 5 <> 0 AND a IS NOT NULL), "
        "count(*) FILTER (WHERE score = -1), count(*) FILTER (WHERE id % 5 = 0) FROM filtered"
    ).fetchone()
    assert row is not None and row[0] == row[1] > 0 and row[2] == row[3]


def test_empty_table_completes_with_zero_chunks(
    db: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    make_numbers_table(db, "empty_t", 0)
    path = spec_file(tmp_path, SQL_SPEC.format(table="empty_t", chunk=100))
    proc = ferry("launch", f"{path}:score_sql", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["chunks"] == 0 and out["status"] == "completed"
    row = db.execute(
        "SELECT status, total_chunks FROM ferry.runs WHERE id = %s", (out["run_id"],)
    ).fetchone()
    assert row == ("completed", 0)


def test_redelivered_done_chunk_is_a_noop(
    db: psycopg.Connection[Any],
    env: dict[str, str],
    tmp_path: Path,
    workers: WorkerPool,
    database_url: str,
    redis_url: str,
    queue: str,
) -> None:
    make_numbers_table(db, "redeliver", 3_000)
    path = spec_file(tmp_path, SQL_SPEC.format(table="redeliver", chunk=1000))
    run_id = launch(env, f"{path}:score_sql")
    assert wait_run(db, run_id) == "completed"
    ledger_sql = (
        "SELECT chunk_no, status, attempts, rows_written, finished_at FROM ferry.chunks "
        "WHERE run_id = %s ORDER BY chunk_no"
    )
    ledger_before = db.execute(ledger_sql, (run_id,)).fetchall()
    # The application changes a row after its chunk ran: a redelivery must not touch it.
    db.execute("UPDATE redeliver SET score = -1 WHERE id = 1")
    before = fingerprint(db, "redeliver")

    from workers.celery_app import make_app
    from workers.settings import Settings

    app = make_app(
        Settings.from_env({}, database_url=database_url, redis_url=redis_url, queue=queue)
    )
    from workers.dispatch import chunk_task_id

    ledger = ledger_id(db)
    ids = [chunk_task_id(ledger, run_id, n) for n in range(3)]  # the very task ids the run used
    for n, task_id in enumerate(ids):
        app.send_task(
            "ferry.chunk",
            args=[run_id, n],
            kwargs={"ledger": ledger},
            queue=queue,
            task_id=task_id,
            ignore_result=True,
        )

    def noops() -> list[str]:
        logs = workers.logs()
        return [
            i
            for i in ids
            if re.search(
                # a no-op: the chunk found done, or (once the worker's one-second cache of
                # the run's state has expired) the whole task stopped, the run being over
                rf"{re.escape(i)}\] succeeded in [0-9.]+s: {{[^}}]*'outcome': "
                r"('noop'|'stop', 'reason': 'run completed')",
                logs,
            )
        ]

    deadline = time.monotonic() + 60
    while noops() != ids and time.monotonic() < deadline:
        time.sleep(0.2)
    logs = workers.logs()
    assert noops() == ids, logs[-3000:]
    assert db.execute(ledger_sql, (run_id,)).fetchall() == ledger_before
    assert fingerprint(db, "redeliver") == before


def test_quarantine_skips_rows_and_masks_values(
    db: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path, redis_url: str
) -> None:
    make_numbers_table(db, "quar", 4_000)
    db.execute("UPDATE quar SET name = 'SSN 123-45-6789' WHERE id % 500 = 0")
    path = spec_file(
        tmp_path,
        """
q = Backfill(table="quar", key="id", reads=["a", "b", "name"], writes=["score", "code"],
             sql={"score": "a * 3 + b", "code": "upper(trim(name))"}, chunk_size=1000,
             rules=[ValidationRule(field="code", type="format", condition="NAME [0-9]+",
                                   error_message="bad code", action="skip")])
""",
    )
    run_id = launch(env, f"{path}:q")
    assert wait_run(db, run_id) == "completed_with_errors"
    rows = db.execute(
        "SELECT row_key, field, rule_type, message, value_masked FROM ferry.quarantine "
        "WHERE run_id = %s ORDER BY row_key::bigint",
        (run_id,),
    ).fetchall()
    assert [int(r[0]) for r in rows] == list(range(500, 4001, 500))
    assert all(r[1] == "code" and r[2] == "format" and r[3] == "bad code" for r in rows)
    assert all(r[4].startswith("***") and "123-45" not in r[4] for r in rows)
    # equal values mask equally, so they can be correlated without being revealed
    assert len({r[4] for r in rows}) == 1
    skipped = db.execute("SELECT count(*) FROM quar WHERE id % 500 = 0 AND code IS NULL").fetchone()
    assert skipped == (8,)

    import redis

    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter("ferry:*"):
        kind = client.type(key)
        blob = (
            str(client.xrange(key))
            if kind == b"stream"
            else str(client.hgetall(key))
            if kind == b"hash"
            else str(client.get(key))
        )
        assert "123-45-6789" not in blob and "123-45-6789" not in key.decode()


def test_failed_chunk_error_is_masked(
    db: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    db.execute("DROP TABLE IF EXISTS dates_t")
    db.execute("CREATE TABLE dates_t (id int PRIMARY KEY, dob_text text, dob date)")
    db.execute("INSERT INTO dates_t SELECT g, '2001-01-01' FROM generate_series(1, 300) g")
    db.execute("UPDATE dates_t SET dob_text = 'Jane Roe 1961' WHERE id = 250")
    path = spec_file(
        tmp_path,
        """
d = Backfill(table="dates_t", key="id", reads=["dob_text"], writes=["dob"],
             sql={"dob": "to_date(dob_text, 'YYYY-MM-DD')"}, chunk_size=100)
""",
    )
    # the sample pre-flight covers the first 200 rows only, so the bad row fails at run time
    run_id = launch(env, f"{path}:d")
    assert wait_run(db, run_id) == "failed"
    err = db.execute(
        "SELECT error FROM ferry.chunks WHERE run_id = %s AND status = 'failed'", (run_id,)
    ).fetchone()
    assert err is not None and "22007" in err[0] and "Jane" not in err[0]
    assert chunk_counts(db, run_id) == {"done": 2, "failed": 1}
    status = ferry("status", str(run_id), env=env)
    assert status.returncode == 1 and "Jane" not in status.stdout


def test_sigkilled_worker_loses_nothing(
    db: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path, queue: str
) -> None:
    """A whole worker (main process and child) SIGKILLed mid-chunk; another finishes the run."""
    kill_env = {**env, "FERRY_QUEUE": f"{queue}-kill"}
    pool = WorkerPool(kill_env, tmp_path)
    try:
        pool.start("victim")
        pool.start("survivor")
        make_numbers_table(db, "killme", 30_000)
        expected = _reference(db, "killme")
        path = spec_file(
            tmp_path,
            """
import time

def slow(df):
    time.sleep(0.3)
    out = pd.DataFrame({"id": df["id"]})
    out["score"] = df["a"] * 3 + df["b"]
    out["code"] = df["name"].str.strip().str.upper()
    return out

k = Backfill(table="killme", key="id", reads=["a", "b", "name"], writes=["score", "code"],
             transform=slow, chunk_size=1000)
""",
        )
        run_id = launch(kill_env, f"{path}:k")
        import time

        deadline = time.monotonic() + 60
        victim_chunk = None
        while victim_chunk is None and time.monotonic() < deadline:
            row = db.execute(
                "SELECT chunk_no FROM ferry.chunks WHERE run_id = %s AND status = 'running' "
                "AND worker LIKE 'victim@%%' AND chunk_no >= 4",
                (run_id,),
            ).fetchone()
            victim_chunk = row[0] if row else None
            time.sleep(0.02)
        assert victim_chunk is not None, "the victim never took a chunk"
        pool.kill("victim")  # mid-chunk: its transform sleeps 0.3 s inside the transaction
        killed_at = time.monotonic()
        assert wait_run(db, run_id, timeout=120) == "completed"
        assert time.monotonic() - killed_at < 60
        assert fingerprint(db, "killme") == expected
        saved, keys = pre_image_counts(db, run_id)
        assert saved == keys
        counts = db.execute(
            "SELECT sum(rows_read), max(attempts) FROM ferry.chunks WHERE run_id = %s", (run_id,)
        ).fetchone()
        assert counts is not None and counts[0] == 30_000
        rerun = db.execute(
            "SELECT status, attempts, worker FROM ferry.chunks WHERE run_id = %s AND chunk_no = %s",
            (run_id, victim_chunk),
        ).fetchone()
        assert rerun is not None and rerun[0] == "done" and rerun[1] >= 2
        assert rerun[2].startswith("survivor@")
    finally:
        pool.stop_all()


def test_named_library_transform_runs_from_the_ledger_alone(
    db: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    """A Backfill naming a transforms-library step: the spec file may vanish after launch."""
    db.execute(
        "CREATE TABLE named_dob AS SELECT g AS id, CASE g % 3"
        " WHEN 0 THEN to_char(date '1950-01-01' + g, 'YYYY-MM-DD')"
        " WHEN 1 THEN to_char(date '1950-01-01' + g, 'MM/DD/YYYY')"
        " ELSE 'unknown' END AS dob_text, NULL::date AS dob FROM generate_series(1, 3000) g"
    )
    db.execute("ALTER TABLE named_dob ADD PRIMARY KEY (id)")
    path = spec_file(
        tmp_path,
        """
b = Backfill(table="named_dob", key="id", reads=["dob_text"], writes=["dob"],
             transform="standardize_dates", params={"src": "dob_text", "dst": "dob"},
             chunk_size=500)
""",
    )
    proc = ferry("plan", f"{path}:b", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    run_id = launch(env, f"{path}:b", "--db-load", "0")
    path.unlink()  # workers build the transform from the run's stored steps
    assert wait_run(db, run_id) == "completed"
    wrong = db.execute(
        "SELECT count(*) FROM named_dob WHERE dob IS DISTINCT FROM"
        " CASE id % 3 WHEN 2 THEN NULL ELSE date '1950-01-01' + id END"
    ).fetchone()
    assert wrong == (0,)
    stored = db.execute("SELECT spec->'transform' FROM ferry.runs WHERE id = %s", (run_id,))
    (transform,) = stored.fetchone() or (None,)
    assert transform["named"][0]["name"] == "standardize_dates"


WIDE_SPEC = """
wide = Backfill(table="{table}", key="id", reads=["doc"], writes=["doc"],
                sql={{"doc": "upper(doc)"}}, chunk_size=10000)
"""


@pytest.mark.parametrize(("width", "layout"), [(40, "packed"), (24_000, "rows")])
def test_pre_image_layout_follows_the_width_of_a_chunk(
    width: int, layout: str, db: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    """Narrow pre-images are packed a row per chunk; ones too wide for one value (10,000 rows
    of ~12 kB) are kept a row per key. Either way a rollback restores every byte."""
    table = f"wide_{layout}"
    db.execute(f"DROP TABLE IF EXISTS {table}")
    db.execute(f"CREATE TABLE {table} (id integer PRIMARY KEY, doc text)")
    # md5 hex is hard to compress, so the stored width is close to the text's
    db.execute(
        f"INSERT INTO {table} SELECT g, (SELECT string_agg(md5(g::text || '.' || i), '') "
        "FROM generate_series(1, %s) AS i) FROM generate_series(1, 1500) AS g",
        (width // 32,),
    )
    before = fingerprint(db, table)
    path = spec_file(tmp_path, WIDE_SPEC.format(table=table))
    run_id = launch(env, f"{path}:wide")
    assert wait_run(db, run_id) == "completed"
    spec = db.execute("SELECT spec FROM ferry.runs WHERE id = %s", (run_id,)).fetchone()
    assert spec is not None and spec[0]["extra"]["pre_images"] == layout
    assert pre_image_counts(db, run_id) == (1500, 1500)
    stored = db.execute(f"SELECT count(*) FROM ferry.backup_{run_id}").fetchone()
    assert stored == ((1,) if layout == "packed" else (1500,))
    # a packed chunk is one large value: compressed with lz4 where the server has it
    methods = db.execute(
        "SELECT DISTINCT attcompression::text FROM pg_attribute WHERE attrelid = %s::regclass "
        "AND attname IN ('id', 'doc')",
        (f"ferry.backup_{run_id}",),
    ).fetchall()
    lz4 = db.execute(
        "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"
    ).fetchone()
    assert methods == [("l",) if layout == "packed" and lz4 == (True,) else ("",)]
    assert db.execute(f"SELECT count(*) FROM {table} WHERE doc <> upper(doc)").fetchone() == (0,)
    rolled = ferry("rollback", str(run_id), "--wait", env=env)
    assert rolled.returncode == 0, rolled.stderr
    assert fingerprint(db, table) == before


AWKWARD_SPEC = """
def fn(df):
    out = pd.DataFrame({{"id": df["id"], "dst": df["src"].str.upper(), "amount": 1.5,
                        "tags": "{{new}}"}})
    if {reorder}:  # rows back in another order, some left out (their rows stay as they are)
        out = out[out["id"] % 5 != 0].iloc[::-1]
    return out

awkward = Backfill(table="{table}", key="id", reads=["src"], writes=["dst", "amount", "tags"],
                   transform=fn, chunk_size=250)
"""


@pytest.mark.parametrize("reorder", [False, True])
def test_pandas_pre_images_of_awkward_old_values(
    reorder: bool, db: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    """The pandas path stages the written columns' old values as COPY text beside the new
    ones and takes the pre-images from there: backslashes, tabs, newlines, NULLs, empty
    strings, numeric NaN and arrays come back byte-identical on rollback, whether the
    transform returns its rows in order or reorders and drops some."""
    table = f"awkward_{int(reorder)}"
    db.execute(f"DROP TABLE IF EXISTS {table}")
    db.execute(
        f"CREATE TABLE {table} (id bigint PRIMARY KEY, src text, dst text, "
        "amount numeric(12, 4), tags text[])"
    )
    db.execute(
        f"INSERT INTO {table} SELECT g, 'v' || g, "
        "(ARRAY[E'back\\\\slash', E'tab\\there', E'new\\nline', '', NULL, 'ünï', "
        "'\\N', 'plain'])[g % 8 + 1], "
        "CASE WHEN g % 6 = 0 THEN 'NaN'::numeric WHEN g % 6 = 1 THEN NULL ELSE g / 7.0 END, "
        "CASE WHEN g % 4 = 0 THEN NULL ELSE ARRAY[E'a\\tb', NULL, '\"q\"', 'x' || g] END "
        "FROM generate_series(1, 1000) g"
    )
    before = fingerprint(db, table)
    path = spec_file(tmp_path, AWKWARD_SPEC.format(table=table, reorder=reorder))
    run_id = launch(env, f"{path}:awkward")
    assert wait_run(db, run_id) == "completed"
    left = db.execute(
        f"SELECT count(*) FILTER (WHERE dst = upper(src) AND amount = 1.5 AND tags = '{{new}}'),"
        f" count(*) FILTER (WHERE dst IS DISTINCT FROM upper(src)) FROM {table}"
    ).fetchone()
    kept = 200 if reorder else 0
    assert left == (1000 - kept, kept)
    written = db.execute(
        "SELECT sum(rows_written) FROM ferry.chunks WHERE run_id = %s", (run_id,)
    ).fetchone()
    assert written == (1000 - kept,) and pre_image_counts(db, run_id) == (1000 - kept,) * 2
    rb = ferry("rollback", str(run_id), "--wait", env=env)
    assert rb.returncode == 0, rb.stderr
    assert fingerprint(db, table) == before
