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
