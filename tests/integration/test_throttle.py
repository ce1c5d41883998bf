"""Capacity limits shared by all workers, pause/resume, and health pauses (real workers)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import WorkerPool, ferry
from tests.helpers import (
    chunk_counts,
    fingerprint,
    launch,
    prepare_reference,
    slow_spec,
    wait_run,
)


def _intervals(db: psycopg.Connection[Any], run_id: int) -> list[tuple[float, float]]:
    return [
        (float(a), float(b))
        for a, b in db.execute(
            "SELECT extract(epoch FROM started_at), extract(epoch FROM finished_at) "
            "FROM ferry.chunks WHERE run_id = %s AND status = 'done'",
            (run_id,),
        )
    ]


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted(
        [(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals], key=lambda e: (e[0], e[1])
    )
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def test_concurrency_cap_holds_across_three_workers(
    db: psycopg.Connection[Any], own_env: dict[str, str], pool: WorkerPool, tmp_path: Path
) -> None:
    _, expected = prepare_reference(db, "capped", 6_000)
    for name in ("c0", "c1", "c2"):
        pool.start(name)
    path = slow_spec(tmp_path, "capped", 200, 0.2)
    run_id = launch(own_env, f"{path}:b", "--max-concurrency", "2", "--db-load", "0")
    assert wait_run(db, run_id, timeout=120) == "completed"
    intervals = _intervals(db, run_id)
    assert len(intervals) == 30 and _max_overlap(intervals) == 2
    workers = {
        w
        for (w,) in db.execute(
            "SELECT DISTINCT split_part(worker, '@', 1) FROM ferry.chunks WHERE run_id = %s",
            (run_id,),
        )
    }
    assert len(workers) >= 2
    assert fingerprint(db, "capped") == expected


def test_rows_per_second_budget_over_twenty_seconds(
    db: psycopg.Connection[Any], own_env: dict[str, str], pool: WorkerPool, tmp_path: Path
) -> None:
    prepare_reference(db, "budget", 12_000)
    for name in ("b0", "b1", "b2"):
        pool.start(name)
    path = slow_spec(tmp_path, "budget", 150, 0)
    run_id = launch(
        own_env,
        f"{path}:b",
        "--rows-per-second",
        "600",
        "--max-concurrency",
        "3",
        "--db-load",
        "0",
    )
    assert wait_run(db, run_id, timeout=120) == "completed"
    intervals = _intervals(db, run_id)
    span = max(b for _, b in intervals) - min(a for a, _ in intervals)
    rate = 12_000 / span
    assert span > 15 and abs(rate - 600) / 600 <= 0.15, (span, rate)


def test_db_load_bounds_the_database_time_of_the_run(
    db: psycopg.Connection[Any], own_env: dict[str, str], pool: WorkerPool, tmp_path: Path
) -> None:
    """Three workers, chunks of ~0.15 s: the run keeps a quarter of a connection busy."""
    _, expected = prepare_reference(db, "loaded", 4_000)
    for name in ("l0", "l1", "l2"):
        pool.start(name)
    path = slow_spec(tmp_path, "loaded", 200, 0.15)
    run_id = launch(own_env, f"{path}:b", "--max-concurrency", "3", "--db-load", "0.25")
    assert wait_run(db, run_id, timeout=120) == "completed"
    intervals = _intervals(db, run_id)
    busy = sum(b - a for a, b in intervals)
    span = max(b for _, b in intervals) - min(a for a, _ in intervals)
    assert len(intervals) == 20 and busy > 3.0
    # The budget is filled, not exceeded (the bucket's burst is a quarter of a second).
    assert 0.15 <= busy / span <= 0.25 * 1.2, (busy, span)
    assert fingerprint(db, "loaded") == expected


@pytest.mark.alone  # times a lease to 1.5 s
def test_killed_workers_slot_frees_within_the_lease(
    db: psycopg.Connection[Any], own_env: dict[str, str], pool: WorkerPool, tmp_path: Path
) -> None:
    _, expected = prepare_reference(db, "slot", 4_000)
    pool.start("s0")
    pool.start("s1")
    path = slow_spec(tmp_path, "slot", 200, 0.5)
    run_id = launch(own_env, f"{path}:b", "--max-concurrency", "1")
    deadline = time.monotonic() + 60
    holder = None
    while holder is None and time.monotonic() < deadline:
        row = db.execute(
            "SELECT split_part(worker, '@', 1), chunk_no FROM ferry.chunks "
            "WHERE run_id = %s AND status = 'running'",
            (run_id,),
        ).fetchone()
        holder = row
        time.sleep(0.02)
    assert holder is not None
    pool.kill(holder[0])
    killed_at = db.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
    deadline = time.monotonic() + 30
    started = None
    while started is None and time.monotonic() < deadline:
        started = db.execute(
            "SELECT min(started_at) FROM ferry.chunks WHERE run_id = %s AND started_at > %s",
            (run_id, killed_at),
        ).fetchone()[0]  # type: ignore[index]
        time.sleep(0.05)
    assert started is not None
    assert (started - killed_at).total_seconds() <= 3 + 1.5  # the 3 s lease, plus a retry
    assert wait_run(db, run_id, timeout=120) == "completed"
    assert fingerprint(db, "slot") == expected


def test_pause_stops_every_worker_and_resume_finishes(
    db: psycopg.Connection[Any], own_env: dict[str, str], pool: WorkerPool, tmp_path: Path
) -> None:
    _, expected = prepare_reference(db, "paused", 16_000)
    pool.start("p0")
    pool.start("p1")
    path = slow_spec(tmp_path, "paused", 200, 0.2)
    run_id = launch(own_env, f"{path}:b")
    while chunk_counts(db, run_id).get("done", 0) < 5:
        time.sleep(0.05)
    assert ferry("pause", str(run_id), env=own_env).returncode == 0
    paused_at = db.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
    time.sleep(6)
    late = db.execute(
        "SELECT count(*) FROM ferry.chunks WHERE run_id = %s AND started_at > "
        "%s + interval '5 seconds'",
        (run_id, paused_at),
    ).fetchone()
    assert late == (0,)
    counts = chunk_counts(db, run_id)
    assert counts.get("running", 0) == 0 and counts.get("pending", 0) > 0
    status = json.loads(ferry("status", str(run_id), "--json", env=own_env).stdout)
    assert status["run_status"] == "paused"
    assert ferry("resume", str(run_id), env=own_env).returncode == 0
    status = wait_run(db, run_id, timeout=120)
    errors = db.execute(
        "SELECT chunk_no, attempts, error FROM ferry.chunks WHERE run_id = %s "
        "AND error IS NOT NULL",
        (run_id,),
    ).fetchall()
    assert status == "completed", errors
    assert fingerprint(db, "paused") == expected
    actions = [
        a
        for (a,) in db.execute(
            "SELECT action FROM ferry.audit_log WHERE run_id = %s ORDER BY id", (run_id,)
        )
    ]
    assert actions == ["launch", "pause", "resume"]


def test_critical_health_pauses_the_run_with_an_alert(
    db: psycopg.Connection[Any], own_env: dict[str, str], pool: WorkerPool, tmp_path: Path
) -> None:
    _, expected = prepare_reference(db, "sick", 2_000)
    path = slow_spec(tmp_path, "sick", 200, 0)
    from coordinator import commands
    from workers.limits import Limits
    from workers.settings import Settings

    ctx = commands.Context(Settings.from_env(own_env))
    try:  # the probe can never be that fast: critical from the first chunk
        plan = commands.launch(ctx, f"{path}:b", limits=Limits(health={"probe_ms": (0, 0)}))
    finally:
        ctx.close()
    pool.start("h0")
    assert wait_run(db, plan.run_id or 0, timeout=30, until=("paused",)) == "paused"
    status = json.loads(ferry("status", str(plan.run_id), "--json", env=own_env).stdout)
    alert = [a for a in status["alerts"] if a["type"] == "health_pause"]
    assert alert and "probe_ms" in alert[0]["message"]
    assert status["status"] == "degraded"
    db.execute(
        "UPDATE ferry.runs SET params = jsonb_set(params, '{limits,health,probe_ms}', "
        "'[100, 2000]') WHERE id = %s",
        (plan.run_id,),
    )
    assert ferry("resume", str(plan.run_id), env=own_env).returncode == 0
    assert wait_run(db, plan.run_id or 0, timeout=60) == "completed"
    assert fingerprint(db, "sick") == expected


def test_cancel_finishes_in_flight_chunks_then_rollback_restores(
    db: psycopg.Connection[Any], own_env: dict[str, str], pool: WorkerPool, tmp_path: Path
) -> None:
    prepare_reference(db, "cancelled", 8_000)
    before = fingerprint(db, "cancelled")
    pool.start("x0")
    pool.start("x1")
    path = slow_spec(tmp_path, "cancelled", 200, 0.2)
    run_id = launch(own_env, f"{path}:b")
    while chunk_counts(db, run_id).get("done", 0) < 4:
        time.sleep(0.05)
    proc = ferry("cancel", str(run_id), env=own_env)
    assert proc.returncode == 0, proc.stderr
    assert wait_run(db, run_id, until=("cancelled",)) == "cancelled"
    time.sleep(2)
    counts = chunk_counts(db, run_id)
    assert set(counts) == {"done", "cancelled"} and counts["cancelled"] > 0
    done_rows = db.execute(
        "SELECT sum(rows_written) FROM ferry.chunks WHERE run_id = %s AND status = 'done'",
        (run_id,),
    ).fetchone()
    written = db.execute(
        "SELECT count(*) FROM cancelled WHERE score IS NOT NULL OR code IS NOT NULL"
    ).fetchone()
    assert done_rows == written  # every done chunk whole, nothing of the others
    assert ferry("rollback", str(run_id), "--wait", env=own_env).returncode == 0
    assert fingerprint(db, "cancelled") == before


def test_a_resume_is_seen_at_once_though_the_pause_was_cached(
    db: psycopg.Connection[Any], database_url: str, ledger_ready: None
) -> None:
    """The gate keeps a run's state a second; only "running" comes from that cache. A run
    resumed within the second must not have its tasks deferred (they would wait for the stall
    sweep, 90 s by default)."""
    from workers.db import Database
    from workers.gate import Gate
    from workers.settings import Settings
    from workers.throttle import MemoryLimiter

    row = db.execute(
        "INSERT INTO ferry.runs (backfill, status, spec, created_by) "
        "VALUES ('x', 'paused', '{}', 'pytest') RETURNING id"
    ).fetchone()
    assert row is not None
    run_id = int(row[0])
    now = [0.0]
    gate = Gate(
        Database(Settings.from_env({}, database_url=database_url)),
        MemoryLimiter(),
        lease=5,
        clock=lambda: now[0],
    )
    try:
        assert gate.control(run_id)[0] == "paused"
        db.execute("UPDATE ferry.runs SET status = 'running' WHERE id = %s", (run_id,))
        assert gate.control(run_id)[0] == "running"  # same instant: not the cached pause
        db.execute("UPDATE ferry.runs SET status = 'paused' WHERE id = %s", (run_id,))
        assert gate.control(run_id)[0] == "running"  # a second of "running" is cached
        now[0] += 2
        assert gate.control(run_id)[0] == "paused"
    finally:
        db.execute("DELETE FROM ferry.runs WHERE id = %s", (run_id,))
