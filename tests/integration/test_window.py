"""A run's chunks go to the broker a window at a time (real PostgreSQL, Redis and workers).

A run of tens of thousands of chunks must not put them all on the queue: each one the
throttle holds back would wake and be retried every few seconds. The ledger holds them back
instead, and each chunk that settles releases the next.
"""

from __future__ import annotations

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


def test_a_run_keeps_one_window_on_the_queue_until_its_last_chunk(
    db: psycopg.Connection[Any], own_env: dict[str, str], pool: WorkerPool, tmp_path: Path
) -> None:
    _, expected = prepare_reference(db, "windowed", 4_000)
    path = slow_spec(tmp_path, "windowed", 100, 0.05)
    run_id = launch(own_env, f"{path}:b", "--max-concurrency", "2", "--db-load", "0")
    window = Limits(max_concurrency=2, db_load=None).window
    queue = redis.Redis.from_url(own_env["FERRY_REDIS_URL"])
    name = own_env["FERRY_QUEUE"]
    # no worker yet: the first window is on the queue, the other 36 chunks wait in the ledger
    assert queue.llen(name) == window == 4
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
    _, expected = prepare_reference(db, "widened", 3_000)
    path = slow_spec(tmp_path, "widened", 100, 0)
    run_id = launch(own_env, f"{path}:s", "--max-concurrency", "1", "--db-load", "0")
    queue = redis.Redis.from_url(own_env["FERRY_REDIS_URL"])
    name = own_env["FERRY_QUEUE"]
    assert queue.llen(name) == 2
    throttled = ferry("throttle", str(run_id), "--max-concurrency", "3", env=own_env)
    assert throttled.returncode == 0, throttled.stderr
    assert queue.llen(name) == 6 and _sent(db, run_id) == list(range(6))

    # the queue is lost (a Redis restart, a flush): resume sends a window of the pending
    # chunks again, counted as unsent whatever happened to their tasks
    queue.delete(name)
    resumed = ferry("resume", str(run_id), env=own_env)
    assert resumed.returncode == 0, resumed.stderr
    assert "30 pending chunk(s); 6 sent now" in resumed.stdout, resumed.stdout
    assert queue.llen(name) == 6 and _sent(db, run_id) == list(range(6))

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
    # a full window releases nothing
    assert db.execute(release, (run_id, 8)).fetchall() == []
