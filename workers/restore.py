"""Rolling a chunk back: its pre-images written back in one transaction.

Pre-images live in the run's backup table with the columns' own types, so
the restored bytes are the original bytes (an encrypted run's are decrypted and
cast back to those types in the restore statement: ``workers.encryption``).
The chunk's ledger row is locked first and marked rolled_back in the same
transaction, which makes a restore safe to deliver twice.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from migrations.errors import FerryError
from workers.db import Database
from workers.failures import classify
from workers.ledger import Ledger, q
from workers.model import ChunkResult
from workers.settings import Settings
from workers.statements import Statements


def restore_chunk(
    db: Database, ledger: Ledger, settings: Settings, run_id: int, chunk_no: int
) -> ChunkResult:
    run = ledger.get_run(run_id)
    statements = Statements(run.spec, run.id)
    with db.connect() as conn:
        try:
            return _restore(conn, statements, settings, run_id, chunk_no)
        except (FerryError, psycopg.Error) as exc:
            conn.rollback()
            raise classify(exc) from exc


def _restore(
    conn: psycopg.Connection[Any],
    statements: Statements,
    settings: Settings,
    run_id: int,
    chunk_no: int,
) -> ChunkResult:
    conn.rollback()
    conn.execute(
        "SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)",
        (f"{settings.lock_timeout_ms}ms", f"{settings.statement_timeout_ms}ms"),
    )
    row = conn.execute(
        q("lock_chunk_for_restore"), {"run_id": run_id, "chunk_no": chunk_no}
    ).fetchone()
    if row is None or row["status"] != "done":
        conn.rollback()
        return ChunkResult(run_id=run_id, chunk_no=chunk_no, outcome="noop")
    started = time.perf_counter()
    restored = conn.execute(statements.restore(chunk_no)).fetchone()
    conn.execute(q("mark_rolled_back"), {"run_id": run_id, "chunk_no": chunk_no})
    conn.commit()
    return ChunkResult(
        run_id=run_id,
        chunk_no=chunk_no,
        outcome="rolled_back",
        rows_written=int(restored["rows"]) if restored else 0,
        duration_ms=(time.perf_counter() - started) * 1000,
    )
