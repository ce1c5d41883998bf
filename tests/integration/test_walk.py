"""A run's chunks recorded while its first ones run (workers.walk), on real workers.

A launch that dies after recording its first batch of chunks is what ``interrupted`` makes:
the first half of ``ferry launch`` in this process (the run, its first chunks, their tasks),
and no walk after it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import WorkerPool, ferry
from tests.helpers import (
    chunk_counts,
    copy_table,
    fingerprint,
    make_numbers_table,
    spec_file,
    wait_run,
)
from workers.planner import FIRST_BATCH

pytestmark = pytest.mark.usefixtures("workers")

SPEC = """
score_sql = Backfill(table="{table}", key="id", reads=["a", "b", "name"], writes=["score", "code"],
                     sql={{"score": "a * 3 + b", "code": "upper(trim(name))"}}, chunk_size={chunk})
"""
ROWS, CHUNK = 6_000, 50  # 120 chunks: the first 16 at launch, the rest in batches of 32 and 64


def _expected(db: psycopg.Connection[Any], table: str) -> str:
    copy_table(db, table, f"{table}_ref")
    db.execute(f"UPDATE {table}_ref SET score = a * 3 + b, code = upper(trim(name))")
    return fingerprint(db, f"{table}_ref")


def _context(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    from coordinator import commands
    from workers.settings import Settings

    for name in ("FERRY_DATABASE_URL", "FERRY_REDIS_URL", "FERRY_QUEUE"):
        monkeypatch.setenv(name, env[name])
    return commands.Context(Settings.from_env())


def _interrupted(ctx: Any, reference: str) -> int:
    """Launch as ``ferry launch`` does up to its walk: the run with its first chunks, sent."""
    from coordinator import commands
    from workers.dispatch import send_window
    from workers.limits import Limits

    limits = Limits(db_load=None)
    plan = commands._prepare(
        ctx, reference, where=None, chunk_size=None, commit=True, limits=limits
    )
    assert plan.run_id is not None and plan.walking and plan.chunks == FIRST_BATCH
    send_window(ctx.ledger, ctx.dispatcher, plan.run_id, limits)
    return plan.run_id


@dataclass(frozen=True)
class Lost:
    run_id: int
    ctx: Any  # the launch's commands.Context, open until the test ends
    before: str  # the table's fingerprint before the run
    expected: str  # ... and after a single UPDATE


@pytest.fixture
def lost_launch(
    request: pytest.FixtureRequest,
    db: psycopg.Connection[Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[[str], Lost]]:
    """Runs over a new numbers table each, from a launch lost after its first batch: on the
    test's own queue when the test starts workers of its own (``pool``: they notice a
    stalled walk after 6 s), else on the session's workers (after 90 s)."""
    env = request.getfixturevalue("own_env" if "pool" in request.fixturenames else "env")
    ctx = _context(env, monkeypatch)

    def make(table: str) -> Lost:
        make_numbers_table(db, table, ROWS)
        before, expected = fingerprint(db, table), _expected(db, table)
        path = spec_file(tmp_path, SPEC.format(table=table, chunk=CHUNK))
        return Lost(_interrupted(ctx, f"{path}:score_sql"), ctx, before, expected)

    yield make
    ctx.close()


def _tiles(db: psycopg.Connection[Any], run_id: int, table: str) -> None:
    """Every row of the table in exactly one chunk, chunk numbers in key order."""
    rows = db.execute(
        f"SELECT c.chunk_no, count(t.id) FROM ferry.chunks c LEFT JOIN {table} t "
        "ON (c.lo IS NULL OR t.id > c.lo::bigint) AND t.id <= c.hi::bigint "
        "WHERE c.run_id = %s GROUP BY c.chunk_no ORDER BY c.chunk_no",
        (run_id,),
    ).fetchall()
    assert [n for n, _ in rows] == list(range(ROWS // CHUNK))
    assert [c for _, c in rows] == [CHUNK] * (ROWS // CHUNK)
    total = db.execute("SELECT total_chunks FROM ferry.runs WHERE id = %s", (run_id,)).fetchone()
    assert total == (ROWS // CHUNK,)


def test_launch_records_its_chunks_while_the_first_ones_run(
    db: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    make_numbers_table(db, "walked", ROWS)
    expected = _expected(db, "walked")
    path = spec_file(tmp_path, SPEC.format(table="walked", chunk=CHUNK))
    proc = ferry("launch", f"{path}:score_sql", "--json", "--db-load", "0", env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["chunks"] == ROWS // CHUNK and out["rows"] == ROWS
    assert wait_run(db, out["run_id"]) == "completed"
    assert fingerprint(db, "walked") == expected
    _tiles(db, out["run_id"], "walked")
    walk = db.execute(
        "SELECT walk_after, walk_to FROM ferry.runs WHERE id = %s", (out["run_id"],)
    ).fetchone()
    assert walk == (None, None)


def test_a_launch_lost_mid_walk_leaves_its_run_running_until_resumed(
    db: psycopg.Connection[Any], env: dict[str, str], lost_launch: Callable[[str], Lost]
) -> None:
    lost = lost_launch("lost_walk")
    run_id = lost.run_id
    # the workers apply every chunk recorded; the run must not end with the rest unrecorded
    deadline = time.monotonic() + 120
    while chunk_counts(db, run_id).get("done", 0) < FIRST_BATCH:
        assert time.monotonic() < deadline, chunk_counts(db, run_id)
        time.sleep(0.2)
    time.sleep(1.0)  # the last chunk's run-end check has had its turn
    assert db.execute("SELECT status FROM ferry.runs WHERE id = %s", (run_id,)).fetchone() == (
        "running",
    )
    health = json.loads(ferry("status", str(run_id), "--json", env=env).stdout)
    assert health["planning"] is True and health["status"] == "degraded"
    assert [a["type"] for a in health["alerts"]] == ["planning_stopped"]

    resumed = ferry("resume", str(run_id), env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{ROWS // CHUNK - FIRST_BATCH} chunk(s) its launch had not recorded" in resumed.stdout
    assert wait_run(db, run_id) == "completed"
    assert fingerprint(db, "lost_walk") == lost.expected
    _tiles(db, run_id, "lost_walk")


def test_a_worker_records_the_chunks_a_lost_launch_did_not(
    db: psycopg.Connection[Any],
    pool: WorkerPool,
    tmp_path: Path,
    lost_launch: Callable[[str], Lost],
) -> None:
    """No ``ferry resume``: a worker's sweeper sees no batch recorded for the stall interval
    and finishes the walk itself."""
    lost = lost_launch("swept_walk")
    pool.start("sweeping")
    assert wait_run(db, lost.run_id, timeout=120) == "completed"
    assert fingerprint(db, "swept_walk") == lost.expected
    _tiles(db, lost.run_id, "swept_walk")
    assert "stopped recording chunks" in (tmp_path / "sweeping.log").read_text()


def test_two_walkers_of_one_run_record_each_chunk_once(
    db: psycopg.Connection[Any], lost_launch: Callable[[str], Lost]
) -> None:
    """A ``ferry resume`` while the launch still walks: they take turns, batch by batch."""
    from workers.limits import Limits
    from workers.statements import Statements
    from workers.walk import walk_on

    lost = lost_launch("two_walks")
    ctx, run_id = lost.ctx, lost.run_id
    statements = Statements(ctx.ledger.get_run(run_id).spec, run_id)
    recorded: list[int] = []
    start = threading.Barrier(2)

    def walker() -> None:
        with ctx.db.connect() as conn:
            start.wait()
            walked = walk_on(conn, ctx.ledger, ctx.dispatcher, statements, Limits())
            recorded.append(walked.chunks)

    threads = [threading.Thread(target=walker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sum(recorded) == ROWS // CHUNK - FIRST_BATCH
    assert wait_run(db, run_id) == "completed"
    assert fingerprint(db, "two_walks") == lost.expected
    _tiles(db, run_id, "two_walks")


def test_a_run_rolled_back_mid_walk_records_no_more_chunks(
    db: psycopg.Connection[Any], env: dict[str, str], lost_launch: Callable[[str], Lost]
) -> None:
    lost = lost_launch("walk_undone")
    run_id = lost.run_id
    rolled = ferry("rollback", str(run_id), "--wait", env=env)
    assert rolled.returncode == 0, rolled.stderr
    assert wait_run(db, run_id, until=("rolled_back",)) == "rolled_back"
    assert fingerprint(db, "walk_undone") == lost.before
    row = db.execute(
        "SELECT total_chunks, walk_to, (SELECT count(*) FROM ferry.chunks WHERE run_id = %s) "
        "FROM ferry.runs WHERE id = %s",
        (run_id, run_id),
    ).fetchone()
    assert row == (FIRST_BATCH, None, FIRST_BATCH)
    resumed = ferry("resume", str(run_id), env=env)
    assert resumed.returncode != 0 and "rolled_back" in resumed.stderr
