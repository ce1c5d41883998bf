"""``ferry report``: the plan's migration documentation for one run, as HTML or Markdown.

Written for a compliance officer reading it offline months later: what was
changed (spec and rules), who launched it and when, how it went (timeline,
throughput, error rate, chunk durations), what was refused (quarantine counts
by rule), how it was proven (verifications) and undone (rollbacks).

No row value reaches the report: only counts, timings, Ferry's own messages
and key-range bounds. Quarantine examples and the row keys a verification
lists are dropped, ``where`` filters are masked (a catch-up run's filter lists
keys), audit parameters keep numbers and a few named fields only. Every piece
of text goes through ``html.escape`` (HTML) or ``_md`` (Markdown).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any

from coordinator import charts, health, quarantine
from coordinator.commands import Context
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
        mask = quarantine.key_masker(ctx)
        for chunk in chunks:
            for end_ in ("lo", "hi"):
                if chunk[end_] is not None:
                    chunk[end_] = mask(chunk[end_])
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
    details = ", ".join(f"{k}={_text(v)}" for k, v in params.items())
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


# -- rendering: one neutral outline, two formats --------------------------------------------
Block = tuple[Any, ...]  # ("kv", pairs) | ("table", headers, rows) | ("chart", svg, {name: ys})


def outline(data: Mapping[str, Any]) -> list[tuple[str, list[Block]]]:
    """The report's sections in order; HTML and Markdown render exactly these."""
    run, spec, totals, s = data["run"], data["spec"], data["totals"], data["series"]
    launched = data["launched"]
    rows, chunks = totals["rows"], totals["chunks"]
    overview = [
        ("backfill", run["backfill"]),
        ("run status", run["status"]),
        ("health", run["health"]),
        (
            "launched by",
            f"{launched['actor']}" + (f" on {launched['host']}" if launched["host"] else ""),
        ),
        ("launched at", launched["at"]),
        ("started / finished", f"{run['started_at'] or '-'} / {run['finished_at'] or '-'}"),
        ("duration (s)", totals["duration_s"]),
        ("chunks", ", ".join(f"{k} {v}" for k, v in chunks.items())),
        ("rows", ", ".join(f"{k} {v}" for k, v in rows.items())),
        ("chunk attempts (retried chunks)", f"{totals['attempts']} ({totals['retried_chunks']})"),
        ("key range (lo, hi]", totals["key_range"]),
        ("rows/s (whole run)", totals["rows_per_second"]),
        ("error rate", totals["error_rate"]),
        ("run error", run["error"] or "-"),
    ]
    spec_rows = [
        ("table", spec["table"]),
        ("key", spec["key"]),
        ("path", spec["path"]),
        ("reads", ", ".join(spec["reads"])),
        ("writes", ", ".join(spec["writes"])),
        *((f"SQL for {col}", expr) for col, expr in spec["sql"].items()),
        *((f"transform {k}", v) for k, v in spec["transform"].items()),
        ("chunk size", spec["chunk_size"]),
        ("where (literals masked)", spec["where"] or "-"),
        ("limits", spec["limits"]),
        ("PHI columns (values masked everywhere)", ", ".join(spec.get("phi", ())) or "-"),
    ]
    rules = [(i, *(r.get(c) for c in RULE_COLUMNS)) for i, r in enumerate(data["rules"])]
    durations = [charts.Bin(**b) for b in data["durations"]]
    t = data["timeline"]
    return [
        ("Overview", [("kv", overview)]),
        ("Specification", [("kv", spec_rows)]),
        ("Validation rules", [_table(("#", *RULE_COLUMNS), rules)]),
        ("Timeline", [_table(TIMELINE, [tuple(e.values()) for e in t])]),
        (
            "Throughput",
            [
                _line(
                    "throughput (each chunk's rows spread over its run time)",
                    "rows/s",
                    s["seconds"],
                    {
                        "rows read/s": s["rows_per_second"],
                        "rows written/s": s["written_per_second"],
                    },
                )
            ],
        ),
        (
            "Error rate",
            [
                _line(
                    "error rate (quarantined share + failed share) and retries",
                    "rate",
                    s["seconds"],
                    {"error rate": s["error_rate"], "retries per chunk": s["retries_per_chunk"]},
                )
            ],
        ),
        (
            "Chunk durations",
            [
                (
                    "chart",
                    charts.bar_chart(
                        durations,
                        title="chunk duration histogram",
                        x_label="milliseconds",
                        y_label="chunks",
                    ),
                    {"chunks per duration bin": [float(b.count) for b in durations]},
                ),
                (
                    "kv",
                    [("p50 (ms)", totals["chunk_p50_ms"]), ("p99 (ms)", totals["chunk_p99_ms"])],
                ),
            ],
        ),
        ("Failed chunks", [_table(FAILED, [tuple(c.values()) for c in data["failed_chunks"]])]),
        (
            "Quarantine by rule (counts only)",
            [_table(QUARANTINE, [tuple(r.values()) for r in data["quarantine"]])],
        ),
        (
            "Verification",
            [_table(VERIFICATION, [tuple(v.values()) for v in data["verifications"]])],
        ),
        ("Rollback history", [_table(ROLLBACKS, [tuple(r.values()) for r in data["rollbacks"]])]),
    ]


RULE_COLUMNS = ("field", "type", "condition", "severity", "action", "fix", "error_message")
TIMELINE = ("at (UTC)", "who", "what", "details")
FAILED = ("chunk", "lo", "hi", "attempts", "error type")
QUARANTINE = ("rule", "field", "type", "message", "rows")
VERIFICATION = (
    "at (UTC)",
    "by",
    "ok",
    "counts",
    "rows in range",
    "pre-images",
    "checksum",
    "sampled",
    "rules",
    "rules broken",
    "drift method",
    "drifted rows",
)
ROLLBACKS = ("at (UTC)", "by", "action", "details")


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> Block:
    return ("table", tuple(headers), list(rows))


def _line(title: str, y_label: str, xs: Sequence[float], named: Mapping[str, Any]) -> Block:
    svg = charts.line_chart(xs, named, title=title, x_label="seconds since start", y_label=y_label)
    return ("chart", svg, named)


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Mapping | list):
        return json.dumps(value, default=str)
    return str(value)


STYLE = """body{font-family:sans-serif;max-width:60rem;margin:2rem auto;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1rem}td,th{border:1px solid #ccc;padding:.2rem .5rem;
text-align:left;vertical-align:top;font-size:.9rem}th{background:#f3f3f3}
code{font-size:.85rem}.none{color:#777}"""


def to_html(data: Mapping[str, Any]) -> str:
    """One self-contained page: inline CSS and SVG, no script, no external resource."""
    run = data["run"]
    title = f"Ferry run {run['id']}: {run['backfill']}"
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">",
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f"<p>Generated {escape(_text(data['generated_at']))} UTC from the ledger. "
        "Counts and key-range bounds only: no row value appears in this report.</p>",
    ]
    for heading, blocks in outline(data):
        out.append(f"<h2>{escape(heading)}</h2>")
        for block in blocks:
            out.append(_html_block(block))
    out.append("</body></html>")
    return "\n".join(out)


def _html_block(block: Block) -> str:
    kind = block[0]
    if kind == "chart":
        return f"<figure>{block[1]}</figure>"
    if kind == "kv":
        cells = "".join(
            f"<tr><th>{escape(_text(k))}</th><td>{escape(_text(v))}</td></tr>" for k, v in block[1]
        )
        return f"<table>{cells}</table>"
    headers, rows = block[1], block[2]
    if not rows:
        return '<p class="none">none</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(_text(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def to_markdown(data: Mapping[str, Any]) -> str:
    """The same sections as the HTML; charts become sparklines of the same series."""
    run = data["run"]
    out = [
        f"# Ferry run {run['id']}: {_md(run['backfill'])}",
        "",
        f"Generated {_md(data['generated_at'])} UTC from the ledger. Counts and key-range "
        "bounds only: no row value appears in this report.",
    ]
    for heading, blocks in outline(data):
        out += ["", f"## {heading}", ""]
        for block in blocks:
            kind = block[0]
            if kind == "chart":
                for label, values in block[2].items():
                    peak = charts.fmt(max(values, default=0.0))
                    out.append(f"- {label}: `{charts.sparkline(values) or '-'}` (peak {peak})")
            elif kind == "kv":
                out += ["| | |", "|---|---|"]
                out += [f"| {_md(k)} | {_md(v)} |" for k, v in block[1]]
            elif not block[2]:
                out.append("none")
            else:
                out.append("| " + " | ".join(_md(h) for h in block[1]) + " |")
                out.append("|" + "---|" * len(block[1]))
                out += ["| " + " | ".join(_md(v) for v in row) + " |" for row in block[2]]
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def _md(value: Any) -> str:
    """A table cell: pipes, angle brackets and newlines cannot break out of it."""
    text = _text(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
    return text.replace("<", "&lt;").replace(">", "&gt;")
