"""Rendering ``ferry report``'s data (coordinator.report.collect) as HTML or Markdown.

One neutral outline of sections and blocks, two formats. The HTML is one file
with inline CSS and SVG charts and no script, viewable offline; every piece of
text goes through ``html.escape`` (HTML) or ``_md`` (Markdown).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from coordinator import charts

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


def as_text(value: Any) -> str:
    """One cell's text: dashes for nothing, yes/no, JSON for structures."""
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
        f"<p>Generated {escape(as_text(data['generated_at']))} UTC from the ledger. "
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
            f"<tr><th>{escape(as_text(k))}</th><td>{escape(as_text(v))}</td></tr>"
            for k, v in block[1]
        )
        return f"<table>{cells}</table>"
    headers, rows = block[1], block[2]
    if not rows:
        return '<p class="none">none</p>'
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(as_text(v))}</td>" for v in row) + "</tr>" for row in rows
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
    text = as_text(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
    return text.replace("<", "&lt;").replace(">", "&gt;")
