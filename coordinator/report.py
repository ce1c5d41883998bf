"""``ferry report``: the plan's migration documentation for one run, as HTML or Markdown.

Written for a compliance officer reading it offline months later: what was
changed (spec and rules), who launched it and when, how it went (timeline,
throughput, error rate, chunk durations), what was refused (quarantine counts
by rule), how it was proven (verifications) and undone (rollbacks).

No row value reaches the report: only counts, timings, Ferry's own messages
and key-range bounds. Quarantine examples and the row keys a verification
lists are dropped, ``where`` filters are masked (a catch-up run's filter lists
keys), audit parameters keep numbers and a few named fields only. This module
collects; coordinator.report_render writes HTML and Markdown.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from coordinator import charts, health, quarantine
from coordinator.commands import Context
from coordinator.report_render import as_text
from migrations.masking import mask_text
from workers.ledger import q

MAX_BUCKETS = 30
MIN_BUCKET_S = 0.1
# Fixed ledger reads the report alone needs; candidates for workers/sql/queries.sql.
QUERIES = {
    "chunks": """
        SELECT chunk_no, lo, hi, status, attempts, rows_read, rows_written, rows_quarantined,
               started_at, finished_at, duration_ms, error_info->>'type' AS error_type
          FROM ferry.chunks WHERE run_id = %(run_id)s ORDER BY chunk_no""",
    "audit": """
        SELECT at, actor, host, action, params FROM ferry.audit_log
         WHERE run_id = %(run_id)s ORDER BY at, id""",
    "verifications": """
        SELECT at, actor, ok, report FROM ferry.verifications
         WHERE run_id = %(run_id)s ORDER BY at, id""",
    "alerts": """
        SELECT type, message, at FROM ferry.alerts WHERE run_id = %(run_id)s ORDER BY at, id""",
}
SAFE_PARAM_TEXT = frozenset({"backfill", "was", "queue"})


def collect(ctx: Context, run_id: int) -> dict[str, Any]:
    """Everything the report shows, as plain JSON-able data (no row values)."""
    summary = health.health(ctx, run_id)
    by_rule = quarantine.summary(ctx, run_id)
    with ctx.db.transaction() as conn:
        run = ctx.ledger.get_run(run_id, conn)
        chunks = [dict(r) for r in conn.execute(QUERIES["chunks"], {"run_id": run_id})]
        audit = [dict(r) for r in conn.execute(QUERIES["audit"], {"run_id": run_id})]
        checks = [dict(r) for r in conn.execute(QUERIES["verifications"], {"run_id": run_id})]
        alerts = [dict(r) for r in conn.execute(QUERIES["alerts"], {"run_id": run_id})]
        durations = [
            float(r["duration_ms"]) for r in conn.execute(q("chunk_durations"), {"run_id": run_id})
        ]
        now = datetime.now(UTC)
    spec = run.spec
    phi = list(spec.extra.get("phi", ()))
    if spec.key in phi:  # a PHI key: chunk boundaries are values too (migrations.classification)
        ends = [
            (chunk, end_) for chunk in chunks for end_ in ("lo", "hi") if chunk[end_] is not None
        ]
        for (chunk, end_), masked in zip(
            ends, ctx.ledger.mask([c[e] for c, e in ends]), strict=True
        ):
            chunk[end_] = masked
    launched = next((a for a in audit if a["action"] == "launch"), None)
    start = run.started_at or run.created_at
    end = run.finished_at or now
    return {
        "generated_at": _iso(now),
        "run": {
            "id": run.id,
            "backfill": run.backfill,
            "status": run.status,
            "health": summary["status"],
            "created_by": run.created_by,
            "created_at": _iso(run.created_at),
            "started_at": _iso(run.started_at),
            "finished_at": _iso(run.finished_at),
            "error": mask_text(run.error) if run.error else None,
        },
        "launched": {
            "actor": launched["actor"] if launched else run.created_by,
            "host": launched["host"] if launched else None,
            "at": _iso(launched["at"] if launched else run.created_at),
        },
        "spec": {
            "table": f"{spec.schema}.{spec.table}",
            "key": f"{spec.key} ({spec.key_type})",
            "path": spec.mode,
            "reads": list(spec.reads),
            "writes": list(spec.writes),
            "sql": dict(spec.sql or {}),
            "transform": dict(spec.transform or {}),
            "chunk_size": spec.chunk_size,
            "where": mask_text(spec.where) if spec.where else None,
            "limits": run.params.get("limits"),
            "phi": phi,
        },
        "rules": [r.to_dict() for r in spec.rules],
        "totals": {
            "chunks": summary["chunks"],
            "rows": summary["rows"],
            "retried_chunks": sum(1 for c in chunks if (c["attempts"] or 0) > 1),
            "attempts": sum(int(c["attempts"] or 0) for c in chunks),
            "key_range": (
                f"({chunks[0]['lo'] or 'first key'}, {chunks[-1]['hi']}]" if chunks else None
            ),
            "duration_s": summary["metrics"]["duration"],
            "rows_per_second": summary["metrics"]["rowsPerSecond"],
            "error_rate": summary["metrics"]["errorRate"],
            "chunk_p50_ms": summary["metrics"]["chunkP50Ms"],
            "chunk_p99_ms": summary["metrics"]["chunkP99Ms"],
        },
        "series": series(chunks, start, end),
        "durations": _bins(durations),
        "failed_chunks": [
            {k: c[k] for k in ("chunk_no", "lo", "hi", "attempts", "error_type")}
            for c in chunks
            if c["status"] == "failed"
        ],
        "quarantine": [
            {k: r[k] for k in ("rule_index", "field", "rule_type", "message", "rows")}
            for r in by_rule["rules"]
        ],
        "verifications": [_verification(v) for v in checks],
        "rollbacks": [_event(a) for a in audit if a["action"] == "rollback"],
        "timeline": timeline(
            run.created_at, run.started_at, run.finished_at, run.status, audit, alerts, chunks
        ),
    }


def _bins(durations: Sequence[float]) -> list[dict[str, float]]:
    return [{"lo": b.lo, "hi": b.hi, "count": b.count} for b in charts.histogram(durations)]


def series(chunks: Sequence[Mapping[str, Any]], start: datetime, end: datetime) -> dict[str, Any]:
    """Throughput (rows/s, each chunk's rows spread over its run time) and error rate per bucket.

    A chunk ran from its start for ``duration_ms`` (its ``finished_at`` moves when it is rolled
    back later); a failed chunk has no duration and counts at its ``finished_at``. The window
    stretches to the last chunk, so every processed row is in some bucket. The error rate of
    a bucket matches ``ferry status``'s: quarantined / processed rows of the chunks that ended
    in it, plus the share of those chunks that failed.
    """
    t0 = start.timestamp()
    ran = [(c, *_ran(c, t0)) for c in chunks if c["finished_at"] is not None]
    length = max([end.timestamp() - t0, *(stop for _, _, stop in ran)])
    # about two chunks per bucket at least: finer buckets only show which held a chunk
    buckets = max(1, min(MAX_BUCKETS, math.ceil(length / MIN_BUCKET_S), len(ran) // 2))
    edges = charts.bucket_edges(0.0, length, buckets)
    width = edges[1] - edges[0]
    rows = charts.spread(
        [charts.Span(start=a, end=b, amount=float(c["rows_read"] or 0)) for c, a, b in ran], edges
    )

    def total(of: Any) -> list[float]:
        return charts.per_bucket([(stop, float(of(c))) for c, _, stop in ran], edges)

    written = charts.spread(
        [charts.Span(start=a, end=b, amount=float(c["rows_written"] or 0)) for c, a, b in ran],
        edges,
    )
    processed = total(lambda c: c["rows_read"] or 0)
    retries = total(lambda c: max(0, (c["attempts"] or 0) - 1))
    refused = total(lambda c: c["rows_quarantined"] or 0)
    failed = total(lambda c: c["status"] == "failed")
    count = total(lambda c: 1)
    errors = [
        (r / p if p else 0.0) + (f / n if n else 0.0)
        for r, p, f, n in zip(refused, processed, failed, count, strict=True)
    ]
    return {
        "bucket_seconds": width,
        "seconds": [round(e, 3) for e in edges[1:]],
        "rows_per_second": [round(r / width, 3) for r in rows],
        "written_per_second": [round(w / width, 3) for w in written],
        "error_rate": [round(e, 6) for e in errors],
        "retries_per_chunk": [
            round(r / n, 6) if n else 0.0 for r, n in zip(retries, count, strict=True)
        ],
    }


def _ran(chunk: Mapping[str, Any], t0: float) -> tuple[float, float]:
    """(start, end) of a chunk's last attempt, in seconds from ``t0``."""
    finished = float(chunk["finished_at"].timestamp()) - t0
    if chunk["started_at"] is None:
        return finished, finished
    begun = float(chunk["started_at"].timestamp()) - t0
    if chunk["duration_ms"] is not None:
        return begun, begun + float(chunk["duration_ms"]) / 1000.0
    return begun, max(begun, finished)


def timeline(
    created: datetime,
    started: datetime | None,
    finished: datetime | None,
    status: str,
    audit: Iterable[Mapping[str, Any]],
    alerts: Iterable[Mapping[str, Any]],
    chunks: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    events: list[tuple[datetime, str, str, str]] = [(created, "ledger", "run recorded", "")]
    if started:
        events.append((started, "ledger", "run started", ""))
    firsts = [c["started_at"] for c in chunks if c["started_at"]]
    lasts = [datetime.fromtimestamp(_ran(c, 0.0)[1], UTC) for c in chunks if c["finished_at"]]
    if firsts:
        events.append((min(firsts), "workers", "first chunk started", ""))
    if lasts:
        events.append((max(lasts), "workers", "last chunk ended", ""))
    if finished:
        events.append((finished, "ledger", f"run {status}", ""))
    for a in audit:
        e = _event(a)
        events.append((a["at"], e["actor"], e["action"], e["details"]))
    events.extend((a["at"], "alert", f"alert {a['type']}", a["message"]) for a in alerts)
    events.sort(key=lambda e: e[0])
    return [{"at": _iso(at), "who": who, "what": what, "details": d} for at, who, what, d in events]


def _event(row: Mapping[str, Any]) -> dict[str, Any]:
    params = _safe(row["params"] or {})
    details = ", ".join(f"{k}={as_text(v)}" for k, v in params.items())
    return {
        "at": _iso(row["at"]),
        "actor": row["actor"],
        "action": row["action"],
        "details": details,
    }


def _safe(params: Mapping[str, Any]) -> dict[str, Any]:
    """Numbers, flags and a few named texts of an audit row's parameters: never a filter."""
    out: dict[str, Any] = {}
    for key, value in sorted(params.items()):
        if isinstance(value, bool | int | float) or value is None:
            out[key] = value
        elif isinstance(value, Mapping):
            inner = _safe(value)
            if inner:
                out[key] = inner
        elif isinstance(value, str) and key in SAFE_PARAM_TEXT:
            out[key] = value
    return out


def _verification(row: Mapping[str, Any]) -> dict[str, Any]:
    r = row["report"]
    counts, checksum, rules = r.get("counts", {}), r.get("checksum", {}), r.get("rules", {})
    return {
        "at": _iso(row["at"]),
        "actor": row["actor"],
        "ok": row["ok"],
        "counts_ok": counts.get("ok"),
        "rows_in_range": counts.get("rows_in_range"),
        "pre_images": counts.get("pre_images"),
        "checksum_ok": checksum.get("ok"),
        "sampled": checksum.get("sample"),
        "rules_ok": rules.get("ok"),
        "rules_broken": len(rules.get("violations", [])),
        "drift_method": r.get("drift", {}).get("method"),
        "drifted_rows": r.get("drift", {}).get("rows"),
    }


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat(timespec="seconds") if value else None
