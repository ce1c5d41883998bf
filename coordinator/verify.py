"""``ferry verify``: prove a finished run right, and find what changed after it.

Four checks, all on one REPEATABLE READ snapshot:
- counts: the rows in the run's ranges now equal the rows its chunks read
  (written + quarantined + unchanged), every written row has exactly one
  pre-image, every quarantined row one quarantine record;
- checksum: an order-independent checksum of the written columns over a
  random sample equals the checksum after recomputing the transform on the
  same rows (in a savepoint that is rolled back);
- rules: no row of the run, quarantined ones aside, breaks an error rule now;
- drift: rows the application changed after their chunk was applied, found
  from an updated-at column where the table has one (no rescan), else from
  xmin (a scan of the run's ranges). Drift fails the verification: the table no
  longer holds what the run promised for those rows until
  ``ferry launch REF --catch-up RUN`` re-applies them (the report says the command).
"""

from __future__ import annotations

import shlex
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from coordinator.commands import Context
from migrations.errors import CheckFailed, FerryError
from workers.catalog import base_type, describe_table
from workers.checks import Checks
from workers.failures import describe
from workers.ledger import q
from workers.model import Run
from workers.statements import ChunkArgs, KeyRange, Statements

Conn = psycopg.Connection[Any]
TIMESTAMPS = {"timestamp with time zone", "timestamp without time zone"}
MAX_CATCH_UP_KEYS = 100_000


def _chunks(conn: Conn, run: Run) -> list[dict[str, Any]]:
    return list(conn.execute(q("run_chunks"), {"run_id": run.id}).fetchall())


def drift_column(conn: Conn, run: Run) -> str | None:
    """The table's updated-at column: named in the spec (``extra.updated_at``) or ``updated_at``."""
    columns = describe_table(conn, run.spec.qualified).columns
    named = run.spec.extra.get("updated_at") or "updated_at"
    if named in columns and base_type(columns[named]) in TIMESTAMPS:
        return str(named)
    return None


def run_end(chunks: list[dict[str, Any]]) -> str:
    """The greatest bound of the run's chunks: the one no chunk starts at. Not the last chunk
    by number: a cut chunk's second half is numbered after every chunk above it."""
    starts = {c["lo"] for c in chunks}
    ends = [c["hi"] for c in chunks if c["hi"] not in starts]
    if len(ends) != 1:
        raise CheckFailed("the run's chunks do not chain from its first key to its last")
    return str(ends[0])


def drifted_keys(conn: Conn, run: Run, chunks: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """(method, keys of rows changed after their chunk ran)."""
    checks = Checks(Statements(run.spec, run.id))
    done = [c for c in chunks if c["status"] == "done"]
    if not done:
        return "none", []
    column = drift_column(conn, run)
    if column is not None:
        whole = KeyRange(None, run_end(chunks))
        rows = conn.execute(checks.drift_by_column(column, whole)).fetchall()
        return f"column {column}", [r["k"] for r in rows]
    keys: list[str] = []
    for c in done:
        if c["applied_xid"] is None:
            continue
        query = checks.drift_by_xmin(KeyRange(c["lo"], c["hi"]), c["applied_xid"])
        keys.extend(r["k"] for r in conn.execute(query))
    return "xmin", keys


def verify(ctx: Context, run_id: int, *, sample: int = 1000) -> dict[str, Any]:
    run = ctx.ledger.get_run(run_id)
    if run.status not in ("completed", "completed_with_errors"):
        raise CheckFailed(f"run {run_id} is {run.status}; verify a run that completed")
    st = Statements(run.spec, run.id)
    checks = Checks(st)
    with ctx.db.connect() as conn:
        conn.rollback()
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        conn.execute("SET LOCAL jit = off")
        try:
            report = _verify(conn, ctx, run, st, checks, sample)
        finally:
            conn.rollback()
    drift = report["drift"]
    drift["ok"] = drift["rows"] == 0
    if drift["rows"]:
        drift["catch_up"] = catch_up_command(run)
    report["ok"] = all(report[k]["ok"] for k in ("counts", "checksum", "rules", "drift"))
    if run.spec.key in run.spec.extra.get("phi", ()):  # a PHI key: listed keys are values
        for part, field in (("drift", "keys"), ("checksum", "keys_that_differ")):
            if field in report[part]:
                report[part][field] = ctx.ledger.mask(report[part][field])
    with ctx.db.transaction() as conn:
        conn.execute(
            q("record_verification"),
            {
                "run_id": run_id,
                "actor": ctx.settings.actor,
                "ok": report["ok"],
                "report": Jsonb(report),
            },
        )
        ctx.ledger.audit(
            conn,
            actor=ctx.settings.actor,
            action="verify",
            run_id=run_id,
            params={"ok": report["ok"], "drift": report["drift"]["rows"]},
        )
    return report


def catch_up_command(run: Run) -> str:
    """The command that re-applies the run to the rows that drifted, ready to paste."""
    return f"ferry launch {shlex.quote(run.spec.reference)} --catch-up {run.id}"


def _verify(
    conn: Conn, ctx: Context, run: Run, st: Statements, checks: Checks, sample: int
) -> dict[str, Any]:
    chunks = _chunks(conn, run)
    if not chunks:
        empty = {"ok": True}
        return {
            "run_id": run.id,
            "counts": empty,
            "checksum": empty,
            "rules": empty,
            "drift": {"method": "none", "rows": 0, "keys": []},
        }
    whole = KeyRange(None, run_end(chunks))
    read = sum(int(c["rows_read"] or 0) for c in chunks)
    written = sum(int(c["rows_written"] or 0) for c in chunks)
    quarantined = sum(int(c["rows_quarantined"] or 0) for c in chunks)
    now = int(conn.execute(checks.count_rows(whole)).fetchone()["n"])  # type: ignore[index]
    backups = int(conn.execute(checks.backup_rows()).fetchone()["n"])  # type: ignore[index]
    q_rows = int(conn.execute(q("quarantine_count"), {"run_id": run.id}).fetchone()["n"])  # type: ignore[index]
    counts = {
        "rows_in_range": now,
        "rows_read": read,
        "written": written,
        "quarantined": quarantined,
        "unchanged": read - written - quarantined,
        "pre_images": backups,
        "quarantine_records": q_rows,
        "ok": now == read and backups == written and q_rows == quarantined,
    }
    method, drifted = drifted_keys(conn, run, chunks)
    checksum = _checksum(conn, run, st, checks, whole, set(drifted), sample, now)
    violations = []
    for index, rule in enumerate(run.spec.rules):
        if rule.severity != "error" or rule.is_python:
            continue
        row = conn.execute(checks.rule_violations(index, rule, whole)).fetchone()
        if row and row["n"]:
            violations.append(
                {
                    "rule": index,
                    "field": rule.field,
                    "type": rule.type,
                    "message": rule.error_message,
                    "rows": int(row["n"]),
                }
            )
    return {
        "run_id": run.id,
        "counts": counts,
        "checksum": checksum,
        "rules": {
            "ok": not violations,
            "violations": violations,
            "not_rechecked": [i for i, r in enumerate(run.spec.rules) if r.is_python],
        },
        "drift": {"method": method, "rows": len(drifted), "keys": drifted[:20]},
    }


def _checksum(
    conn: Conn,
    run: Run,
    st: Statements,
    checks: Checks,
    whole: KeyRange,
    drifted: set[str],
    sample: int,
    rows: int,
) -> dict[str, Any]:
    from workers.staging import RunContext, stage_input  # pandas: verify imports it, not ferry

    percent = 100.0 * min(1.0, 2.0 * sample / max(rows, 1))
    keys = [
        r["k"]
        for r in conn.execute(checks.sample_keys(whole, percent, sample))
        if r["k"] not in drifted
    ]
    if not keys:
        return {"ok": True, "sample": 0}
    before = conn.execute(checks.checksum(keys)).fetchone()
    assert before is not None
    try:
        with conn.transaction(force_rollback=True):
            rng = KeyRange(None, whole.hi, tuple(keys))
            run_ctx = RunContext.build(run.id, run.spec)
            read = None
            if run_ctx.transform is not None:
                read = stage_input(conn, run_ctx, rng)
            args = ChunkArgs(run_id=run.id, chunk_no=-1, range=rng, rows_read=read)
            counts = conn.execute(st.apply(args)).fetchone()
            after = conn.execute(checks.checksum(keys)).fetchone()
            differ = [r["k"] for r in conn.execute(checks.recomputed_keys())]
    except (psycopg.Error, FerryError) as exc:
        text = describe(exc) if isinstance(exc, psycopg.Error) else str(exc)
        return {"ok": False, "sample": len(keys), "error": f"cannot recompute: {text}"}
    assert counts is not None and after is not None
    return {
        "ok": before["h"] == after["h"] and int(counts["rows_written"]) == 0,
        "sample": len(keys),
        "table": int(before["h"]),
        "recomputed": int(after["h"]),
        "rows_that_differ": int(counts["rows_written"]),
        "keys_that_differ": differ[:20],
    }


def catch_up_filter(conn: Conn, ctx: Context, run_id: int, table: str) -> tuple[str, int]:
    """A ``--where`` selecting exactly the rows of ``run_id`` that drifted, and their count."""
    run = ctx.ledger.get_run(run_id, conn)
    if run.status not in ("completed", "completed_with_errors"):
        raise CheckFailed(f"run {run_id} is {run.status}; catch up after a completed run")
    if table not in (run.spec.table, f"{run.spec.schema}.{run.spec.table}"):
        raise CheckFailed(f"run {run_id} migrated {run.spec.schema}.{run.spec.table}, not {table}")
    _, keys = drifted_keys(conn, run, _chunks(conn, run))
    if len(keys) > MAX_CATCH_UP_KEYS:
        raise CheckFailed(f"{len(keys):,} rows drifted: launch a full run instead of a catch-up")
    st = Statements(run.spec, run.id)
    rows = st.key_in(keys).as_string(conn) if keys else "FALSE"
    where = f"({run.spec.where}) AND {rows}" if run.spec.where else rows
    return where, len(keys)
