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
        "UPDATE ferry.schema_versions SET status = 'completed', run_id = %s, error = NULL,"
        " updated_at = clock_timestamp() WHERE version = %s",
        (run_id, version),
    )


def set_run(conn: Conn, version: int, run_id: int) -> None:
    """Record the run a Python backfill step launched (the version stays in_progress)."""
    conn.execute(
        "UPDATE ferry.schema_versions SET run_id = %s, error = NULL,"
        " updated_at = clock_timestamp() WHERE version = %s",
        (run_id, version),
    )


def note(conn: Conn, version: int, message: str | None) -> None:
    """Say why an in_progress version is not completed yet (shown by ``status``)."""
    conn.execute(
        "UPDATE ferry.schema_versions SET error = %s, updated_at = clock_timestamp()"
        " WHERE version = %s",
        (message, version),
    )


@dataclass(frozen=True, kw_only=True)
class RunState:
    """What the schema runner needs to know of a backfill run to complete a version."""

    id: int
    status: str
    quarantined: int  # rows left unchanged by a skip rule
    verified: bool | None  # its latest ``ferry verify``: None when never verified

    @property
    def final(self) -> bool:
        return self.status in FINAL_RUN_STATES


FINAL_RUN_STATES = (
    "completed",
    "completed_with_errors",
    "failed",
    "cancelled",
    "rolled_back",
    "rollback_failed",
)
_FINISHED = ("completed", "completed_with_errors")


def run_state(conn: Conn, run_id: int) -> RunState | None:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT r.id, r.status,"
            " (SELECT coalesce(sum(c.rows_quarantined), 0) FROM ferry.chunks c"
            "  WHERE c.run_id = r.id) AS quarantined,"
            " (SELECT v.ok FROM ferry.verifications v WHERE v.run_id = r.id"
            "  ORDER BY v.at DESC, v.id DESC LIMIT 1) AS verified"
            " FROM ferry.runs r WHERE r.id = %s",
            (run_id,),
        ).fetchone()
    if row is None:
        return None
    return RunState(
        id=int(row["id"]),
        status=str(row["status"]),
        quarantined=int(row["quarantined"]),
        verified=row["verified"],
    )


def latest_run(conn: Conn, backfill: str, since: datetime) -> int | None:
    """The newest run of ``backfill`` started after ``since``, whatever its state."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT id FROM ferry.runs WHERE backfill = %s AND created_at >= %s"
            " ORDER BY id DESC LIMIT 1",
            (backfill, since),
        ).fetchone()
    return None if row is None else int(row["id"])


def verified_run(
    conn: Conn, backfill: str, since: datetime, *, accept_quarantine: bool = False
) -> int | None:
    """The newest run of ``backfill`` started after ``since``, completed, last verified ok.

    With ``accept_quarantine`` a run that ended ``completed_with_errors`` counts too.
    """
    statuses = list(_FINISHED if accept_quarantine else _FINISHED[:1])
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT r.id FROM ferry.runs r"
            " CROSS JOIN LATERAL (SELECT ok FROM ferry.verifications v WHERE v.run_id = r.id"
            "                     ORDER BY v.at DESC, v.id DESC LIMIT 1) last"
            " WHERE r.backfill = %s AND r.created_at >= %s AND r.status = ANY(%s) AND last.ok"
            " ORDER BY r.id DESC LIMIT 1",
            (backfill, since, statuses),
        ).fetchone()
    return None if row is None else int(row["id"])


def runs_with_writes(conn: Conn, backfill: str, since: datetime) -> list[int]:
    """Runs of ``backfill`` since ``since`` that hold applied chunks or may still write."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT r.id FROM ferry.runs r WHERE r.backfill = %s AND r.created_at >= %s"
            " AND (r.status IN ('running', 'paused')"
            "      OR EXISTS (SELECT FROM ferry.chunks c WHERE c.run_id = r.id"
            "                 AND c.status IN ('done', 'running'))) ORDER BY r.id DESC",
            (backfill, since),
        ).fetchall()
    return [int(r["id"]) for r in rows]
