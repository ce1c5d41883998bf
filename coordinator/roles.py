"""PostgreSQL group roles for least privilege: who may do what to the ledger.

``ferry init --roles`` creates four NOLOGIN group roles and (re)grants them on the
ledger as it stands; run it again after an upgrade so new ledger tables are covered.
Grant a group to a login role (``GRANT ferry_worker TO app_worker``) to give it the
privileges. The grants, and why:

- ``ferry_coordinator``: runs ``ferry`` commands. Reads and writes the ledger, creates
  the per-run pre-image tables (CREATE on schema ferry), may only INSERT into the audit
  log. It may write but not read raw quarantined values (the pre-flight quarantines).
- ``ferry_worker``: Celery workers. The DML a chunk needs (claim and finish chunks,
  end runs, quarantine rows, raise alerts, write pre-images), no DELETE but on its own
  quarantine rows when re-running them, SELECT and INSERT only on the audit log (it checks
  the spec digest each launch records), and INSERT (never
  SELECT) on raw quarantined values. Write access to the migrated table's target columns
  is per table: ``GRANT SELECT, UPDATE (col, ...) ON app.table TO ferry_worker``.
- Neither ``ferry_coordinator`` nor ``ferry_worker`` may UPDATE a run's ``spec`` (nor a worker
  its ``params``): what runs is what was planned.
- ``ferry_monitor``: dashboards and ``ferry status``/``ferry audit``. SELECT on the
  ledger, except raw quarantined values and pre-image tables (both hold PHI), and no
  EXECUTE on ``ferry.mask()``: to a role that cannot read the data, masking candidates
  would be an oracle for brute-forcing masked values (it sees bare ``***`` for keys).
- Nobody: ``ferry.mask_secret`` (the masking key's HMAC pads); ``ferry.mask()`` runs as the
  ledger's owner for the coordinator and the workers, who read the data anyway.
- ``ferry_unmask``: SELECT on ``ferry.quarantine_values`` (``ferry quarantine --export
  --unmask``), plus INSERT on the audit log so every unmasking is recorded.

Pre-image tables are created at launch by the coordinator; default privileges give the
workers SELECT/INSERT on them, for tables created by a role acting as
``ferry_coordinator`` (set ``ALTER ROLE login SET role = ferry_coordinator``).
Nobody but the ledger's owner may UPDATE, DELETE or TRUNCATE the audit log, and the
ledger's triggers refuse even the owner.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

Conn = psycopg.Connection[Any]

COORDINATOR = "ferry_coordinator"
WORKER = "ferry_worker"
MONITOR = "ferry_monitor"
UNMASK = "ferry_unmask"
ROLES = (COORDINATOR, WORKER, MONITOR, UNMASK)

# Ledger tables that hold PHI or secrets: no blanket grant covers them.
_SENSITIVE = ("quarantine_values", "meta")
_OWNER_ONLY = ("mask_secret",)
_AUDIT_ONLY_INSERT = ("audit_log",)
_CHAIN = "audit_chain"

# Columns a role may not UPDATE although it updates the table: what runs is what was planned,
# so no runtime role rewrites a run's spec (nor a worker its parameters).
_FROZEN: dict[str, dict[str, tuple[str, ...]]] = {
    "runs": {COORDINATOR: ("spec",), WORKER: ("spec", "params")},
}

# What a worker does to each ledger table (tables a ledger version lacks are skipped).
_WORKER_TABLES: dict[str, tuple[str, ...]] = {
    "ledger_version": ("SELECT",),
    "identity": ("SELECT",),
    "meta": ("SELECT",),
    "runs": ("SELECT", "UPDATE"),
    "chunks": ("SELECT", "INSERT", "UPDATE"),
    "backups": ("SELECT",),
    "quarantine": ("SELECT", "INSERT", "DELETE"),
    "quarantine_values": ("INSERT",),
    "alerts": ("SELECT", "INSERT"),
    "rollback_conflicts": ("SELECT", "INSERT"),
    "verifications": ("SELECT",),
    "audit_log": ("SELECT", "INSERT"),  # SELECT: the spec digest its launch recorded
}


def _ledger_tables(conn: Conn) -> list[str]:
    """Ferry's own tables, pre-image tables (backup_<run>) aside."""
    rows = conn.execute(
        "SELECT c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'ferry' AND c.relkind IN ('r', 'p') "
        "AND c.relname !~ '^backup_[0-9]+$' ORDER BY 1"
    ).fetchall()
    return [r[0] if isinstance(r, tuple) else r["name"] for r in rows]


def _backup_tables(conn: Conn) -> list[str]:
    rows = conn.execute(
        "SELECT c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'ferry' AND c.relkind = 'r' AND c.relname ~ '^backup_[0-9]+$'"
    ).fetchall()
    return [r[0] if isinstance(r, tuple) else r["name"] for r in rows]


def _create(conn: Conn, role: str) -> bool:
    """Create a NOLOGIN group role unless it exists; True when created now."""
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    if exists:
        return False
    try:
        with conn.transaction():
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
    except psycopg.errors.DuplicateObject:
        return False  # another `ferry init --roles` on this cluster made it first
    return True


def _grant(conn: Conn, privileges: tuple[str, ...], table: str, role: str) -> None:
    conn.execute(
        sql.SQL("GRANT {p} ON {t} TO {r}").format(
            p=sql.SQL(", ").join(sql.SQL(p) for p in privileges),
            t=sql.Identifier("ferry", table),
            r=sql.Identifier(role),
        )
    )


def _update_all_but(conn: Conn, table: str, role: str, frozen: tuple[str, ...]) -> None:
    """UPDATE on every column of ``table`` but ``frozen``, instead of on the whole table."""
    rows = conn.execute(
        "SELECT attname AS name FROM pg_attribute WHERE attrelid = to_regclass(%s) "
        "AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        (sql.Identifier("ferry", table).as_string(conn),),
    ).fetchall()
    names = [r[0] if isinstance(r, tuple) else r["name"] for r in rows]
    ident = sql.Identifier(role)
    conn.execute(
        sql.SQL("REVOKE UPDATE ON {t} FROM {r}").format(t=sql.Identifier("ferry", table), r=ident)
    )
    conn.execute(
        sql.SQL("GRANT UPDATE ({cols}) ON {t} TO {r}").format(
            cols=sql.SQL(", ").join(sql.Identifier(n) for n in names if n not in frozen),
            t=sql.Identifier("ferry", table),
            r=ident,
        )
    )


def create_roles(conn: Conn) -> dict[str, Any]:
    """Create the group roles and grant them on the ledger; idempotent, one transaction."""
    created = [role for role in ROLES if _create(conn, role)]
    ident = {role: sql.Identifier(role) for role in ROLES}
    tables = _ledger_tables(conn)
    conn.execute(
        sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA ferry FROM {}").format(
            sql.SQL(", ").join(ident.values())
        )
    )
    conn.execute(
        sql.SQL("GRANT USAGE ON SCHEMA ferry TO {}").format(sql.SQL(", ").join(ident.values()))
    )
    conn.execute(sql.SQL("GRANT CREATE ON SCHEMA ferry TO {}").format(ident[COORDINATOR]))
    conn.execute(
        sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA ferry TO {c}, {w}, {u}").format(
            c=ident[COORDINATOR], w=ident[WORKER], u=ident[UNMASK]
        )
    )
    for table in tables:
        if table in _OWNER_ONLY:
            continue
        if table in _SENSITIVE:
            # The pre-flight quarantines sample rows too; reading them back is for unmask.
            privileges = ("SELECT", "INSERT") if table == "meta" else ("INSERT",)
            _grant(conn, privileges, table, COORDINATOR)
        elif table in _AUDIT_ONLY_INSERT:
            _grant(conn, ("SELECT", "INSERT"), table, COORDINATOR)
            _grant(conn, ("INSERT",), table, UNMASK)
        elif table == _CHAIN:
            _grant(conn, ("SELECT",), table, COORDINATOR)
        else:
            _grant(conn, ("SELECT", "INSERT", "UPDATE", "DELETE"), table, COORDINATOR)
        if table not in _SENSITIVE:
            _grant(conn, ("SELECT",), table, MONITOR)
        if table in _WORKER_TABLES:
            _grant(conn, _WORKER_TABLES[table], table, WORKER)
    for table, roles in _FROZEN.items():
        if table in tables:
            for role, frozen in roles.items():
                _update_all_but(conn, table, role, frozen)
    if "mask_secret" in tables:
        conn.execute(
            sql.SQL("GRANT EXECUTE ON FUNCTION ferry.mask(text) TO {c}, {w}").format(
                c=ident[COORDINATOR], w=ident[WORKER]
            )
        )
    if "quarantine_values" in tables:
        _grant(conn, ("SELECT",), "quarantine_values", UNMASK)
    for table in _backup_tables(conn):
        _grant(conn, ("SELECT", "INSERT"), table, COORDINATOR)
        _grant(conn, ("SELECT", "INSERT"), table, WORKER)
    try:
        with conn.transaction():
            conn.execute(
                sql.SQL(
                    "ALTER DEFAULT PRIVILEGES FOR ROLE {c} IN SCHEMA ferry "
                    "GRANT SELECT, INSERT ON TABLES TO {w}"
                ).format(c=ident[COORDINATOR], w=ident[WORKER])
            )
        defaults = True
    except psycopg.errors.InsufficientPrivilege:
        defaults = False  # only a member of ferry_coordinator (or a superuser) may set them
    return {
        "created": created,
        "roles": list(ROLES),
        "tables": len(tables),
        "default_privileges": defaults,
    }
