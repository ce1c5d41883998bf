"""What an adversarial review of the merged change tried, as a careless user, a hostile one
and a crash, with the real CLI, real Celery workers, PostgreSQL and Redis.

Each test is one attack. What holds stays a plain test (it guards the behaviour); what
breaks is marked ``xfail(strict=True)`` with the reason, so the suite stays green until the
product is fixed and then says so (an unexpected pass fails the run).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.conftest import WorkerPool, ferry
from tests.helpers import fingerprint, launch, ledger_id, spec_file, wait_run


def _table(db: psycopg.Connection[Any], name: str, ddl: str, rows: str) -> None:
    """(Re)create table ``name`` with columns ``ddl`` filled by the SELECT ``rows``."""
    t = sql.Identifier(name)
    db.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(t))
    db.execute(sql.SQL("CREATE TABLE {} (" + ddl + ")").format(t))
    db.execute(sql.SQL("INSERT INTO {} " + rows).format(t))


def _send(
    database_url: str,
    redis_url: str,
    queue: str,
    name: str,
    run_id: int,
    chunk_no: int,
    ledger: str,
) -> None:
    """A task put on the queue by hand (anyone who can write to the broker can do this)."""
    from workers.celery_app import make_app
    from workers.settings import Settings

    app = make_app(
        Settings.from_env({}, database_url=database_url, redis_url=redis_url, queue=queue)
    )
    app.send_task(
        name, args=[run_id, chunk_no], kwargs={"ledger": ledger}, queue=queue, ignore_result=True
    )


def _one_line_exit_2(proc: Any) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- forged tasks


def test_a_stray_rollback_task_does_not_undo_a_completed_run(
    pool: WorkerPool,
    own_env: dict[str, str],
    db: psycopg.Connection[Any],
    database_url: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    pool.start("w1")
    _table(
        db,
        "adv_stray",
        "id int PRIMARY KEY, v int, out text",
        "SELECT g, g, NULL FROM generate_series(1, 30) g",
    )
    spec = spec_file(
        tmp_path,
        """
        b = Backfill(table="adv_stray", key="id", reads=["v"], writes=["out"],
                     sql={"out": "v::text"}, chunk_size=10)
    """,
    )
    run_id = launch(own_env, f"{spec}:b")
    assert wait_run(db, run_id) == "completed"
    after_run = fingerprint(db, "adv_stray")
    _send(
        database_url,
        redis_url,
        own_env["FERRY_QUEUE"],
        "ferry.rollback_chunk",
        run_id,
        0,
        ledger_id(db),
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "rollback_chunk" not in pool.logs():
        time.sleep(0.2)
    time.sleep(2)  # the task, once received, takes well under a second
    assert "rollback_chunk" in pool.logs()
    statuses = db.execute(
        "SELECT array_agg(DISTINCT status) FROM ferry.chunks WHERE run_id = %s", (run_id,)
    ).fetchone()
    assert statuses is not None and statuses[0] == ["done"]
    assert fingerprint(db, "adv_stray") == after_run


def test_a_stray_chunk_task_does_not_reapply_a_rolled_back_run(
    pool: WorkerPool,
    own_env: dict[str, str],
    db: psycopg.Connection[Any],
    database_url: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    pool.start("w1")
    _table(
        db,
        "adv_stray2",
        "id int PRIMARY KEY, v int, out text",
        "SELECT g, g, NULL FROM generate_series(1, 30) g",
    )
    before = fingerprint(db, "adv_stray2")
    spec = spec_file(
        tmp_path,
        """
        b = Backfill(table="adv_stray2", key="id", reads=["v"], writes=["out"],
                     sql={"out": "v::text"}, chunk_size=10)
    """,
    )
    run_id = launch(own_env, f"{spec}:b")
    assert wait_run(db, run_id) == "completed"
    assert ferry("rollback", str(run_id), "--wait", env=own_env, timeout=60).returncode == 0
    assert fingerprint(db, "adv_stray2") == before
    for n in range(3):
        _send(
            database_url, redis_url, own_env["FERRY_QUEUE"], "ferry.chunk", run_id, n, ledger_id(db)
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and pool.logs().count("'reason': 'run rolled_back'") < 3:
        time.sleep(0.2)
    assert fingerprint(db, "adv_stray2") == before


# --------------------------------------------------------------------------- PHI


PHI_SPEC = """
def {name}(df):
    r = df.iloc[0]
    raise ValueError({message})

b = Backfill(table="adv_phi", key="id", reads=["name", "ssn"], writes=["out"],
             transform={name}, chunk_size=10, phi=["name", "ssn"])
"""


@pytest.mark.parametrize(
    "message",
    [
        pytest.param("f\"cannot handle {r['name']}\"", id="as-is"),
        pytest.param("f\"ssn {r['ssn'].replace('-', '')}\"", id="ssn-digits"),
        pytest.param(
            "f\"cannot handle {r['name'].upper()}\"",
            id="upper",
        ),
        pytest.param(
            "f\"surname={r['name'].split()[1].lower()}\"",
            id="lower-word",
        ),
    ],
)
@pytest.mark.usefixtures("ledger_ready")
def test_a_users_exception_never_shows_a_phi_value(
    env: dict[str, str], db: psycopg.Connection[Any], tmp_path: Path, message: str
) -> None:
    _table(
        db,
        "adv_phi",
        "id int PRIMARY KEY, name text, ssn text, out text",
        "VALUES (1, 'Jane Roe', '123-45-6789', NULL)",
    )
    spec = spec_file(tmp_path, PHI_SPEC.format(name="boom", message=message))
    proc = ferry("plan", f"{spec}:b", env=env)
    assert proc.returncode != 0
    assert "pre-flight" in proc.stderr, proc.stderr
    said = (proc.stdout + proc.stderr).lower()
    for word in ("jane", "roe", "123456789", "123-45-6789"):
        assert word not in said, proc.stderr


# --------------------------------------------------------------------------- tampering


@pytest.mark.parametrize(
    "expression",
    [
        pytest.param("'PWNED'", id="other-constant"),
        pytest.param("(SELECT string_agg(usename, ',') FROM pg_user)", id="catalog-read"),
        pytest.param("pg_catalog.set_config('application_name', 'PWNED', false)", id="volatile"),
    ],
)
def test_a_rewritten_stored_spec_is_not_executed(
    pool: WorkerPool,
    own_env: dict[str, str],
    db: psycopg.Connection[Any],
    tmp_path: Path,
    expression: str,
) -> None:
    _table(
        db,
        "adv_tamper",
        "id int PRIMARY KEY, v int, out text",
        "SELECT g, g, NULL FROM generate_series(1, 30) g",
    )
    spec = spec_file(
        tmp_path,
        """
        b = Backfill(table="adv_tamper", key="id", reads=["v"], writes=["out"],
                     sql={"out": "v::text"}, chunk_size=10)
    """,
    )
    run_id = launch(own_env, f"{spec}:b")  # no worker yet: every chunk waits on the queue
    db.execute(
        "UPDATE ferry.runs SET spec = jsonb_set(spec, '{sql,out}', to_jsonb(%s::text)) "
        "WHERE id = %s",
        (expression, run_id),
    )
    pool.start("w1")
    assert wait_run(db, run_id, timeout=60) == "failed"
    errors = db.execute(
        "SELECT DISTINCT error FROM ferry.chunks WHERE run_id = %s AND error IS NOT NULL",
        (run_id,),
    ).fetchall()
    assert errors and all("changed after launch" in e[0] for e in errors), errors
    wrong = db.execute(
        "SELECT count(*) FROM adv_tamper WHERE out IS DISTINCT FROM v::text AND out IS NOT NULL"
    ).fetchone()
    assert wrong is not None and wrong[0] == 0


# --------------------------------------------------------------------------- crashes


def test_a_worker_killed_mid_restore_leaves_a_rollback_that_still_finishes(
    pool: WorkerPool,
    own_env: dict[str, str],
    db: psycopg.Connection[Any],
    database_url: str,
    tmp_path: Path,
) -> None:
    """The restore of a chunk waits on a row the application holds; its worker is SIGKILLed
    there. A new worker must finish the rollback and give every byte back."""
    _table(
        db,
        "adv_crash",
        "id int PRIMARY KEY, v int, out text",
        "SELECT g, g, CASE WHEN g % 7 = 0 THEN NULL ELSE E'\\\\x' || g END "
        "FROM generate_series(1, 100) g",
    )
    before = fingerprint(db, "adv_crash")
    spec = spec_file(
        tmp_path,
        """
        b = Backfill(table="adv_crash", key="id", reads=["v"], writes=["out"],
                     sql={"out": "v::text || 'ü'"}, chunk_size=50)
    """,
    )
    pool.start("w1")
    run_id = launch(own_env, f"{spec}:b")
    assert wait_run(db, run_id) == "completed"
    with psycopg.connect(database_url) as app:  # the application holds row 25 in a transaction
        app.execute("SELECT * FROM adv_crash WHERE id = 25 FOR UPDATE")
        assert ferry("rollback", str(run_id), env=own_env).returncode in (0, 1)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            waiting = db.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query ILIKE '%%adv_crash%%'"
            ).fetchone()
            if waiting and waiting[0]:
                break
            time.sleep(0.05)
        pool.kill("w1")
    pool.start("w2")
    try:
        status = wait_run(db, run_id, timeout=60, until=("rolled_back", "rollback_failed"))
    except AssertionError:
        chunks = db.execute(
            "SELECT chunk_no, status, attempts, error FROM ferry.chunks WHERE run_id = %s",
            (run_id,),
        ).fetchall()
        run = db.execute("SELECT status FROM ferry.runs WHERE id = %s", (run_id,)).fetchone()
        raise AssertionError(
            f"rollback never ended: {run} {chunks}\n{pool.logs()[-3000:]}"
        ) from None
    assert status == "rolled_back"
    assert fingerprint(db, "adv_crash") == before


def test_a_launch_that_failed_on_its_broker_writes_nothing(
    pool: WorkerPool,
    own_env: dict[str, str],
    db: psycopg.Connection[Any],
    tmp_path: Path,
) -> None:
    _table(
        db,
        "adv_broker",
        "id int PRIMARY KEY, v int, out text",
        "SELECT g, g, NULL FROM generate_series(1, 30) g",
    )
    before = fingerprint(db, "adv_broker")
    spec = spec_file(
        tmp_path,
        """
        b = Backfill(table="adv_broker", key="id", reads=["v"], writes=["out"],
                     sql={"out": "v::text"}, chunk_size=10)
    """,
    )
    pool.start("w1")  # the workers reach the right Redis; this one coordinator does not
    proc = ferry(
        "launch",
        f"{spec}:b",
        "--db-load",
        "0",
        env={**own_env, "FERRY_REDIS_URL": "redis://127.0.0.1:1/0"},
    )
    assert proc.returncode != 0, proc.stdout
    runs = db.execute(
        "SELECT id, status, started_at FROM ferry.runs WHERE spec->>'table' = 'adv_broker'"
    ).fetchall()
    # A failed launch either leaves nothing behind, or says which run it left to resume.
    if any(re.search(rf"\brun {r[0]}\b", proc.stderr) for r in runs):
        return
    deadline = time.monotonic() + 60  # ten stall intervals of the workers' sweep
    while time.monotonic() < deadline and fingerprint(db, "adv_broker") == before:
        time.sleep(0.5)
    assert fingerprint(db, "adv_broker") == before, (runs, proc.stderr)


# --------------------------------------------------------------------------- guards that held


@pytest.mark.parametrize(
    "where",
    [
        "id > 0 --",
        "id > 0) OR (true",
        "true /*",
        "1=1; select 1",
        "id > 0 \\\\",
        "pg_catalog.pg_sleep(0) is not null",
        "table_to_xml('ferry.meta', true, false, '')::text like '%'",
        "txid_current() > 0",
        "(select true from pg_catalog.set_config('lock_timeout', '0', false))",
    ],
)
@pytest.mark.usefixtures("ledger_ready")
def test_a_hostile_where_is_refused_in_one_line(
    env: dict[str, str], db: psycopg.Connection[Any], tmp_path: Path, where: str
) -> None:
    _table(
        db,
        "adv_where",
        "id int PRIMARY KEY, v int, out text",
        "SELECT g, g, NULL FROM generate_series(1, 5) g",
    )
    before = fingerprint(db, "adv_where")
    spec = spec_file(
        tmp_path,
        """
        b = Backfill(table="adv_where", key="id", reads=["v"], writes=["out"],
                     sql={"out": "v::text"}, chunk_size=10)
    """,
    )
    _one_line_exit_2(ferry("launch", f"{spec}:b", "--where", where, env=env))
    assert fingerprint(db, "adv_where") == before


def test_rollback_keeps_equal_but_differently_written_application_values(
    pool: WorkerPool, own_env: dict[str, str], db: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """numeric 1.500 equals 1.5 and float -0 equals 0, yet the application wrote them: the
    rollback must leave them and report them."""
    _table(
        db,
        "adv_eq",
        "id int PRIMARY KEY, n numeric, f float8",
        "SELECT g, g, g FROM generate_series(1, 4) g",
    )
    spec = spec_file(
        tmp_path,
        """
        b = Backfill(table="adv_eq", key="id", reads=["n", "f"], writes=["n", "f"],
                     sql={"n": "n + 0.5", "f": "f * 0"}, chunk_size=10)
    """,
    )
    pool.start("w1")
    run_id = launch(own_env, f"{spec}:b")
    assert wait_run(db, run_id) == "completed"
    db.execute("UPDATE adv_eq SET n = n::numeric(10, 3) WHERE id = 1")
    db.execute("UPDATE adv_eq SET f = '-0' WHERE id = 2")
    proc = ferry("rollback", str(run_id), "--wait", env=own_env, timeout=60)
    assert proc.returncode == 1, proc.stderr
    rows = db.execute("SELECT id, n::text, f::text FROM adv_eq ORDER BY id").fetchall()
    assert rows == [(1, "1.500", "0"), (2, "2.5", "-0"), (3, "3", "3"), (4, "4", "4")]
    kept = db.execute(
        "SELECT row_key, columns FROM ferry.rollback_conflicts WHERE run_id = %s ORDER BY 1",
        (run_id,),
    ).fetchall()
    assert kept == [("1", ["n"]), ("2", ["f"])]


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("postgresql://u@h:notaport/db", id="port-not-a-number"),
        pytest.param("postgresql://[::1", id="ipv6-unclosed"),
        pytest.param(
            "postgresql://postgres@127.0.0.1:99999/db",
            id="port-out-of-range",
        ),
        pytest.param(
            "postgresql://postgres@127.0.0.1:5432/db?sslmode=bogus",
            id="bad-sslmode",
        ),
    ],
)
def test_a_malformed_database_url_is_one_line_exit_2(env: dict[str, str], url: str) -> None:
    proc = ferry("--database-url", url, "status", "1", env=env, timeout=60)
    _one_line_exit_2(proc)
    assert "***" not in proc.stderr, proc.stderr
