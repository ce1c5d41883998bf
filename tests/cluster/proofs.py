"""What the cluster tests prove after each fault, read from the table and the ledger."""

from __future__ import annotations

import time
from typing import Any

import psycopg

from tests.helpers import fingerprint, pre_image_counts

Conn = psycopg.Connection[Any]


def host_of(worker: str) -> str:
    """The host of a ledger ``worker`` (``node@hostname:pid``); each host has its own hostname."""
    return worker.rsplit(":", 1)[0].rsplit("@", 1)[-1]


def exactly_once(db: Conn, table: str, run_id: int, expected: str, rows: int) -> None:
    """The table equals the single-UPDATE reference; ledger and pre-images count each row once."""
    assert fingerprint(db, table) == expected
    ledger = db.execute(
        "SELECT sum(rows_read), sum(rows_written), count(*) FILTER (WHERE status <> 'done') "
        "FROM ferry.chunks WHERE run_id = %s",
        (run_id,),
    ).fetchone()
    backups = pre_image_counts(db, run_id)
    assert ledger is not None and ledger[0] == rows and ledger[2] == 0, ledger
    assert backups == (ledger[1], ledger[1]), (backups, ledger)


def chunks_by_host(db: Conn, run_id: int) -> dict[str, int]:
    rows = db.execute(
        "SELECT worker, count(*) FROM ferry.chunks WHERE run_id = %s AND status = 'done' "
        "GROUP BY worker",
        (run_id,),
    ).fetchall()
    out: dict[str, int] = {}
    for worker, count in rows:
        out[host_of(worker)] = out.get(host_of(worker), 0) + int(count)
    return out


def ledger_snapshot(db: Conn, run_id: int) -> list[tuple[Any, ...]]:
    """Every column of the run's chunks, its run row and pre-image count: equal means untouched."""
    chunks = db.execute(
        "SELECT c::text FROM ferry.chunks c WHERE run_id = %s ORDER BY chunk_no", (run_id,)
    ).fetchall()
    run = db.execute(
        "SELECT status, finished_at FROM ferry.runs WHERE id = %s", (run_id,)
    ).fetchall()
    images = [pre_image_counts(db, run_id)]
    return [*chunks, *run, *images]


def wait_held(
    db: Conn, run_id: int, host: str, timeout: float = 60, claimed_within: float = 0.2
) -> list[int]:
    """The chunks ``host`` holds (running, with its lease) as soon as one of them was claimed
    at most ``claimed_within`` seconds ago: a chunk seen late in its transaction may commit
    before the caller has acted on it (the first chunks are claimed while ``ferry launch``
    exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = db.execute(
            "SELECT chunk_no, started_at > clock_timestamp() - make_interval(secs => %s) "
            "FROM ferry.chunks WHERE run_id = %s AND status = 'running' AND worker LIKE %s "
            "ORDER BY chunk_no",
            (claimed_within, run_id, f"%@{host}:%"),
        ).fetchall()
        if any(fresh for _, fresh in rows):
            return [int(chunk) for chunk, _ in rows]
        time.sleep(0.02)
    raise AssertionError(f"{host} never held a chunk of run {run_id}")
