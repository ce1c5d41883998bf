"""Runtime control of a run: pause, cancel, throttle. Effective within seconds everywhere.

Each is one ledger update that workers read through their gate (cached for a
second). Chunks in flight always finish or roll back whole: pause returns at
once and lets them finish; cancel updates the chunks left, which waits for
exactly the transactions still holding a chunk, so nothing is half-done.
"""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from coordinator.commands import Context
from migrations.errors import CheckFailed
from workers.dispatch import send_window
from workers.ledger import q
from workers.limits import Limits


def pause(ctx: Context, run_id: int) -> dict[str, Any]:
    with ctx.db.transaction() as conn:
        run = ctx.ledger.get_run(run_id, conn)
        if not conn.execute(q("pause_run"), {"run_id": run_id}).fetchone():
            raise CheckFailed(f"run {run_id} is {run.status}; only a running run pauses")
        ctx.ledger.audit(conn, actor=ctx.settings.actor, action="pause", run_id=run_id)
    return {"run_id": run_id, "status": "paused"}


def cancel(ctx: Context, run_id: int) -> dict[str, Any]:
    """Stop a run for good: chunks in flight finish, the rest are cancelled (roll back the
    finished ones with ``ferry rollback``)."""
    with ctx.db.transaction() as conn:
        run = ctx.ledger.get_run(run_id, conn)
        if not conn.execute(q("cancel_run"), {"run_id": run_id}).fetchone():
            raise CheckFailed(f"run {run_id} is {run.status}; it cannot be cancelled")
        cancelled = conn.execute(q("cancel_chunks"), {"run_id": run_id}).rowcount
        ctx.ledger.audit(
            conn,
            actor=ctx.settings.actor,
            action="cancel",
            run_id=run_id,
            params={"chunks_cancelled": cancelled},
        )
    return {"run_id": run_id, "status": "cancelled", "chunks_cancelled": cancelled}


def throttle(ctx: Context, run_id: int, **changes: Any) -> dict[str, Any]:
    """Change a run's limits (concurrency, rows/s, chunk time, db load) while it runs."""
    with ctx.db.transaction() as conn:
        run = ctx.ledger.get_run(run_id, conn)
        limits = Limits.from_json(run.params.get("limits")).evolve(**changes)
        conn.execute(q("set_limits"), {"run_id": run_id, "limits": Jsonb(limits.to_json())})
        ctx.ledger.audit(
            conn,
            actor=ctx.settings.actor,
            action="throttle",
            run_id=run_id,
            params={k: v for k, v in changes.items() if v is not None},
        )
    ctx.clear_line(run_id)  # the chunks waiting take new turns at the new pace
    sent = []
    if run.status == "running":  # a wider window is filled now, not as chunks finish
        queue = run.params.get("queue")
        sent = send_window(ctx.ledger, ctx.dispatcher, run_id, limits, queue=queue)
    return {"run_id": run_id, "limits": limits.to_json(), "dispatched": len(sent)}
