"""Every read and write of ``ferry.schema_versions`` (created by the ledger's version 4).

The runner gets a psycopg connection from its caller (``migrations`` imports neither
``workers`` nor ``coordinator``), so the few statements it needs live here, in one place.
Each write commits on its own (the connection is in autocommit mode): the states
``in_progress`` and ``failed`` must be visible whatever happens to the migration's
transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from migrations.errors import NotFound
from migrations.schema.source import MigrationFile

Conn = psycopg.Connection[Any]


@dataclass(frozen=True, kw_only=True)
class VersionRow:
    version: int
    name: str
    description: str
    category: str
    status: str
    checksum: str
    applied_at: datetime | None
    applied_by: str | None
    rollback_point: str | None
    non_transactional: bool
    error: str | None
    backfill: str | None
    run_id: int | None

    @property
    def awaiting(self) -> bool:
        """Its SQL is committed and it waits for its backfill to be verified."""
        return self.status == "in_progress" and self.applied_at is not None

    @property
    def applied(self) -> bool:
        return self.status == "completed" or self.awaiting

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> VersionRow:
        return cls(**{k: row[k] for k in cls.__dataclass_fields__})


_COLUMNS = (
    "version, name, description, category, status, checksum, applied_at, applied_by, "
    "rollback_point, non_transactional, error, backfill, run_id"
)


def require_ledger(conn: Conn) -> None:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT to_regclass('ferry.schema_versions') IS NOT NULL AS ok"
        ).fetchone()
    if not row or not row["ok"]:
        raise NotFound("the ledger has no schema_versions table here: run `ferry init` first")


def load(conn: Conn) -> dict[int, VersionRow]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM ferry.schema_versions ORDER BY version")
        return {r["version"]: VersionRow.from_row(r) for r in cur.fetchall()}


def start(conn: Conn, migration: MigrationFile, *, actor: str, rollback_point: str) -> None:
    """Record that ``migration`` is being applied (its own commit, before the work)."""
    conn.execute(
        "INSERT INTO ferry.schema_versions AS v (version, name, description, category, status,"
        " checksum, applied_by, rollback_point, non_transactional, backfill)"
        " VALUES (%(version)s, %(name)s, %(description)s, %(category)s, 'in_progress',"
        " %(checksum)s, %(actor)s, %(rollback_point)s, %(non_transactional)s,"
        " %(backfill)s)"
        " ON CONFLICT (version) DO UPDATE SET name = excluded.name,"
        " description = excluded.description, category = excluded.category,"
        " status = 'in_progress', checksum = excluded.checksum, applied_by = excluded.applied_by,"
        " rollback_point = excluded.rollback_point,"
        " non_transactional = excluded.non_transactional, backfill = excluded.backfill,"
        " applied_at = NULL, error = NULL, run_id = NULL,"
        " updated_at = clock_timestamp()",
        {
            "version": migration.version,
            "name": migration.name,
            "description": migration.description,
            "category": migration.category.value,
            "checksum": migration.checksum,
            "actor": actor,
            "rollback_point": rollback_point,
            "non_transactional": not migration.transactional,
            "backfill": migration.backfill,
        },
    )


def set_status(
    conn: Conn, version: int, status: str, *, error: str | None = None, actor: str | None = None
) -> None:
    """Move a version to ``status``; ``completed`` also stamps when and by whom."""
    conn.execute(
        "UPDATE ferry.schema_versions SET status = %(status)s, error = %(error)s,"
        " applied_at = CASE WHEN %(status)s = 'completed' AND applied_at IS NULL"
        "                   THEN clock_timestamp()"
        "                   ELSE applied_at END,"
        " applied_by = coalesce(%(actor)s, applied_by), updated_at = clock_timestamp()"
        " WHERE version = %(version)s",
        {"status": status, "error": error, "actor": actor, "version": version},
    )


def set_checksum(conn: Conn, version: int, checksum: str) -> None:
    conn.execute(
        "UPDATE ferry.schema_versions SET checksum = %s, updated_at = clock_timestamp()"
        " WHERE version = %s",
        (checksum, version),
    )


def forget(conn: Conn, version: int) -> None:
    """Drop a failed version's row: it is pending again (``repair``)."""
    conn.execute("DELETE FROM ferry.schema_versions WHERE version = %s", (version,))


def await_backfill(conn: Conn, version: int) -> None:
    """The version's SQL committed; it stays in_progress until its backfill is verified."""
    conn.execute(
        "UPDATE ferry.schema_versions SET applied_at = clock_timestamp(), error = NULL,"
        " updated_at = clock_timestamp() WHERE version = %s",
        (version,),
    )


def complete_with_run(conn: Conn, version: int, run_id: int) -> None:
    conn.execute(
        "UPDATE ferry.schema_versions SET status = 'completed', run_id = %s,"
        " updated_at = clock_timestamp() WHERE version = %s",
        (run_id, version),
    )


def verified_run(conn: Conn, backfill: str, since: datetime) -> int | None:
    """The newest run of ``backfill`` started after ``since``, completed, last verified ok."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT r.id FROM ferry.runs r"
            " CROSS JOIN LATERAL (SELECT ok FROM ferry.verifications v WHERE v.run_id = r.id"
            "                     ORDER BY v.at DESC, v.id DESC LIMIT 1) last"
            " WHERE r.backfill = %s AND r.created_at >= %s AND r.status = 'completed' AND last.ok"
            " ORDER BY r.id DESC LIMIT 1",
            (backfill, since),
        ).fetchone()
    return None if row is None else int(row["id"])


def runs_with_writes(conn: Conn, backfill: str, since: datetime) -> list[int]:
    """Runs of ``backfill`` since ``since`` that still hold applied (or running) chunks."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT r.id FROM ferry.runs r WHERE r.backfill = %s AND r.created_at >= %s"
            " AND EXISTS (SELECT FROM ferry.chunks c WHERE c.run_id = r.id"
            "             AND c.status IN ('done', 'running')) ORDER BY r.id DESC",
            (backfill, since),
        ).fetchall()
    return [int(r["id"]) for r in rows]
