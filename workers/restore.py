"""Rolling a chunk back: its pre-images written back in one transaction.

Pre-images live in the run's backup table with the columns' own types, so
the restored bytes are the original bytes (an encrypted run's are decrypted and
cast back to those types in the restore statement: ``workers.encryption``).
A row is restored only where it still holds what the chunk wrote; the others are
left to the application and recorded (``workers.restore_sql``).
The chunk's ledger row is locked first and marked rolled_back, with its counts, in
the same transaction, which makes a restore safe to deliver twice.

The transaction arms ``idle_in_transaction_session_timeout`` like a chunk's: a
worker cut off mid-restore would otherwise hold the rows' locks for ever. A failed
attempt is recorded on the chunk; errors no retry can fix (a table dropped, a column
gone: any permanent error) and the last of ``rollback_max_attempts`` end the chunk's
restore for good, and the run, once nothing else is left, ends ``rollback_failed``.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from migrations.errors import ChunkError, FerryError, PermanentChunkError, TransientChunkError
from workers.db import Database
from workers.failures import classify
from workers.ledger import Ledger, q
from workers.model import ChunkResult
from workers.settings import Settings
from workers.statements import Statements


def restore_chunk(
    db: Database, ledger: Ledger, settings: Settings, run_id: int, chunk_no: int
) -> ChunkResult:
    """Restore one chunk; raises TransientChunkError to be retried, PermanentChunkError when
    the chunk's restore has failed for good (recorded in the ledger either way)."""
    run = ledger.get_run(run_id)
    statements = Statements(run.spec, run.id)
    force = bool(run.params.get("rollback_force"))
    phi_key = run.spec.key in run.spec.extra.get("phi", ())
    ids = {"run_id": run_id, "chunk_no": chunk_no}
    with db.connect() as conn:
        try:
            result = _restore(conn, statements, settings, ids, force=force, mask=phi_key)
            if result.outcome == "rolled_back" and force:
                _audit_overwrites(ledger, conn, run.params.get("rollback_by"), ids)
            conn.commit()
            return result
        except (FerryError, psycopg.Error) as exc:
            conn.rollback()
            err = classify(exc)
    final = _record_failure(db, settings, run_id, chunk_no, err)
    if final:
        raise PermanentChunkError(str(err)) from None
    raise err


def _record_failure(
    db: Database, settings: Settings, run_id: int, chunk_no: int, err: ChunkError
) -> bool:
    """Count the failed attempt on the chunk (its count drives the retry's backoff); True
    when no retry is to follow."""
    permanent = not isinstance(err, TransientChunkError)
    try:
        with db.transaction() as conn:
            row = conn.execute(
                q("restore_failed"),
                {
                    "run_id": run_id,
                    "chunk_no": chunk_no,
                    "error": str(err),
                    "final": permanent,
                    "max_attempts": settings.rollback_max_attempts,
                },
            ).fetchone()
    except psycopg.Error:  # the ledger is out of reach too: the task retries the whole thing
        return permanent
    if row is None:
        return permanent
    err.attempt = int(row["restore_attempts"])
    return bool(row["final"])


def _audit_overwrites(
    ledger: Ledger, conn: psycopg.Connection[Any], actor: Any, ids: dict[str, int]
) -> None:
    """``--force`` put pre-images over rows the application changed: say so in the audit log,
    in the restore's own transaction (no overwrite without its record)."""
    row = conn.execute(q("chunk_overwrites"), ids).fetchone()
    if row is None or not row["rows_overwritten"]:
        return
    ledger.audit(
        conn,
        actor=str(actor or "unknown"),
        action="rollback_overwrite",
        run_id=ids["run_id"],
        params={"chunk": ids["chunk_no"], "rows": int(row["rows_overwritten"])},
    )


def _restore(
    conn: psycopg.Connection[Any],
    statements: Statements,
    settings: Settings,
    ids: dict[str, int],
    *,
    force: bool,
    mask: bool,
) -> ChunkResult:
    """The restore transaction, left open for the caller to add its audit record and commit."""
    run_id, chunk_no = ids["run_id"], ids["chunk_no"]
    conn.rollback()
    conn.execute(
        "SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true),"
        " set_config('idle_in_transaction_session_timeout', %s, true)",
        (
            f"{settings.lock_timeout_ms}ms",
            f"{settings.statement_timeout_ms}ms",
            f"{settings.idle_in_transaction_timeout_ms}ms",
        ),
    )
    row = conn.execute(q("lock_chunk_for_restore"), ids).fetchone()
    if row is None or row["status"] != "done" or not row["requested"]:
        # Not done, or done but no rollback asked for it (a stray or forged task): untouched.
        conn.rollback()
        return ChunkResult(run_id=run_id, chunk_no=chunk_no, outcome="noop")
    started = time.perf_counter()
    counts = conn.execute(statements.restore(chunk_no, force=force, mask=mask)).fetchone()
    assert counts is not None
    conn.execute(
        q("mark_rolled_back"),
        {
            **ids,
            "rows": counts["rows"],
            "kept": counts["kept"],
            "gone": counts["gone"],
            "overwritten": counts["overwritten"],
        },
    )
    return ChunkResult(
        run_id=run_id,
        chunk_no=chunk_no,
        outcome="rolled_back",
        rows_written=int(counts["rows"]),
        duration_ms=(time.perf_counter() - started) * 1000,
    )
