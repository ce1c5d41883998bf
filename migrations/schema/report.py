"""What ``ferry schema status`` and ``plan`` show: files joined with their ledger rows.

Read-only, so neither takes the migrator lock: a status taken while another migrator
runs shows its version ``in_progress``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from migrations.schema import store
from migrations.schema.lint import lint
from migrations.schema.runner import Conn, SchemaRunner
from migrations.schema.source import MigrationFile


def status(conn: Conn, migrations: Sequence[MigrationFile]) -> list[dict[str, Any]]:
    """One entry per version known to the folder or the ledger, in version order."""
    store.require_ledger(conn)
    rows = store.load(conn)
    files = {m.version: m for m in migrations}
    found = []
    for version in sorted(set(files) | set(rows)):
        migration, row = files.get(version), rows.get(version)
        described = migration if migration is not None else row
        assert described is not None
        notes = []
        if migration is None:
            notes.append("file missing")
        elif row is not None and row.status == "completed" and row.checksum != migration.checksum:
            notes.append("checksum changed: run `ferry schema repair` to accept")
        step = migration is not None and migration.is_backfill_step
        if row is not None and row.awaiting and step:
            run = f"run {row.run_id}" if row.run_id else "its run"
            notes.append(f"backfill step: `ferry schema up` follows and verifies {run}")
        elif row is not None and row.awaiting:
            notes.append(f"waits for backfill {row.backfill} to be launched and verified")
        if migration is not None and migration.rollback is None:
            notes.append("no rollback section")
        if migration is not None and not migration.transactional:
            notes.append("non-transactional")
        found.append(
            {
                "version": version,
                "name": described.name,
                "description": described.description,
                "category": migration.category.value if migration else row.category if row else "",
                "status": row.status if row else "pending",
                "applied_at": row.applied_at.isoformat() if row and row.applied_at else None,
                "applied_by": row.applied_by if row else None,
                "rollback_point": row.rollback_point if row else None,
                "error": row.error if row else None,
                "backfill": migration.backfill if migration else row.backfill if row else None,
                "run_id": row.run_id if row else None,
                "notes": notes,
            }
        )
    return found


def plan(
    conn: Conn, migrations: Sequence[MigrationFile], *, to: int | None = None
) -> list[dict[str, Any]]:
    """The versions ``up`` would apply and, for each, its statements and lint findings."""
    store.require_ledger(conn)
    runner = SchemaRunner(conn, migrations, actor="plan")
    todo = runner.pending(store.load(conn), to)
    files = {m.version: m for m in migrations}
    result = []
    for version in todo:
        migration = files[version]
        result.append(
            {
                "version": version,
                "name": migration.name,
                "description": migration.description,
                "category": migration.category.value,
                "transactional": migration.transactional,
                "rollback": migration.rollback is not None,
                "kind": migration.kind,
                "backfill": migration.backfill,
                "statements": [
                    {
                        "line": s.line,
                        "phase": s.phase.value,
                        "category": s.category.value,
                        "own_transaction": s.own_transaction,
                        "sql": s.first_line,
                    }
                    for s in (*migration.preconditions, *migration.forward)
                ],
                "findings": [f.as_dict() for f in lint(migration)],
            }
        )
    return result
