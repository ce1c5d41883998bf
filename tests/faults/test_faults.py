"""Fault injection with real processes: each fault, then proof that nothing was lost.

After every fault: every row transformed exactly once (compared with a
single-statement reference), the ledger's counts consistent with the table and
the pre-images, and a rollback that restores the original bytes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from tests import pgcluster
from tests.conftest import ROOT, SESSION_CLAIM, WorkerPool, ferry
from tests.helpers import (
    chunk_counts,
    fingerprint,
    launch,
    ledger_id,
    pre_image_counts,
    prepare_reference,
    slow_spec,
    wait_run,
)
from tests.pgcluster import missing


def _exactly_once(
    db: psycopg.Connection[Any],
    env: dict[str, str],
    table: str,
    run_id: int,
    before: str,
    expected: str,
    rows: int,
) -> None:
    assert fingerprint(db, table) == expected
    ledger = db.execute(
        "SELECT sum(rows_read), sum(rows_written), count(*) FILTER (WHERE status <> 'done') "
        "FROM ferry.chunks WHERE run_id = %s",
        (run_id,),
    ).fetchone()
    backups = pre_image_counts(db, run_id)
    assert ledger is not None and ledger[0] == rows and ledger[2] == 0
    assert backups == (ledger[1], ledger[1])
    rolled = ferry("rollback", str(run_id), "--wait", env=env)
    assert rolled.returncode == 0, rolled.stderr
    assert wait_run(db, run_id, until=("rolled_back",)) == "rolled_back"
    assert fingerprint(db, table) == before


def _wait_running(
    db: psycopg.Connection[Any],
    run_id: int,
    worker: str | None = None,
    timeout: float = 60,
    exclude: set[int] | None = None,
) -> int:
    deadline = time.monotonic() + timeout
    pattern = worker or "%"
    while time.monotonic() < deadline:
        row = db.execute(
            "SELECT chunk_no FROM ferry.chunks WHERE run_id = %s AND status = 'running' "
            "AND worker LIKE %s AND chunk_no <> ALL(%s) LIMIT 1",
            (run_id, pattern, sorted(exclude or ())),
        ).fetchone()
        if row:
            return int(row[0])
        time.sleep(0.02)
    raise AssertionError(f"no chunk of run {run_id} started on {worker or 'any worker'}")


def _running_child(
    db: psycopg.Connection[Any],
    pool: WorkerPool,
    run_id: int,
    exclude: set[int],
    timeout: float = 60,
) -> tuple[str, int, int]:
    """(worker, pool child pid, chunk) of a chunk that a live pool child holds right now."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = {}
        for name, proc in pool.procs.items():
            out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
            children.update({int(pid): name for pid in out.stdout.split()})
        rows = db.execute(
            "SELECT chunk_no, worker FROM ferry.chunks WHERE run_id = %s AND status = 'running' "
            "AND chunk_no <> ALL(%s)",
            (run_id, sorted(exclude)),
        ).fetchall()
        for chunk_no, worker in rows:
            pid = int(worker.rsplit(":", 1)[1])
            if pid in children:
                return children[pid], pid, int(chunk_no)
        time.sleep(0.02)
    raise AssertionError(f"no live pool child held a chunk of run {run_id}")


def test_ten_kills_of_main_processes_and_pool_children(
    db: psycopg.Connection[Any], own_env: dict[str, str], pool: WorkerPool, tmp_path: Path
) -> None:
    before, expected = prepare_reference(db, "kills", 60_000)
    pool.start("k0")
    pool.start("k1")
    path = slow_spec(tmp_path, "kills", 500, 0.3)
    run_id = launch(own_env, f"{path}:b")
    killed: set[int] = set()
    for n in range(10):
        # a chunk held right now by a live pool child, and one not killed before: a chunk
        # that kills its worker every time is a poison pill, failed after FERRY_MAX_ATTEMPTS
        name, child, chunk_no = _running_child(db, pool, run_id, killed)
        killed.add(chunk_no)
        time.sleep(0.05)  # inside the chunk's transaction: the transform sleeps 300 ms
        if n % 4 == 3:
            pool.kill(name)  # the whole worker: main process and its pool child
            pool.start(name)
        else:
            os.kill(child, signal.SIGKILL)  # the main process starts a new child
    status = wait_run(db, run_id, timeout=180)
    errors = db.execute(
        "SELECT chunk_no, attempts, error FROM ferry.chunks WHERE run_id = %s "
        "AND status = 'failed'",
        (run_id,),
    ).fetchall()
    assert status == "completed", errors
    most = db.execute("SELECT max(attempts) FROM ferry.chunks WHERE run_id = %s", (run_id,))
    assert (most.fetchone() or (0,))[0] >= 2
    _exactly_once(db, own_env, "kills", run_id, before, expected, 60_000)


def _restart_redis(session_redis: str) -> None:
    client = redis.Redis(host="127.0.0.1", port=6379)
    with contextlib.suppress(redis.ConnectionError):  # the server hangs up as it goes
        client.shutdown(nosave=True)
    time.sleep(0.5)
    os.makedirs("/var/lib/redis", exist_ok=True)
    os.makedirs("/var/log/redis", exist_ok=True)
    subprocess.run(
        [
            "redis-server",
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "-::1",
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            "/var/lib/redis",
            "--logfile",
            "/var/log/redis/ci.log",
        ],
        check=True,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if client.ping():
                # The restart forgot the session's claim on its Redis database: claim it again
                # before another test session on this machine takes it.
                redis.Redis.from_url(session_redis).set(SESSION_CLAIM, "restarted", ex=6 * 3600)
                return
        except redis.ConnectionError:
            time.sleep(0.2)
    raise AssertionError("redis did not come back")


@pytest.mark.alone  # restarts the Redis every worker shares
@pytest.mark.skipif(not os.access("/var/lib", os.W_OK), reason="needs to restart Redis")
def test_redis_restarted_mid_run(
    db: psycopg.Connection[Any], own_env: dict[str, str], pool: WorkerPool, tmp_path: Path
) -> None:
    before, expected = prepare_reference(db, "redisgone", 15_000)
    pool.start("r0")
    pool.start("r1")
    path = slow_spec(tmp_path, "redisgone", 500, 0.2)
    run_id = launch(own_env, f"{path}:b")
    deadline = time.monotonic() + 60
    while chunk_counts(db, run_id).get("done", 0) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    # The queue, counters and heartbeats are gone: Redis keeps nothing.
    _restart_redis(own_env["FERRY_REDIS_URL"])
    status = ferry("status", str(run_id), "--json", env=own_env)
    assert status.returncode == 0, status.stderr  # rebuilt from the ledger
    assert wait_run(db, run_id, timeout=120) == "completed"  # stalled run re-sent by a sweeper
    _exactly_once(db, own_env, "redisgone", run_id, before, expected, 15_000)


def test_pg_terminate_backend_mid_chunk(
    db: psycopg.Connection[Any], own_env: dict[str, str], pool: WorkerPool, tmp_path: Path
) -> None:
    before, expected = prepare_reference(db, "terminated", 20_000)
    pool.start("t0")
    pool.start("t1")
    path = slow_spec(tmp_path, "terminated", 500, 0.15)
    run_id = launch(own_env, f"{path}:b")
    killed = 0
    deadline = time.monotonic() + 60
    while killed < 5 and time.monotonic() < deadline:
        rows = db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
            "current_database() AND application_name = 'ferry' AND pid <> pg_backend_pid() "
            "AND state = 'idle in transaction'"
        ).fetchall()  # mid-chunk: inside the transform
        killed += len(rows)
        time.sleep(0.1)
    assert killed >= 5
    assert wait_run(db, run_id, timeout=120) == "completed"
    _exactly_once(db, own_env, "terminated", run_id, before, expected, 20_000)


def test_same_task_delivered_twice_at_once(
    db: psycopg.Connection[Any], own_env: dict[str, str], pool: WorkerPool, tmp_path: Path
) -> None:
    before, expected = prepare_reference(db, "twice", 10_000)
    path = slow_spec(tmp_path, "twice", 500, 0.05)
    # No worker yet: every chunk waits in the queue. No db-load bound: a duplicate the throttle
    # sends back for later may come back after the run ended, and end "stop", not "noop".
    run_id = launch(own_env, f"{path}:b", "--db-load", "0")
    from workers.celery_app import make_app
    from workers.dispatch import chunk_task_id
    from workers.settings import Settings

    app = make_app(Settings.from_env(own_env))
    ledger = ledger_id(db)
    for n in range(20):  # the same task again, same id, right behind the first
        app.send_task(
            "ferry.chunk",
            args=[run_id, n],
            kwargs={"ledger": ledger},
            task_id=chunk_task_id(ledger, run_id, n),
            queue=own_env["FERRY_QUEUE"],
            ignore_result=True,
        )
    pool.start("d0")
    pool.start("d1")
    assert wait_run(db, run_id, timeout=120) == "completed"
    # Let the duplicates drain. One that found its twin still running waited its turn and, back
    # after the run ended, stops instead (as a busy machine makes more of them do): both
    # outcomes left everything as it was, which _exactly_once proves below.
    deadline = time.monotonic() + 30

    def idle() -> int:
        logs = pool.logs()
        return logs.count("'outcome': 'noop'") + logs.count("'outcome': 'stop'")

    while idle() < 15 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert idle() >= 15, pool.logs()[-2000:]
    _exactly_once(db, own_env, "twice", run_id, before, expected, 10_000)


def test_coordinator_killed_during_dispatch(
    db: psycopg.Connection[Any], own_env: dict[str, str], pool: WorkerPool, tmp_path: Path
) -> None:
    before, expected = prepare_reference(db, "orphaned", 20_000)
    path = slow_spec(tmp_path, "orphaned", 25, 0)
    coordinator = subprocess.Popen(
        [sys.executable, "-m", "coordinator", "launch", f"{path}:b", "--json", "--db-load", "0"],
        env=own_env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    run_id = None
    while run_id is None and time.monotonic() < deadline:
        row = db.execute(
            "SELECT id FROM ferry.runs WHERE backfill LIKE %s AND status = 'running'",
            (f"%{path.name}:b",),
        ).fetchone()
        run_id = row[0] if row else None
    coordinator.kill()  # the run is recorded: before, while or after it sends its first window
    coordinator.wait()
    assert run_id is not None
    resumed = ferry("resume", str(run_id), env=own_env)
    assert resumed.returncode == 0, resumed.stderr
    pool.start("c0")
    pool.start("c1")
    assert wait_run(db, run_id, timeout=180) == "completed"
    _exactly_once(db, own_env, "orphaned", run_id, before, expected, 20_000)


def test_backup_insert_fails_like_a_full_disk(
    db: psycopg.Connection[Any], own_env: dict[str, str], pool: WorkerPool, tmp_path: Path
) -> None:
    own_env["FERRY_MAX_ATTEMPTS"] = "3"  # read by the worker started below
    before, expected = prepare_reference(db, "diskfull", 5_000)
    path = slow_spec(tmp_path, "diskfull", 500, 0)
    run_id = launch(own_env, f"{path}:b")  # no worker yet
    db.execute("""CREATE OR REPLACE FUNCTION ferry_test_disk_full() RETURNS trigger
                  LANGUAGE plpgsql AS $$ BEGIN
                    IF NEW.chunk_no = 2 THEN
                      RAISE EXCEPTION 'could not extend file' USING ERRCODE = 'disk_full';
                    END IF;
                    RETURN NEW; END $$""")
    db.execute(
        f"CREATE TRIGGER disk_full_sim BEFORE INSERT ON ferry.backup_{run_id} "
        "FOR EACH ROW EXECUTE FUNCTION ferry_test_disk_full()"
    )
    pool.start("f0")
    assert wait_run(db, run_id, timeout=120) == "failed"
    failed = db.execute(
        "SELECT chunk_no, attempts, error, error_info->>'type' FROM ferry.chunks "
        "WHERE run_id = %s AND status = 'failed'",
        (run_id,),
    ).fetchall()
    assert [(r[0], r[1]) for r in failed] == [(2, 3)]
    assert failed[0][2].startswith("53100") and failed[0][3] == "performance"
    untouched = db.execute(
        "SELECT count(*) FROM diskfull WHERE id BETWEEN 1001 AND 1500 "
        "AND (score IS NOT NULL OR code IS NOT NULL)"
    ).fetchone()
    assert untouched == (0,)
    db.execute(f"DROP TRIGGER disk_full_sim ON ferry.backup_{run_id}")
    assert ferry("retry", str(run_id), env=own_env).returncode == 0
    assert wait_run(db, run_id, timeout=120) == "completed"
    _exactly_once(db, own_env, "diskfull", run_id, before, expected, 5_000)


def test_server_crash_mid_run_loses_no_chunk_committed_asynchronously(
    own_env: dict[str, str], pool: WorkerPool, tmp_path: Path
) -> None:
    """PostgreSQL killed mid-run (``pg_ctl stop -m immediate``: no shutdown checkpoint, the
    restart replays the WAL) while chunks commit with synchronous_commit off (the riskier
    setting, FERRY_SYNCHRONOUS_COMMIT): a chunk whose commit had not reached the disk is pending
    again in the recovered ledger, with none of its rows or pre-images, and runs again; none is
    lost and none applied twice."""
    bin_folder = pgcluster.binaries()
    if bin_folder is None:
        missing("PostgreSQL binaries (initdb, pg_ctl)")
    assert bin_folder is not None
    (tmp_path / "crashpg").mkdir()
    cluster = pgcluster.create(tmp_path / "crashpg", bin_folder)
    cluster.start()
    url = f"postgresql://postgres@127.0.0.1:{cluster.port}/postgres"
    own_env["FERRY_DATABASE_URL"] = url  # read by the CLI and the workers started below
    own_env["FERRY_SYNCHRONOUS_COMMIT"] = "off"
    try:
        ferry("init", env=own_env, check=True)
        with psycopg.connect(url, autocommit=True) as db:
            before, expected = prepare_reference(db, "crashed", 20_000)
        path = slow_spec(tmp_path, "crashed", 500, 0.1)
        run_id = launch(own_env, f"{path}:b", "--max-concurrency", "2")
        pool.start("k0")
        pool.start("k1")
        with psycopg.connect(url, autocommit=True) as db:
            deadline = time.monotonic() + 60
            while chunk_counts(db, run_id).get("done", 0) < 8 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert chunk_counts(db, run_id).get("done", 0) >= 8
        cluster.stop("immediate")
        time.sleep(1.0)
        cluster.start()
        with psycopg.connect(url, autocommit=True) as db:
            assert wait_run(db, run_id, timeout=180) == "completed"
            _exactly_once(db, own_env, "crashed", run_id, before, expected, 20_000)
    finally:
        pool.stop_all()
        with contextlib.suppress(subprocess.CalledProcessError):
            cluster.stop("immediate")
