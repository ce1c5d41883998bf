"""A run's health in the plan's MigrationHealth shape, rebuilt from the ledger.

Counts, rows and durations come from the ledger (the truth, which survives a
Redis flush); Redis adds what only it has: recent error events and worker
heartbeats (cpu, memory). Thresholds, documented in docs/operations.md:
failed when the run failed or any chunk failed; degraded when a chunk's
lease expired (stalled), more than 1 % of processed rows were quarantined,
or chunks were retried in the last minute (with a lock_timeouts alert from five lock
timeouts on); healthy otherwise.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from coordinator.commands import Context
from workers.ledger import q

DEGRADED_QUARANTINE_RATE = 0.01
RETRY_WINDOW_S = 60.0
LOCK_STORM = 5  # lock timeouts within the retry window
LOCK_NOT_AVAILABLE = "55P03"


def health(ctx: Context, run_id: int) -> dict[str, Any]:
    with ctx.db.transaction() as conn:
        run = ctx.ledger.get_run(run_id, conn)
        by_status = {r["status"]: r for r in conn.execute(q("status_counts"), {"run_id": run_id})}
        durations = [
            r["duration_ms"] for r in conn.execute(q("chunk_durations"), {"run_id": run_id})
        ]
        stalled = conn.execute(q("stalled_chunks"), {"run_id": run_id}).fetchone()
        ledger_errors = conn.execute(
            q("recent_chunk_errors"), {"run_id": run_id, "limit": 10}
        ).fetchall()
        disk = conn.execute(q("backup_bytes"), {"run_id": run_id}).fetchone()
        raised = conn.execute(q("recent_alerts"), {"run_id": run_id}).fetchall()
        undone = ctx.ledger.rollback_summary(conn, run_id)
        now = conn.execute("SELECT clock_timestamp() AS t").fetchone()
    assert now is not None
    chunks = {
        s: int(by_status[s]["chunks"]) if s in by_status else 0
        for s in ("pending", "running", "done", "failed", "rolled_back")
    }
    chunks["total"] = int(run.total_chunks or 0)
    # pending chunks whose task is on the broker; the rest wait in the ledger (Limits.window)
    chunks["queued"] = int(by_status["pending"]["sent"]) if "pending" in by_status else 0
    processed = sum(int(r["rows_read"]) for r in by_status.values())
    written = sum(int(r["rows_written"]) for r in by_status.values())
    quarantined = sum(int(r["rows_quarantined"]) for r in by_status.values())
    warned = sum(int(r["rows_warned"]) for r in by_status.values())
    end = run.finished_at or now["t"]
    duration = (end - run.started_at).total_seconds() if run.started_at else 0.0
    rps = processed / duration if duration > 0 else 0.0
    remaining = chunks["pending"] + chunks["running"]
    per_chunk = processed / chunks["done"] if chunks["done"] else float(run.spec.chunk_size)
    eta = remaining * per_chunk / rps if rps > 0 and remaining else (0.0 if not remaining else None)

    events = ctx.progress.recent_errors(run_id, limit=20)
    recent = [
        {
            "chunk": int(e["chunk"]),
            "kind": e["kind"],
            "message": e["message"],
            "timestamp": _iso(float(e["at"])),
        }
        for e in events
    ] or [
        {
            "chunk": r["chunk_no"],
            "kind": r["status"],
            "message": r["error"],
            "timestamp": r["at"].isoformat() if r["at"] else None,
        }
        for r in ledger_errors
    ]
    # A failed chunk changed nothing, but the run's done chunks did: the table holds a partly
    # applied run, which a rollback (or a retry once the cause is fixed) must settle.
    partial = int(by_status["done"]["rows_written"]) if "done" in by_status else 0
    failures = [
        {"chunk": r["chunk_no"], **r["error_info"], "rollbackRequired": partial > 0}
        for r in ledger_errors
        if r["status"] == "failed" and r["error_info"]
    ]
    workers = ctx.progress.workers()
    alerts = []
    stalled_n = int(stalled["stalled"]) if stalled else 0
    if chunks["failed"]:
        alerts.append(_alert("chunk_failed", f"{chunks['failed']} chunk(s) failed"))
    if stalled_n:
        alerts.append(_alert("stalled", f"{stalled_n} chunk(s) past their lease"))
    rate = quarantined / processed if processed else 0.0
    if rate > DEGRADED_QUARANTINE_RATE:
        alerts.append(_alert("error_rate", f"{rate:.1%} of processed rows quarantined"))
    cutoff = time.time() - RETRY_WINDOW_S
    retries = [e for e in events if e["kind"] == "retry" and float(e["at"]) > cutoff]
    if retries:
        alerts.append(_alert("retries", f"{len(retries)} chunk retries in the last minute"))
    storm = lock_storm(retries)
    if storm:
        alerts.append(storm)
    if run.walking and not remaining:
        # every chunk recorded so far has settled and the rest are not recorded: the launch
        # that records them is gone (or, for a moment, behind the workers)
        alerts.append(
            _alert(
                "planning_stopped",
                f"chunks remain to be recorded and none is pending: `ferry resume {run.id}`",
            )
        )

    alerts.extend(
        {"type": a["type"], "message": a["message"], "timestamp": a["at"].isoformat()}
        for a in raised
    )
    rollback = _rollback(run.status, undone)
    if rollback and rollback["kept"]:
        alerts.append(
            _alert(
                "rollback_kept",
                f"{rollback['kept']} row(s) the application changed since their chunk were not "
                f"rolled back (`ferry rollback {run.id} --force` restores them)",
            )
        )
    if run.status in ("failed", "rollback_failed") or chunks["failed"]:
        state = "failed"
    elif alerts:
        state = "degraded"
    else:
        state = "healthy"
    durations_sorted = sorted(float(d) for d in durations)
    return {
        "run_id": run.id,
        "backfill": run.backfill,
        "table": f"{run.spec.schema}.{run.spec.table}",
        "status": state,
        "run_status": run.status,
        # the launch is still recording the run's chunks (chunks.total grows until it is done)
        "planning": run.walking,
        "created_by": run.created_by,
        "chunks": chunks,
        "rows": {
            "processed": processed,
            "written": written,
            "quarantined": quarantined,
            "warned": warned,
        },
        "metrics": {
            "duration": round(duration, 3),
            "errorRate": round(
                rate + (chunks["failed"] / chunks["total"] if chunks["total"] else 0), 6
            ),
            "dataProcessed": processed,
            "rowsPerSecond": round(rps, 1),
            "etaSeconds": None if eta is None else round(eta, 1),
            "chunkP50Ms": _pct(durations_sorted, 0.50),
            "chunkP99Ms": _pct(durations_sorted, 0.99),
            "resourceUsage": {
                "cpu": round(sum(float(w.get("cpu", 0)) for w in workers), 3),
                "memory": round(sum(float(w.get("rss_mb", 0)) for w in workers), 1),
                "disk": int(disk["bytes"]) if disk else 0,
            },
        },
        "alerts": alerts,
        "recent_errors": recent,
        "failures": failures,
        "workers": len(workers),
        "limits": run.params.get("limits"),
        **({"rollback": rollback} if rollback else {}),
    }


def _rollback(status: str, summary: dict[str, Any]) -> dict[str, Any] | None:
    """A rolling back or rolled back run's restore counts (``Ledger.rollback_summary``)."""
    return summary if status in ("rolling_back", "rolled_back", "rollback_failed") else None


def lock_storm(retries: list[dict[str, Any]]) -> dict[str, str] | None:
    """An alert when chunks keep timing out on the application's row locks.

    One lock timeout is the gate doing its job (the application was never blocked longer than
    lock_timeout); a run of them means the run and the application want the same rows, and
    each retry costs both a little: fewer chunks in flight or smaller chunks help.
    """
    timeouts = sum(1 for e in retries if str(e.get("message", "")).startswith(LOCK_NOT_AVAILABLE))
    if timeouts < LOCK_STORM:
        return None
    return _alert(
        "lock_timeouts",
        f"{timeouts} lock timeouts in the last minute: the application holds the rows' locks; "
        "lower --max-concurrency or --chunk-time (ferry throttle)",
    )


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(p * len(values)))], 1)


def _alert(kind: str, message: str) -> dict[str, str]:
    return {"type": kind, "message": message, "timestamp": datetime.now(UTC).isoformat()}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()
