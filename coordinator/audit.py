"""Reading the audit log back: listing entries and proving the hash chain is intact.

The chain itself is written by the database (``ledger_0005_security.sql``): each row's
``row_hash`` is sha256 over the previous row's hash and its own canonical content, so
altering, deleting or slipping in a row anywhere breaks the chain from that row on.
Verification recomputes every hash on one snapshot and compares the end of the chain with
the chain head, which also catches rows deleted from the end. The owner of the ledger could
recompute the chain after a rewrite; the heads sealed outside the database
(``coordinator.audit_seal``, with ``FERRY_AUDIT_KEY``) catch that: each must still stand.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from coordinator.audit_seal import sealed
from migrations.errors import CheckFailed

if TYPE_CHECKING:
    from coordinator.commands import Context

GENESIS = "0" * 64

_ROWS = """
SELECT id, prev_hash, row_hash,
       ferry.audit_row_hash(prev_hash, id, at, actor, host, action, run_id, params) AS expected
  FROM ferry.audit_log ORDER BY id
"""
_HEAD = "SELECT last_id, last_hash FROM ferry.audit_chain WHERE id = 1"
_LIST = """
SELECT id, at, actor, host, action, run_id, params, row_hash
  FROM ferry.audit_log
 WHERE %(run_id)s::bigint IS NULL OR run_id = %(run_id)s::bigint
 ORDER BY id DESC LIMIT %(limit)s
"""


class ChainBroken(CheckFailed):
    """The audit log's hash chain does not hold: some row was changed, removed or forged."""

    def __init__(self, row_id: int | None, reason: str, checked: int) -> None:
        where = f"at row {row_id}" if row_id is not None else "at its head"
        super().__init__(f"audit log broken {where}: {reason}")
        self.row_id = row_id
        self.reason = reason
        self.checked = checked


def verify(ctx: Context) -> dict[str, Any]:
    """Walk the whole chain on one snapshot; raise ChainBroken at the first row that fails.

    Rows after the chain head's last row were written with the chain trigger off
    (the head moves with every chained insert), so they are forgeries too.
    """
    ctx.ledger.require()
    heads = sealed(ctx)
    forged = next((h for h in heads if h["forged"]), None)
    if forged is not None:
        raise ChainBroken(
            None, f"line {forged['line']} of the sealed heads is not sealed with FERRY_AUDIT_KEY", 0
        )
    # every sealed row must stand; a row sealed twice with two hashes is a rewrite too
    wanted: dict[int, str] = {}
    for seal in heads:
        if wanted.setdefault(int(seal["id"]), str(seal["hash"])) != seal["hash"]:
            raise ChainBroken(int(seal["id"]), "it was sealed twice with different hashes", 0)
    checked = 0
    expected_prev = GENESIS
    before_prev: str | None = None  # the hash two rows back: tells a forged row from a gap
    with ctx.db.connect() as conn:
        conn.rollback()
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            head = conn.execute(_HEAD).fetchone()
            if head is None:
                raise ChainBroken(None, "the chain head is missing", checked)
            with conn.cursor(name="ferry_audit_verify") as cur:
                cur.itersize = 5000
                cur.execute(_ROWS)
                previous_id: int | None = None
                for row in cur:
                    if row["prev_hash"] == before_prev and row["prev_hash"] != expected_prev:
                        raise ChainBroken(
                            previous_id,
                            "it was inserted out of chain (the row after it skips it)",
                            checked - 1,
                        )
                    _check_row(row, expected_prev, head, checked)
                    if wanted.pop(row["id"], row["row_hash"]) != row["row_hash"]:
                        raise ChainBroken(
                            row["id"],
                            "it differs from the head sealed outside the database: the log was "
                            "rewritten at or before it",
                            checked,
                        )
                    before_prev, expected_prev = expected_prev, row["row_hash"]
                    previous_id = row["id"]
                    checked += 1
        finally:
            conn.rollback()
    if head["last_hash"] != expected_prev:
        raise ChainBroken(
            head["last_id"], "the last row(s) of the log were deleted or rewritten", checked
        )
    if wanted:
        gone = min(wanted)
        raise ChainBroken(gone, "a row sealed outside the database is gone from the log", checked)
    return {
        "ok": True,
        "rows": checked,
        "last_id": head["last_id"],
        "last_hash": expected_prev,
        "sealed_heads": len(heads),
        "keyed": bool(ctx.settings.audit_key),
    }


def _check_row(row: dict[str, Any], expected_prev: str, head: dict[str, Any], checked: int) -> None:
    if head["last_id"] is None or row["id"] > head["last_id"]:
        raise ChainBroken(row["id"], "it was inserted out of chain (after the chain head)", checked)
    if row["prev_hash"] != expected_prev:
        raise ChainBroken(
            row["id"],
            "it does not follow the row before it "
            "(a row before it was deleted, or it was inserted out of chain)",
            checked,
        )
    if row["row_hash"] != row["expected"]:
        raise ChainBroken(row["id"], "its content was altered", checked)


def entries(ctx: Context, *, run_id: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """The newest ``limit`` entries (of one run, if given), oldest first."""
    ctx.ledger.require()
    with ctx.db.transaction() as conn:
        rows = conn.execute(_LIST, {"run_id": run_id, "limit": limit}).fetchall()
    return [dict(r) for r in reversed(rows)]
