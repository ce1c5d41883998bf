"""Retention: dropping the PHI a finished run keeps (pre-images, quarantined rows).

Pre-images (``ferry.backup_<run>``) and quarantined values are copies of patient data
kept only so a run can be rolled back or its rejects inspected. Past the retention
period they are a liability, so ``ferry purge`` drops them, but never for a run that
is still active, and never for one whose latest verification did not pass unless asked:
an unverified run may still need its rollback. The run, its chunks and its audit trail
stay; ``ferry.backups.purged_at`` records that the run can no longer be rolled back.
"""

from __future__ import annotations

import re
from datetime import UTC, timedelta
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from migrations.errors import BadInput, CheckFailed
from workers.statements import Statements, backup_table

if TYPE_CHECKING:
    from coordinator.commands import Context

Conn = psycopg.Connection[Any]

# rollback_failed: its chunks' writes are still in the table and their pre-images needed
ACTIVE = ("planning", "running", "paused", "rolling_back", "rollback_failed")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PERIOD = re.compile(r"\s*(\d{1,6})\s*([smhdw])\s*")

# Finished runs older than the period whose pre-images or quarantine are still kept,
# with whether their latest verification passed.
_CANDIDATES = """
SELECT r.id, r.status, coalesce(r.finished_at, r.created_at) AS finished_at,
       v.ok AS verified,
       (SELECT count(*) FROM ferry.quarantine q WHERE q.run_id = r.id) AS quarantined
  FROM ferry.runs r
  JOIN ferry.backups b ON b.run_id = r.id
  LEFT JOIN LATERAL (SELECT ok FROM ferry.verifications v
                      WHERE v.run_id = r.id ORDER BY v.at DESC, v.id DESC LIMIT 1) v ON true
 WHERE b.purged_at IS NULL
   AND r.status <> ALL(%(active)s)
   AND coalesce(r.finished_at, r.created_at) < clock_timestamp() - %(period)s
 ORDER BY r.id
"""
_LOCK_RUN = "SELECT status FROM ferry.runs WHERE id = %(run_id)s FOR UPDATE"
_DROP_QUARANTINE = "DELETE FROM ferry.quarantine WHERE run_id = %(run_id)s"
_MARK = (
    "UPDATE ferry.backups SET purged_at = clock_timestamp() "
    "WHERE run_id = %(run_id)s AND purged_at IS NULL RETURNING purged_at"
)
_PURGED_AT = "SELECT purged_at FROM ferry.backups WHERE run_id = %(run_id)s"


def parse_period(text: str) -> timedelta:
    """``30d``, ``12h``, ``2w``, ``90m``, ``45s``: the only forms, so a typo cannot purge all."""
    match = _PERIOD.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise BadInput(f"--older-than {text!r} is not a period like 30d, 12h, 2w, 90m or 45s")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def check_not_purged(conn: Conn, run_id: int) -> None:
    """Refuse, in one line, to roll back a run whose pre-images were purged."""
    row = conn.execute(_PURGED_AT, {"run_id": run_id}).fetchone()
    if row is not None and row["purged_at"] is not None:
        purged_at = row["purged_at"].astimezone(UTC)
        raise CheckFailed(
            f"run {run_id} was purged on {purged_at:%Y-%m-%d %H:%M} UTC (pre-images dropped "
            "by ferry purge): it can no longer be rolled back"
        )


def purge(
    ctx: Context,
    older_than: timedelta,
    *,
    dry_run: bool = False,
    include_unverified: bool = False,
) -> dict[str, Any]:
    """Purge every eligible run, one transaction each, each audited; or list them (dry run)."""
    ctx.ledger.require()
    with ctx.db.transaction() as conn:
        conn.execute("SET LOCAL TimeZone = 'UTC'")
        rows = conn.execute(_CANDIDATES, {"active": list(ACTIVE), "period": older_than}).fetchall()
    purged: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for row in rows:
        entry = {
            "run_id": row["id"],
            "status": row["status"],
            "finished_at": row["finished_at"],
            "verified": bool(row["verified"]),
            "quarantine_rows": int(row["quarantined"]),
        }
        if not row["verified"] and not include_unverified:
            skipped.append(entry | {"reason": "not verified (pass --include-unverified)"})
            continue
        if not dry_run and not _purge_run(ctx, entry, older_than, include_unverified):
            skipped.append(entry | {"reason": "became active or was purged meanwhile"})
            continue
        purged.append(entry)
    return {
        "dry_run": dry_run,
        "older_than_seconds": int(older_than.total_seconds()),
        "purged": purged,
        "skipped": skipped,
    }


def _purge_run(
    ctx: Context, entry: dict[str, Any], older_than: timedelta, include_unverified: bool
) -> bool:
    run_id = entry["run_id"]
    with ctx.db.transaction() as conn:
        locked = conn.execute(_LOCK_RUN, {"run_id": run_id}).fetchone()
        if locked is None or locked["status"] in ACTIVE:
            return False
        marked = conn.execute(_MARK, {"run_id": run_id}).fetchone()
        if marked is None:
            return False
        backup = backup_table(run_id)
        exists = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL AS e", (backup.as_string(conn),)
        ).fetchone()
        backup_rows = 0
        if exists and exists["e"]:
            statements = Statements(ctx.ledger.get_run(run_id, conn).spec, run_id)
            count = conn.execute(statements.count_pre_images()).fetchone()
            backup_rows = int(count["n"]) if count else 0
            conn.execute(sql.SQL("DROP TABLE {}").format(backup))
        deleted = conn.execute(_DROP_QUARANTINE, {"run_id": run_id}).rowcount
        entry.update(backup_rows=backup_rows, quarantine_rows=deleted)
        ctx.ledger.audit(
            conn,
            actor=ctx.settings.actor,
            action="purge",
            run_id=run_id,
            params={
                "older_than_seconds": int(older_than.total_seconds()),
                "include_unverified": include_unverified,
                "verified": entry["verified"],
                "backup_rows_dropped": backup_rows,
                "quarantine_rows_deleted": deleted,
            },
        )
    return True
