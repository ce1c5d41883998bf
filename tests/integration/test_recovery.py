"""Recovery paths: lock waits retried, Redis flushed mid-run, one chunk rolled back."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from psycopg import sql

from tests.conftest import ferry
from tests.helpers import (
    chunk_counts,
    fingerprint,
    launch,
    ledger_id,
    make_numbers_table,
    pre_image_counts,
    prepare_reference,
    slow_spec,
    wait_run,
)
from workers.model import RunSpec
from workers.progress import errors_key
from workers.statements import Statements

pytestmark = pytest.mark.usefixtures("workers")


def test_row_lock_held_by_the_application_is_waited_out(
    db: psycopg.Connection[Any],
    env: dict[str, str],
    tmp_path: Path,
    database_url: str,
    redis_url: str,
) -> None:
    """A chunk never blocks behind an application lock: it times out (500 ms) and retries."""
    make_numbers_table(db, "locked", 2_000)
    path = slow_spec(tmp_path, "locked", 500, 0)
    app = psycopg.connect(database_url)
    app.execute("SELECT * FROM locked WHERE id = 1600 FOR UPDATE")  # chunk 3 holds this row
    released = threading.Event()

    def release() -> None:
        time.sleep(4)
        app.rollback()
        released.set()

    threading.Thread(target=release, daemon=True).start()
    run_id = launch(env, f"{path}:s")
    assert wait_run(db, run_id, timeout=90) == "completed"
    assert released.is_set()
    app.close()
    attempts = db.execute(
        "SELECT attempts FROM ferry.chunks WHERE run_id = %s AND chunk_no = 3", (run_id,)
    ).fetchone()
    assert attempts is not None and attempts[0] >= 2
    events = redis.Redis.from_url(redis_url, decode_responses=True).xrange(
        errors_key(ledger_id(db), run_id)
    )
    kinds = {(e[1]["kind"], e[1]["message"].split()[0]) for e in events}
    assert ("retry", "55P03") in kinds  # lock_not_available, retried
    done = db.execute("SELECT count(*) FROM locked WHERE score = a * 3 + b").fetchone()
    assert done == (2000 - 2000 // 13,)


def test_redis_flushed_mid_run(
    db: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path, redis_url: str
) -> None:
    """Redis loses the queue and the counters: status still comes from the ledger,
    and `ferry resume` finishes the run with every row exactly once."""
    _, expected = prepare_reference(db, "flushed", 12_000)
    path = slow_spec(tmp_path, "flushed", 500, 0.25)
    run_id = launch(env, f"{path}:b")
    deadline = time.monotonic() + 60
    while chunk_counts(db, run_id).get("done", 0) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    redis.Redis.from_url(redis_url).flushdb()
    status = ferry("status", str(run_id), "--json", env=env)
    assert status.returncode == 0, status.stderr
    health = json.loads(status.stdout)
    assert health["chunks"]["total"] == 24 and health["chunks"]["done"] >= 3
    time.sleep(3)  # in-flight chunks finish; nothing else is queued any more
    stuck = chunk_counts(db, run_id)
    assert stuck.get("pending", 0) > 0, stuck
    resumed = ferry("resume", str(run_id), env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert wait_run(db, run_id, timeout=120) == "completed"
    assert fingerprint(db, "flushed") == expected
    saved, keys = pre_image_counts(db, run_id)
    assert saved == keys


def test_rollback_of_one_chunk(
    db: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    make_numbers_table(db, "onechunk", 3_000)
    before = db.execute("SELECT id, score FROM onechunk ORDER BY id").fetchall()
    path = slow_spec(tmp_path, "onechunk", 1000, 0)
    run_id = launch(env, f"{path}:s")
    assert wait_run(db, run_id) == "completed"
    proc = ferry("rollback", str(run_id), "--chunk", "1", "--wait", env=env)
    assert proc.returncode == 0, proc.stderr
    assert chunk_counts(db, run_id) == {"done": 2, "rolled_back": 1}
    after = db.execute("SELECT id, score FROM onechunk ORDER BY id").fetchall()
    assert [r for r in after if 1000 < r[0] <= 2000] == [r for r in before if 1000 < r[0] <= 2000]
    assert all(r[1] is not None for r in after if r[0] <= 1000 and r[0] % 13)
    again = ferry("rollback", str(run_id), "--chunk", "1", env=env)
    assert again.returncode == 1 and "not done" in again.stderr
    audit = db.execute(
        "SELECT action, actor FROM ferry.audit_log WHERE run_id = %s ORDER BY id", (run_id,)
    ).fetchall()
    assert audit == [("launch", "pytest"), ("rollback", "pytest")]


def test_chunk_claimed_just_before_a_pause_is_handed_back_untouched(
    db: psycopg.Connection[Any],
    own_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The run stops between a worker's claim and its transaction: the chunk goes back to pending.

    The interleaving is forced by pausing the run from inside the claim; no worker consumes
    the test's own queue, so this executor is the only one touching the run.
    """
    from workers.ledger import Ledger

    make_numbers_table(db, "raced", 300)
    before = fingerprint(db, "raced")
    run_id = launch(own_env, f"{slow_spec(tmp_path, 'raced', 100)}:s")

    class PausedAfterClaim(Ledger):
        def claim(self, *args: Any, **kwargs: Any) -> Any:
            row = super().claim(*args, **kwargs)
            ferry("pause", str(run_id), env=own_env, check=True)
            return row

    executor = _executor(own_env, monkeypatch, "pytest:race", PausedAfterClaim)
    result = executor.apply(run_id, 0)
    assert result.outcome == "noop"
    chunk = db.execute(
        "SELECT status, error, lease_expires_at FROM ferry.chunks"
        " WHERE run_id = %s AND chunk_no = 0",
        (run_id,),
    ).fetchone()
    assert chunk == ("pending", None, None)
    assert fingerprint(db, "raced") == before
    ferry("cancel", str(run_id), env=own_env, check=True)


@pytest.mark.parametrize("path", ["s", "b"])  # the SQL path, the pandas path
def test_rows_the_application_changes_under_a_chunk_are_written_as_they_stay(
    path: str,
    db: psycopg.Connection[Any],
    own_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
) -> None:
    """The application updates one row and deletes another of a chunk's range while the
    chunk's statement waits on them (the pandas path read them unlocked, at their version
    before): the updated row gets the value computed from what the application wrote, its
    pre-image is that version, and the deleted row is neither written nor saved. No worker
    consumes the test's queue: this executor is the only one at work."""
    table = f"moved_{path}"
    make_numbers_table(db, table, 300)
    db.execute(f"UPDATE {table} SET a = 1, b = 1 WHERE id IN (50, 60)")  # both change in the run
    run_id = launch(own_env, f"{slow_spec(tmp_path, table, 300)}:{path}")
    executor = _executor(own_env, monkeypatch, "pytest:moved")
    app = psycopg.connect(database_url)
    app.execute(f"UPDATE {table} SET a = 1000, score = -1 WHERE id = 50")
    app.execute(f"DELETE FROM {table} WHERE id = 60")
    outcome: dict[str, Any] = {}

    def apply() -> None:
        try:
            outcome["result"] = executor.apply(run_id, 0)
        except BaseException as exc:  # reported below, in the test's thread
            outcome["error"] = exc

    worker = threading.Thread(target=apply, daemon=True)
    worker.start()
    deadline = time.monotonic() + 30
    waiting = 0
    while not waiting and time.monotonic() < deadline and worker.is_alive():
        row = db.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND pid <> %s",
            (app.info.backend_pid,),
        ).fetchone()
        waiting = row[0] if row else 0
        time.sleep(0.02)
    assert waiting, "the chunk never waited on the application's rows"
    app.commit()
    app.close()
    worker.join(30)
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert result.outcome == "done"
    left = db.execute(
        "SELECT count(*) FILTER (WHERE score IS DISTINCT FROM a * 3 + b), count(*),"
        f" max(score) FILTER (WHERE id = 50) FROM {table}"
    ).fetchone()
    assert left is not None and left[0] == 0 and left[1] == 299
    assert left[2] == 1000 * 3 + 1
    spec = db.execute("SELECT spec FROM ferry.runs WHERE id = %s", (run_id,)).fetchone()
    assert spec is not None
    st = Statements(RunSpec.from_dict(spec[0]), run_id)
    saved = db.execute(
        sql.SQL("SELECT b.id, b.score FROM {p} AS b WHERE b.id IN (50, 60)").format(
            p=st.pre_images(0)
        )
    ).fetchall()
    assert saved == [(50, -1)]  # the version written, not the one first read
    written = db.execute(
        "SELECT rows_written FROM ferry.chunks WHERE run_id = %s AND chunk_no = 0", (run_id,)
    ).fetchone()
    assert written == (result.rows_written,) and pre_image_counts(db, run_id)[0] == written[0]
    ferry("cancel", str(run_id), env=own_env, check=True)


def test_a_claim_waits_on_the_chunk_row_no_longer_than_lock_timeout(
    db: psycopg.Connection[Any],
    own_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
) -> None:
    """Another worker's live chunk transaction holds the chunk's ledger row (a duplicate
    delivery meets it): this delivery's claim gives up after FERRY_LOCK_TIMEOUT_MS with
    55P03, a transient error, instead of holding the worker process for as long as the other
    transaction lives; so does the release the task makes before its retry (the chunk is not
    this delivery's to hand back). Neither changed anything: the chunk is still the live
    worker's. No worker consumes the test's queue."""
    from migrations.errors import TransientChunkError

    make_numbers_table(db, "claimwait", 100)
    run_id = launch(own_env, f"{slow_spec(tmp_path, 'claimwait', 100)}:s")
    executor = _executor(own_env, monkeypatch, "pytest:cw")  # lock_timeout: 500 ms
    outcome: dict[str, Any] = {}

    def claim() -> None:
        started = time.monotonic()
        try:
            outcome["result"] = executor.apply(run_id, 0)
        except BaseException as exc:  # judged below, in the test's thread
            outcome["error"] = exc
        outcome["seconds"] = time.monotonic() - started

    with psycopg.connect(database_url) as live:
        assert executor.ledger.claim(live, run_id, 0, "pytest:live", 60, 10_000, 500)
        live.execute(  # what the live worker's chunk transaction holds
            "SELECT 1 FROM ferry.chunks WHERE run_id = %s AND chunk_no = 0 FOR NO KEY UPDATE",
            (run_id,),
        )
        thread = threading.Thread(target=claim, daemon=True)
        thread.start()
        thread.join(10)
        waited_on = thread.is_alive()
        release = threading.Thread(
            target=_release, args=(executor.ledger, run_id, outcome), daemon=True
        )
        release.start()
        release.join(10)
        release_waited_on = release.is_alive()
        live.rollback()  # frees a claim or release that would wait as long as the holder
        thread.join(30)
        release.join(30)
    assert not release_waited_on, "the release waited on the chunk's row past lock_timeout"
    assert isinstance(outcome.get("release"), psycopg.errors.LockNotAvailable), outcome
    assert not waited_on, "the claim waited on the chunk's row past its lock_timeout"
    err = outcome.get("error")
    assert isinstance(err, TransientChunkError), outcome
    assert err.sqlstate == "55P03"
    assert outcome["seconds"] < 5 and outcome["release_seconds"] < 5
    chunk = db.execute(
        "SELECT status, attempts, worker FROM ferry.chunks WHERE run_id = %s AND chunk_no = 0",
        (run_id,),
    ).fetchone()
    assert chunk == ("running", 1, "pytest:live")
    ferry("cancel", str(run_id), env=own_env, check=True)


def _release(ledger: Any, run_id: int, outcome: dict[str, Any]) -> None:
    """What a task does after a transient failure, timed into ``outcome``."""
    from migrations.errors import TransientChunkError

    started = time.monotonic()
    try:
        ledger.release(run_id, 0, TransientChunkError("claim timed out"), 300)
    except BaseException as exc:  # judged in the test's thread
        outcome["release"] = exc
    outcome["release_seconds"] = time.monotonic() - started


def _executor(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, worker: str, ledger: Any = None
) -> Any:
    """A chunk executor in the test's own process, on the services of ``env``."""
    from workers.db import Database
    from workers.execution import ChunkExecutor
    from workers.ledger import Ledger
    from workers.progress import MemoryProgress
    from workers.settings import Settings

    for name in ("FERRY_DATABASE_URL", "FERRY_REDIS_URL", "FERRY_QUEUE"):
        monkeypatch.setenv(name, env[name])
    settings = Settings.from_env()
    database = Database(settings)
    return ChunkExecutor(database, (ledger or Ledger)(database), settings, MemoryProgress(), worker)


def test_a_table_gone_stops_the_run_at_once_and_retry_resumes_it(
    db: psycopg.Connection[Any], own_env: dict[str, str], pool: Any, tmp_path: Path
) -> None:
    """The table disappears mid-run (renamed away, so that it can come back): 42P01 is no
    chunk's bad luck: the first chunk that meets it fails, without retries,
    and stops the run (failed, with an alert that names the SQLSTATE); every chunk not run
    stays pending, untried. Once the table is back, `ferry retry` runs them all."""
    pool.start("dropped")  # one process: one chunk in flight at a time
    make_numbers_table(db, "dropped", 3_000)
    path = slow_spec(tmp_path, "dropped", 100, 0.3)  # 0.3 s a chunk: the run is still going
    run_id = launch(own_env, f"{path}:b")
    deadline = time.monotonic() + 60
    while chunk_counts(db, run_id).get("done", 0) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    db.execute("ALTER TABLE dropped RENAME TO dropped_away")
    assert wait_run(db, run_id, timeout=60) == "failed"
    counts = chunk_counts(db, run_id)
    assert counts.get("failed") == 1, counts  # on main: every chunk failed, one by one
    assert counts.get("pending", 0) + counts.get("done", 0) + 1 == 30, counts
    failed = db.execute(
        "SELECT attempts, error FROM ferry.chunks WHERE run_id = %s AND status = 'failed'",
        (run_id,),
    ).fetchone()
    # a chunk that queued behind the rename's lock met a lock timeout first (55P03, retried):
    # once, not six times, since 42P01 is not retried
    assert failed is not None and failed[0] <= 2 and failed[1].startswith("42P01")
    untried = db.execute(
        "SELECT count(*) FROM ferry.chunks WHERE run_id = %s AND status = 'pending'"
        " AND attempts > 0",
        (run_id,),
    ).fetchone()
    assert untried is not None and untried[0] <= 1  # at most the one behind the rename's lock
    alerts = db.execute(
        "SELECT type, message FROM ferry.alerts WHERE run_id = %s", (run_id,)
    ).fetchall()
    assert [a[0] for a in alerts] == ["run_stopped"]
    assert "42P01" in alerts[0][1] and "ferry retry" in alerts[0][1]
    status = json.loads(ferry("status", str(run_id), "--json", env=own_env).stdout)
    assert status["run_status"] == "failed"
    assert any(a["type"] == "run_stopped" for a in status["alerts"]), status["alerts"]
    db.execute("ALTER TABLE dropped_away RENAME TO dropped")
    ferry("retry", str(run_id), env=own_env, check=True)
    assert wait_run(db, run_id, timeout=120) == "completed"
    assert db.execute(
        "SELECT count(*) FROM dropped WHERE score IS DISTINCT FROM a * 3 + b"
    ).fetchone() == (0,)
    assert db.execute(
        "SELECT count(*) FROM dropped WHERE code IS DISTINCT FROM upper(trim(name))"
    ).fetchone() == (0,)
    written = db.execute(
        "SELECT sum(rows_written), sum(rows_read) FROM ferry.chunks WHERE run_id = %s", (run_id,)
    ).fetchone()
    assert written is not None and written[1] == 3_000
    assert pre_image_counts(db, run_id) == (written[0], written[0])


BREAKER_SPEC = """
def flaky(df):
    if int(df["id"].iloc[0]) // 20 % 3:  # two chunks of three fail on their data
        raise ValueError("no good")
    return pd.DataFrame({"id": df["id"], "score": df["a"] * 3 + df["b"]})

b = Backfill(table="breaker", key="id", reads=["a", "b"], writes=["score"],
             transform=flaky, chunk_size=20)
"""


def test_the_failure_breaker_stops_a_run_whose_chunks_mostly_fail(
    db: psycopg.Connection[Any], own_env: dict[str, str], pool: Any, tmp_path: Path
) -> None:
    """Data errors fail their own chunk only, until the breaker's rule holds (default: at
    least 10 settled chunks, more than half failed): then the run stops, with an alert, and
    the rest of its 60 chunks are never tried."""
    from tests.helpers import spec_file

    pool.start("breaker")
    make_numbers_table(db, "breaker", 1_200)
    run_id = launch(own_env, f"{spec_file(tmp_path, BREAKER_SPEC)}:b")
    assert wait_run(db, run_id, timeout=120) == "failed"
    counts = chunk_counts(db, run_id)
    done, failed = counts.get("done", 0), counts.get("failed", 0)
    assert done + failed >= 10 and failed > (done + failed) / 2, counts
    assert counts.get("pending", 0) >= 30, counts  # on main: all 60 chunks settled
    alerts = db.execute(
        "SELECT type, message FROM ferry.alerts WHERE run_id = %s", (run_id,)
    ).fetchall()
    assert [a[0] for a in alerts] == ["failure_breaker"]
    assert f"{failed} of {done + failed} settled chunks failed" in alerts[0][1]
    assert "no good" not in alerts[0][1] or "ValueError" in alerts[0][1]


def test_a_session_kept_alive_outlives_its_idle_timeout_until_the_limit(
    database_url: str,
) -> None:
    """The keepalive's two promises, on a real session idle in transaction: while it pings,
    the 1 s idle timeout never fires; past its limit it stops, and PostgreSQL ends the
    session (what frees a stuck transform's locks)."""
    from workers.keepalive import SessionKeepalive

    for limit, survives in ((30.0, True), (0.5, False)):
        with psycopg.connect(database_url) as conn:
            conn.execute("SET idle_in_transaction_session_timeout = '1s'")
            conn.execute("SELECT 1")  # the transaction is open from here
            with SessionKeepalive(conn, 0.3, limit) as keeper:
                time.sleep(2.5)
            if survives:
                assert keeper.pings >= 5
                assert conn.execute("SELECT 2").fetchone() == (2,)
            else:
                assert keeper.pings <= 2
                with pytest.raises(psycopg.Error) as ended:
                    conn.execute("SELECT 2")
                assert ended.value.sqlstate in ("25P03", None)  # its FATAL, or the socket shut


def test_a_transform_slower_than_the_lease_succeeds_first_time(
    db: psycopg.Connection[Any], own_env: dict[str, str], pool: Any, tmp_path: Path
) -> None:
    """Slow is not dead: each chunk's transform sleeps 8 s, over two leases (3 s, so the idle
    timeout is 3 s too) while the sweeper looks every 0.5 s. On main each chunk failed with
    25P03 on its first attempt and the run ended failed. Here every chunk is done on its first
    attempt, each row written once, and nothing was re-queued meanwhile."""
    _, expected = prepare_reference(db, "slowpoke", 200)
    pool.start("slow", concurrency=2)
    run_id = launch(own_env, f"{slow_spec(tmp_path, 'slowpoke', 100, 8)}:b")
    assert wait_run(db, run_id, timeout=120) == "completed"
    chunks = db.execute(
        "SELECT chunk_no, attempts, error FROM ferry.chunks WHERE run_id = %s ORDER BY 1",
        (run_id,),
    ).fetchall()
    assert chunks == [(0, 1, None), (1, 1, None)]
    assert fingerprint(db, "slowpoke") == expected
    written = db.execute(
        "SELECT sum(rows_written) FROM ferry.chunks WHERE run_id = %s", (run_id,)
    ).fetchone()
    assert written is not None and pre_image_counts(db, run_id) == (written[0], written[0])


ONCE_SLOW_SPEC = """
import os, time

FLAG = {flag!r}

def once_slow(df):
    # the first attempt of the chunk (300 rows) hangs in its transform; launch's pre-flight
    # check (a sample of 200 rows) does not
    if len(df) > 250 and not os.path.exists(FLAG):
        open(FLAG, "w").close()
        time.sleep(120)
    return pd.DataFrame({{"id": df["id"], "score": df["a"] * 3 + df["b"]}})

b = Backfill(table="gone", key="id", reads=["a", "b"], writes=["score"],
             transform=once_slow, chunk_size=1000)
"""


def test_a_worker_killed_in_a_slow_transform_frees_its_chunk_within_two_leases(
    db: psycopg.Connection[Any], own_env: dict[str, str], pool: Any, tmp_path: Path
) -> None:
    """The keepalive must not keep a dead worker's chunk: the worker holding the one chunk of
    the run is SIGKILLed as soon as it claimed it (its lease, 3 s, has all to run): the other
    worker's sweeper re-queues it and it runs again within two leases of the kill, once."""
    from tests.helpers import spec_file

    make_numbers_table(db, "gone", 300)
    flag = tmp_path / "started"
    pool.start("g1")
    pool.start("g2")
    run_id = launch(own_env, f"{spec_file(tmp_path, ONCE_SLOW_SPEC.format(flag=str(flag)))}:b")
    deadline = time.monotonic() + 60
    holder = None
    while holder is None and time.monotonic() < deadline:
        row = db.execute(
            "SELECT worker FROM ferry.chunks WHERE run_id = %s AND status = 'running'", (run_id,)
        ).fetchone()
        holder = row[0] if row else None
        time.sleep(0.01)
    assert holder is not None, (chunk_counts(db, run_id), pool.logs()[-3000:])
    name = holder.split("@", 1)[0]
    pool.kill(name)
    killed = time.monotonic()
    lease = float(own_env["FERRY_LEASE_SECONDS"])
    again = None
    while again is None and time.monotonic() < killed + 4 * lease:
        row = db.execute(
            "SELECT attempts FROM ferry.chunks WHERE run_id = %s AND attempts >= 2", (run_id,)
        ).fetchone()
        again = time.monotonic() if row else None
        time.sleep(0.02)
    assert again is not None, "the chunk was not claimed again within four leases"
    assert again - killed <= 2 * lease, f"claimed again {again - killed:.1f}s after the kill"
    assert flag.exists()
    assert wait_run(db, run_id, timeout=60) == "completed"
    assert db.execute(
        "SELECT count(*) FILTER (WHERE score IS DISTINCT FROM a * 3 + b) FROM gone"
    ).fetchone() == (0,)
    written = db.execute(
        "SELECT sum(rows_written) FROM ferry.chunks WHERE run_id = %s", (run_id,)
    ).fetchone()
    assert written is not None and pre_image_counts(db, run_id) == (written[0], written[0])
