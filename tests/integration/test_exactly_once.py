"""A chunk's data change and its done mark commit together, or not at all.

Each test makes a chunk fail or die between the two, and checks that every row was written
exactly once: the backfill increments a counter (``n = n + 1``), so a chunk applied twice
leaves 2 where 1 belongs, and its pre-images come twice. On a worker that commits the data
change apart from the done mark (a ``conn.commit()`` just before finish_chunk), both tests
fail; as they must be, they pass.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

import tests.conftest
from tests.conftest import WorkerPool, ferry
from tests.helpers import launch, pre_image_counts, spec_file, wait_run
from tests.integration.test_recovery import _executor
from workers.command import worker_command

ROWS = 500
CHUNK = 100

COUNTER_SPEC = """
def bump(df):
    return pd.DataFrame({{"id": df["id"], "n": df["n"] + 1}})

s = Backfill(table="{table}", key="id", reads=["n"], writes=["n"], sql={{"n": "n + 1"}},
             chunk_size={chunk})
b = Backfill(table="{table}", key="id", reads=["n"], writes=["n"], transform=bump,
             chunk_size={chunk})
"""


def _counter_table(db: psycopg.Connection[Any], table: str, tmp_path: Path) -> Path:
    """A table whose rows all hold n = 0 (keys sparse, one NULL payload in seven), and the
    spec file of its two counting backfills, ``s`` (SQL) and ``b`` (pandas)."""
    t = sql.Identifier(table)
    db.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(t))
    db.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, n integer, note text)").format(t))
    db.execute(
        sql.SQL(
            "INSERT INTO {} SELECT g * 7 - 1000, 0,"
            " CASE WHEN g %% 7 = 0 THEN NULL ELSE E'x\\\\y ' || g END"
            " FROM generate_series(1, %s) g"
        ).format(t),
        (ROWS,),
    )
    return spec_file(
        tmp_path, COUNTER_SPEC.format(table=table, chunk=CHUNK), name=f"spec_{table}.py"
    )


def _assert_exactly_once(db: psycopg.Connection[Any], table: str, run_id: int) -> None:
    counts = db.execute(
        sql.SQL("SELECT count(*), count(*) FILTER (WHERE n = 1), min(n), max(n) FROM {}").format(
            sql.Identifier(table)
        )
    ).fetchone()
    assert counts == (ROWS, ROWS, 1, 1), f"(rows, rows at 1, min, max) = {counts}"
    ledger = db.execute(
        "SELECT sum(rows_written), count(*) FILTER (WHERE status <> 'done')"
        " FROM ferry.chunks WHERE run_id = %s",
        (run_id,),
    ).fetchone()
    assert ledger == (ROWS, 0)
    assert pre_image_counts(db, run_id) == (ROWS, ROWS)  # one pre-image a row, no more


@pytest.fixture
def fail_finish_once(db: psycopg.Connection[Any]) -> Iterator[None]:
    """A trigger on ferry.chunks that fails the first finish_chunk of the run named by the
    test (a transient 40001, as a serialization failure would), once: the sequence that
    counts it is not transactional, so the failed transaction's rollback does not reset it."""
    db.execute("DROP SEQUENCE IF EXISTS public.fail_finish_once")
    db.execute("CREATE SEQUENCE public.fail_finish_once")
    db.execute(
        """
        CREATE OR REPLACE FUNCTION public.fail_finish_once() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.run_id = TG_ARGV[0]::bigint AND nextval('public.fail_finish_once') = 1 THEN
                RAISE EXCEPTION 'injected: the done mark fails once' USING ERRCODE = '40001';
            END IF;
            RETURN NEW;
        END $$
        """
    )
    yield
    db.execute("DROP TRIGGER IF EXISTS fail_finish_once ON ferry.chunks")
    db.execute("DROP FUNCTION IF EXISTS public.fail_finish_once()")
    db.execute("DROP SEQUENCE IF EXISTS public.fail_finish_once")


@pytest.mark.parametrize("path", ["s", "b"])  # the SQL path, the pandas path
def test_a_done_mark_that_fails_rolls_the_data_change_back_with_it(
    path: str,
    db: psycopg.Connection[Any],
    own_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fail_finish_once: None,
    ledger_ready: None,
) -> None:
    """finish_chunk fails (once) after the chunk's rows and pre-images were written: the
    chunk's whole transaction rolls back, the retry writes every row once. No worker
    consumes the test's queue: this executor, and the release a task does on a transient
    failure, are the only ones at work."""
    from migrations.errors import TransientChunkError
    from workers.ledger import Ledger

    table = f"eo_trigger_{path}"
    run_id = launch(own_env, f"{_counter_table(db, table, tmp_path)}:{path}")
    db.execute(
        "CREATE TRIGGER fail_finish_once BEFORE UPDATE ON ferry.chunks FOR EACH ROW"
        " WHEN (NEW.status = 'done' AND OLD.status IS DISTINCT FROM 'done')"
        f" EXECUTE FUNCTION public.fail_finish_once('{int(run_id)}')"
    )
    executor = _executor(own_env, monkeypatch, "pytest:eo")
    ledger: Ledger = executor.ledger
    with pytest.raises(TransientChunkError) as failed:
        executor.apply(run_id, 0)
    assert failed.value.sqlstate == "40001"
    ledger.release(run_id, 0, failed.value)  # what the task does before its retry
    untouched = db.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE n <> 0").format(sql.Identifier(table))
    ).fetchone()
    assert untouched == (0,), "the data change outlived its failed done mark"
    assert pre_image_counts(db, run_id) == (0, 0)
    for chunk_no in range(ROWS // CHUNK):
        assert executor.apply(run_id, chunk_no).outcome == "done"
    attempts = db.execute(
        "SELECT array_agg(attempts ORDER BY chunk_no) FROM ferry.chunks WHERE run_id = %s",
        (run_id,),
    ).fetchone()
    assert attempts == ([2, 1, 1, 1, 1],)
    _assert_exactly_once(db, table, run_id)
    ferry("cancel", str(run_id), env=own_env)  # completed by hand: no worker ends it


@pytest.mark.parametrize(
    "pool_kind",
    [
        # the pool child dies; Celery (reject on worker lost) delivers the task again
        "prefork",
        # the whole worker dies with its message unacknowledged: only the other worker's
        # lease sweeper can bring the chunk back (the visibility timeout is 15 minutes)
        "solo",
    ],
)
def test_a_worker_killed_between_the_done_mark_and_its_commit_writes_nothing_twice(
    pool_kind: str,
    db: psycopg.Connection[Any],
    own_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ledger_ready: None,
) -> None:
    table = f"eo_kill_{pool_kind}"
    spec = _counter_table(db, table, tmp_path)
    flag = tmp_path / "kill-once"
    flag.touch()
    env = {**own_env, "FERRY_TEST_KILL_ONCE": str(flag)}
    if pool_kind == "solo":
        monkeypatch.setattr(
            tests.conftest,
            "worker_command",
            functools.partial(worker_command, extra=("--pool", "solo")),
        )
    pool = WorkerPool(env, tmp_path)
    try:
        names = ["k1", "k2"] if pool_kind == "solo" else ["k1"]
        for name in names:
            pool.start(name)
        run_id = launch(own_env, f"{spec}:s")
        assert wait_run(db, run_id, timeout=120) == "completed", pool.logs()[-3000:]
        assert not flag.exists(), "no worker reached the kill point"
        dead = [n for n, p in pool.procs.items() if p.poll() is not None]
        if pool_kind == "solo":
            assert len(dead) == 1 and pool.procs[dead[0]].returncode == -signal.SIGKILL
        else:
            assert dead == []  # only its pool child died
        retried = db.execute(
            "SELECT count(*) FROM ferry.chunks WHERE run_id = %s AND attempts = 2", (run_id,)
        ).fetchone()
        assert retried == (1,)
        _assert_exactly_once(db, table, run_id)
    finally:
        pool.stop_all()
