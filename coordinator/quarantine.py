"""Quarantined rows: list them by rule, export them, and re-run them once fixed.

Values are masked (``***`` + keyed hash) everywhere. ``--unmask`` reads the raw
values from ``ferry.quarantine_values``, which only roles granted SELECT on it
can read: the database decides who may unmask, and the export is audited.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from coordinator.commands import Context
from migrations.errors import CheckFailed
from workers.ledger import q

EXPORT_COLUMNS = ("run_id", "chunk_no", "row_key", "field", "rule_type", "message", "value")


def summary(ctx: Context, run_id: int) -> dict[str, Any]:
    with ctx.db.transaction() as conn:
        ctx.ledger.get_run(run_id, conn)
        rules = [dict(r) for r in conn.execute(q("quarantine_summary"), {"run_id": run_id})]
    return {"run_id": run_id, "rows": sum(r["rows"] for r in rules), "rules": rules}


def export(ctx: Context, run_id: int, path: Path, *, unmask: bool = False) -> int:
    with ctx.db.transaction() as conn:
        ctx.ledger.get_run(run_id, conn)
        if unmask:
            allowed = conn.execute(q("can_unmask")).fetchone()
            if not allowed or not allowed["ok"]:
                raise CheckFailed(
                    f"{ctx.settings.actor} may not unmask quarantined values "
                    "(needs SELECT on ferry.quarantine_values)"
                )
        query = q("quarantine_rows_unmasked" if unmask else "quarantine_rows")
        written = 0
        with path.open("w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(EXPORT_COLUMNS)
            for row in conn.execute(query, {"run_id": run_id}):
                out.writerow([run_id, *(row[c] for c in EXPORT_COLUMNS[1:])])
                written += 1
        ctx.ledger.audit(
            conn,
            actor=ctx.settings.actor,
            action="quarantine_export",
            run_id=run_id,
            params={"rows": written, "unmask": unmask, "file": path.name},
        )
    return written


def retry_quarantined(ctx: Context, run_id: int) -> dict[str, Any]:
    """Re-run exactly the quarantined rows (after their data or the rule was fixed)."""
    with ctx.db.transaction() as conn:
        run = ctx.ledger.get_run(run_id, conn)
        if run.status not in ("completed_with_errors", "completed", "failed"):
            raise CheckFailed(f"run {run_id} is {run.status}; retry it once it has ended")
        chunks = [r["chunk_no"] for r in conn.execute(q("requeue_quarantined"), {"run_id": run_id})]
        if not chunks:
            raise CheckFailed(f"run {run_id} has no quarantined rows")
        conn.execute(q("reopen_run"), {"run_id": run_id, "from": [run.status]})
        ctx.ledger.audit(
            conn,
            actor=ctx.settings.actor,
            action="retry",
            run_id=run_id,
            params={"quarantined": True, "chunks": len(chunks)},
        )
    ctx.dispatcher.send_chunks(run_id, chunks, queue=run.params.get("queue"))
    return {"run_id": run_id, "dispatched": len(chunks)}
