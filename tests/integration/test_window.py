"""A run's chunks go to the broker a window at a time (real PostgreSQL, Redis and workers).

A run of tens of thousands of chunks must not put them all on the queue: each one the
throttle holds back would wake and be retried every few seconds. The ledger holds them back
instead, and each chunk that settles releases the next.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import redis

from tests.conftest import WorkerPool, ferry
from tests.helpers import fingerprint, launch, prepare_reference, slow_spec, wait_run
from workers.limits import Limits


def _sent(db: psycopg.Connection[Any], run_id: int) -> list[int]:
    rows = db.execute(
        "SELECT chunk_no FROM ferry.chunks WHERE run_id = %s AND sent_at IS NOT NULL"
        " ORDER BY chunk_no",
        (run_id,),
    )
    return [r[0] for r in rows]


def _launched(
    db: psycopg.Connection[Any],
    env: dict[str, str],
    tmp_path: Path,
    table: str,
    rows: int,
    mode: str,
    sleep: float,
    *args: str,
) -> tuple[int, str, int]:
    """A run of 100-row chunks over a fresh table, no worker yet: (run, the fingerprint it must
    give, tasks on its queue). ``mode``: the spec's pandas (b) or SQL (s) backfill."""
    _, expected = prepare_reference(db, table, rows)
    path = slow_spec(tmp_path, table, 100, sleep)
    run_id = launch(env, f"{path}:{mode}", *args)
    return run_id, expected, _queued(env)


def _queued(env: dict[str, str]) -> int:
    return int(redis.Redis.from_url(env["FERRY_REDIS_URL"]).llen(env["FERRY_QUEUE"]))


def test_a_run_keeps_one_window_on_the_queue_until_its_last_chunk(
    db: psycopg.Connection[Any], own_env: dict[str, str], pool: WorkerPool, tmp_path: Path
) -> None:
    limits = ("--max-concurrency", "2", "--db-load", "0")
    run_id, expected, queued = _launched(
        db, own_env, tmp_path, "windowed", 4_000, "b", 0.05, *limits
    )
    window = Limits(max_concurrency=2, db_load=None).window
    # no worker yet: the first window is on the queue, the other 36 chunks wait in the ledger
    assert queued == window == 4
    assert _sent(db, run_id) == list(range(window))

    peak = [0]
    stop = threading.Event()

    def watch() -> None:  # tasks of the run on the queue or in a worker, sampled
        with psycopg.connect(own_env["FERRY_DATABASE_URL"], autocommit=True) as conn:
            while not stop.is_set():
                row = conn.execute(
                    "SELECT count(*) FROM ferry.chunks WHERE run_id = %s"
                    " AND status IN ('pending', 'running') AND sent_at IS NOT NULL",
                    (run_id,),
                ).fetchone()
                peak[0] = max(peak[0], row[0] if row else 0)
                time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        pool.start("win0")
        pool.start("win1")
        assert wait_run(db, run_id, timeout=120) == "completed"
    finally:
        stop.set()
        watcher.join()
    # two workers finishing at once may each release one before seeing the other's: +1 at most
    assert window - 1 <= peak[0] <= window + 1, peak[0]
    assert _sent(db, run_id) == list(range(40))
    assert fingerprint(db, "windowed") == expected
    # one task per chunk: nothing waited, so no chunk was delivered twice
    logs = pool.logs()
    assert logs.count("'outcome': 'done'") == 40, logs[-2000:]


def test_throttle_widens_the_window_at_once_and_resume_sends_a_window_again(
    db: psycopg.Connection[Any], own_env: dict[str, str], pool: WorkerPool, tmp_path: Path
) -> None:
    limits = ("--max-concurrency", "1", "--db-load", "0")
    run_id, expected, queued = _launched(db, own_env, tmp_path, "widened", 3_000, "s", 0, *limits)
    assert queued == 2
    throttled = ferry("throttle", str(run_id), "--max-concurrency", "3", env=own_env)
    assert throttled.returncode == 0, throttled.stderr
    assert _queued(own_env) == 6 and _sent(db, run_id) == list(range(6))
    status = ferry("status", str(run_id), "--json", env=own_env)
    chunks = json.loads(status.stdout)["chunks"]
    assert (chunks["pending"], chunks["queued"]) == (30, 6), chunks
    table = ferry("status", str(run_id), env=own_env)
    assert "30 (6)" in table.stdout, table.stdout

    # the queue is lost (a Redis restart, a flush): resume sends a window of the pending
    # chunks again, counted as unsent whatever happened to their tasks
    redis.Redis.from_url(own_env["FERRY_REDIS_URL"]).delete(own_env["FERRY_QUEUE"])
    resumed = ferry("resume", str(run_id), env=own_env)
    assert resumed.returncode == 0, resumed.stderr
    assert "30 pending chunk(s); 6 sent now" in resumed.stdout, resumed.stdout
    assert _queued(own_env) == 6 and _sent(db, run_id) == list(range(6))

    pool.start("wid0")
    assert wait_run(db, run_id, timeout=120) == "completed"
    assert fingerprint(db, "widened") == expected


def test_workers_releasing_at_once_release_different_chunks(
    db: psycopg.Connection[Any], own_env: dict[str, str], tmp_path: Path, ledger_ready: None
) -> None:
    prepare_reference(db, "released", 2_000)
    path = slow_spec(tmp_path, "released", 100, 0)
    run_id = launch(own_env, f"{path}:s", "--max-concurrency", "1", "--db-load", "0")
    assert _sent(db, run_id) == [0, 1]
    url = own_env["FERRY_DATABASE_URL"]
    with psycopg.connect(url) as one, psycopg.connect(url) as two:
        release = "SELECT chunk_no FROM ferry.release_chunks(%s, %s, NULL) AS chunk_no"
        first = [r[0] for r in one.execute(release, (run_id, 5))]
        # the second does not wait on the first's locks, and skips what it took
        two.execute("SET lock_timeout = '1s'")
        second = [r[0] for r in two.execute(release, (run_id, 5))]
        one.commit()
        two.commit()
    assert sorted(first) == [2, 3, 4]
    assert sorted(second) == [5, 6, 7] and not set(first) & set(second)
    # a full window releases nothing, nor does a run that is not running
    assert db.execute(release, (run_id, 8)).fetchall() == []
    assert ferry("pause", str(run_id), env=own_env).returncode == 0
    assert db.execute(release, (run_id, 20)).fetchall() == []
