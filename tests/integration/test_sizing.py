"""Chunk sizing to a target duration, and chunks cut when they hit statement_timeout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from tests.conftest import WorkerPool, ferry
from tests.helpers import fingerprint, launch, ledger_id, prepare_reference, spec_file, wait_run
from workers.progress import errors_key

SLOW_ROWS = """
import time

def per_row(df):
    time.sleep(len(df) * {per_row})  # a transform whose cost grows with the chunk
    out = pd.DataFrame({{"id": df["id"]}})
    out["score"] = df["a"] * 3 + df["b"]
    out["code"] = df["name"].str.strip().str.upper()
    return out

b = Backfill(table="{table}", key="id", reads=["a", "b", "name"], writes=["score", "code"],
             transform=per_row, chunk_size={chunk})
s = Backfill(table="{table}", key="id", reads=["a", "b", "name"], writes=["score", "code"],
             sql={{"score": "a * 3 + b",
                   "code": "(SELECT upper(trim(name))"
                           " FROM pg_sleep({per_row} + 0 * coalesce(length(name), 0)))"}},
             chunk_size={chunk}, allow_functions=["pg_sleep"])
"""


def _chunks(db: psycopg.Connection[Any], run_id: int) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT chunk_no, planned_rows, split_from, rows_read, duration_ms, status"
        " FROM ferry.chunks WHERE run_id = %s ORDER BY finished_at",
        (run_id,),
    ).fetchall()


@pytest.mark.usefixtures("workers")
def test_chunks_are_cut_to_the_target_duration(
    db: psycopg.Connection[Any], env: dict[str, str], tmp_path: Path
) -> None:
    """Planned at 2,000 rows (1 s each), chunks shrink toward 0.25 s; every row once."""
    before, reference = prepare_reference(db, "sized", 8_000)
    assert before != reference
    path = spec_file(tmp_path, SLOW_ROWS.format(table="sized", chunk=2_000, per_row=0.0005))
    run_id = launch(env, f"{path}:b", "--chunk-time", "0.25")
    assert wait_run(db, run_id) == "completed"
    assert fingerprint(db, "sized") == reference

    chunks = _chunks(db, run_id)
    assert sum(c[3] for c in chunks) == 8_000  # the cut ranges still partition the table
    cut = [c for c in chunks if c[2] is not None]
    assert len(chunks) > 4 and cut, chunks
    # Once measured, chunks hold what fits 0.25 s (about 500 rows here), not the planned 2,000.
    assert max(c[3] for c in chunks[-4:]) <= 1_000, chunks
    row = db.execute("SELECT target_rows, total_chunks FROM ferry.runs WHERE id = %s", (run_id,))
    target, total = row.fetchone() or (None, None)
    assert target is not None and 50 <= target <= 1_000
    assert total == len(chunks)
    # A cut chunk's second half is numbered after the chunks above it: verify still sees the
    # run's whole range (it took the last chunk by number for the end of it).
    proc = ferry("verify", str(run_id), "--json", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["counts"]["rows_in_range"] == 8_000


def test_a_chunk_that_hits_statement_timeout_is_cut_in_half(
    db: psycopg.Connection[Any],
    own_env: dict[str, str],
    pool: WorkerPool,
    tmp_path: Path,
    redis_url: str,
) -> None:
    """400 rows at 5 ms each cannot fit a 1 s statement_timeout: halves until they do."""
    before, reference = prepare_reference(db, "timed", 800)
    path = spec_file(tmp_path, SLOW_ROWS.format(table="timed", chunk=400, per_row=0.005))
    run_id = launch(own_env, f"{path}:s", "--chunk-time", "5")  # preflight: no timeout
    own_env["FERRY_STATEMENT_TIMEOUT_MS"] = "1000"  # the pool's environment is this dict
    pool.start("t1")
    assert wait_run(db, run_id) == "completed"
    assert fingerprint(db, "timed") == reference

    chunks = _chunks(db, run_id)
    assert sum(c[3] for c in chunks) == 800
    assert max(c[3] for c in chunks) <= 200, chunks  # nothing of 400 rows could commit
    assert any(c[2] is not None for c in chunks)
    events = redis.Redis.from_url(redis_url, decode_responses=True).xrange(
        errors_key(ledger_id(db), run_id)
    )
    assert any(e[1]["message"].startswith("57014") for e in events), events
