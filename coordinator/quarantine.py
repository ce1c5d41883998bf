"""Quarantined rows: list them by rule, export them, and re-run them once fixed.

Values are masked (``***`` + keyed hash) everywhere. ``--unmask`` reads the raw
values from ``ferry.quarantine_values``, which only roles granted SELECT on it
can read: the database decides who may unmask, and the export is audited. When
the run's key column is classified PHI, row keys are masked the same way, and
each exported row says whether its field is PHI. With FERRY_ENCRYPTION_KEY the
raw values are stored encrypted and decrypted only by an unmasking export.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import psycopg

from coordinator.commands import Context, send_again
from migrations.errors import CheckFailed
from workers.encryption import unmasked_rows
from workers.failures import describe
from workers.ledger import q
from workers.model import Run

EXPORT_COLUMNS = ("run_id", "chunk_no", "row_key", "field", "rule_type", "message", "value")


def summary(ctx: Context, run_id: int) -> dict[str, Any]:
    with ctx.db.transaction() as conn:
        run = ctx.ledger.get_run(run_id, conn)
        rules = [dict(r) for r in conn.execute(q("quarantine_summary"), {"run_id": run_id})]
    phi = _phi(run)
    if run.spec.key in phi:  # ``row_key masked-value``: the key masked too, as a value
        split = [e.rpartition(" ") for rule in rules for e in rule["examples"]]
        masked = iter(ctx.ledger.mask([key for key, _, _ in split]))
        for rule in rules:
            rule["examples"] = [f"{next(masked)} {e.rpartition(' ')[2]}" for e in rule["examples"]]
    for rule in rules:
        rule["phi"] = rule["field"] in phi
    return {"run_id": run_id, "rows": sum(r["rows"] for r in rules), "rules": rules, "phi": phi}


def _phi(run: Run) -> list[str]:
    """The run's PHI columns as stored with its spec (empty for runs before classification)."""
    return list(run.spec.extra.get("phi", ()))


def export(ctx: Context, run_id: int, path: Path, *, unmask: bool = False) -> int:
    with ctx.db.transaction() as conn:
        run = ctx.ledger.get_run(run_id, conn)
        allowed = conn.execute(q("can_unmask")).fetchone() if unmask else None
    if unmask and (not allowed or not allowed["ok"]):
        _audit_refusal(ctx, run_id, path)
        raise CheckFailed(
            f"{ctx.settings.actor} may not unmask quarantined values "
            "(needs SELECT on ferry.quarantine_values)"
        )
    with ctx.db.transaction() as conn:
        phi = _phi(run)
        # A PHI key is masked like a value; only an unmasking export (the privilege checked
        # above, audited below) shows raw keys and values.
        query = unmasked_rows() if unmask else q("quarantine_rows")
        try:
            rows = [dict(r) for r in conn.execute(query, {"run_id": run_id})]
        except psycopg.Error as exc:  # e.g. decrypting with a missing or wrong key
            raise CheckFailed(f"cannot export run {run_id}: {describe(exc)}") from None
        if run.spec.key in phi and not unmask:
            for row, masked in zip(
                rows, ctx.ledger.mask([r["row_key"] for r in rows]), strict=True
            ):
                row["row_key"] = masked
        written = 0
        with path.open("w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow((*EXPORT_COLUMNS, "phi"))
            for values in rows:
                out.writerow(
                    [run_id, *(values[c] for c in EXPORT_COLUMNS[1:]), values["field"] in phi]
                )
                written += 1
        ctx.ledger.audit(
            conn,
            actor=ctx.settings.actor,
            action="quarantine_export",
            run_id=run_id,
            params={"rows": written, "unmask": unmask, "file": path.name},
        )
    return written


def _audit_refusal(ctx: Context, run_id: int, path: Path) -> None:
    """A refused attempt to unmask is recorded too, when the role may write the audit log."""
    try:
        with ctx.db.transaction() as conn:
            ctx.ledger.audit(
                conn,
                actor=ctx.settings.actor,
                action="quarantine_unmask_refused",
                run_id=run_id,
                params={"file": path.name},
            )
    except psycopg.Error:
        pass  # a role without INSERT on the audit log: the refusal still stands


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
    sent = send_again(ctx, run_id, run.params)
    return {"run_id": run_id, "dispatched": sent, "chunks": len(chunks)}
