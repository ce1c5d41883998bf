"""Human output: rich tables and progress bars. JSON output bypasses this module."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

console = Console()
err = Console(stderr=True)


def plan_table(plan: dict[str, Any], title: str) -> None:
    table = Table(title=title, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    labels = {
        "run_id": "run",
        "status": "status",
        "table": "table",
        "key": "key",
        "mode": "path",
        "writes": "writes",
        "chunk_size": "chunk size",
        "chunks": "chunks",
        "rows": "rows",
        "estimated_seconds": "estimated time at the run's limits (s)",
        "backup_bytes": "pre-image space (bytes)",
        "disk_needed_bytes": "disk needed, pre-images + WAL (bytes)",
        "disk_free_bytes": "disk free on the database (bytes)",
        "fits": "fits",
        "sample_ms": "sample of 200 rows (ms)",
    }
    for key, label in labels.items():
        value = plan.get(key)
        if value is None:
            continue
        table.add_row(label, _cell(value))
    console.print(table)


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "NO: launch refuses without --force"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    if isinstance(value, int | float):
        return f"{value:,}"
    return str(value)


def health_table(h: dict[str, Any]) -> None:
    colour = {"healthy": "green", "degraded": "yellow", "failed": "red"}[h["status"]]
    console.print(
        f"run [bold]{h['run_id']}[/] {h['backfill']} on {h['table']}: "
        f"[bold]{h['run_status']}[/], health [{colour}]{h['status']}[/]"
    )
    chunks = Table(title="chunks (pending: of them on the queue)")
    names = ("total", "pending", "running", "done", "failed", "rolled_back")
    for name in names:
        chunks.add_column(name, justify="right")
    counts = {n: f"{h['chunks'][n]:,}" for n in names}
    counts["pending"] += f" ({h['chunks'].get('queued', 0):,})"
    if h.get("planning"):
        counts["total"] += " so far (more being recorded)"
    chunks.add_row(*(counts[n] for n in names))
    console.print(chunks)
    m = h["metrics"]
    stats = Table(title="rows and throughput")
    for name in (
        "processed",
        "written",
        "quarantined",
        "rows/s",
        "elapsed s",
        "ETA s",
        "chunk p50 ms",
        "chunk p99 ms",
    ):
        stats.add_column(name, justify="right")
    eta = "-" if m["etaSeconds"] is None else f"{m['etaSeconds']:,.0f}"
    stats.add_row(
        f"{h['rows']['processed']:,}",
        f"{h['rows']['written']:,}",
        f"{h['rows']['quarantined']:,}",
        f"{m['rowsPerSecond']:,.0f}",
        f"{m['duration']:,.1f}",
        eta,
        str(m["chunkP50Ms"] or "-"),
        str(m["chunkP99Ms"] or "-"),
    )
    console.print(stats)
    for alert in h["alerts"]:
        console.print(f"[yellow]alert[/] {alert['type']}: {alert['message']}")
    for f in h.get("failures", []):
        console.print(
            f"[red]chunk {f['chunk']} failed[/] ({f['type']}, {f['severity']}): "
            f"{f['description']}\n  resolution: {f['resolution']}"
        )
    if h["recent_errors"]:
        errors = Table(title="recent errors (values masked)")
        for name in ("chunk", "kind", "message", "when"):
            errors.add_column(name)
        for e in h["recent_errors"][:10]:
            errors.add_row(str(e["chunk"]), e["kind"], e["message"] or "", e["timestamp"] or "")
        console.print(errors)


def follow(
    total: int, poll: Callable[[], tuple[int, int, str, bool]], label: str, interval: float = 0.5
) -> str:
    """Show a progress bar until ``poll`` says the run ended; returns its final status.

    ``poll`` returns (settled chunks, rows processed, run status, finished).
    """
    started = time.monotonic()
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=False) as progress:
        task = progress.add_task(label, total=max(total, 1), rate="")
        while True:
            settled, rows, status, finished = poll()
            elapsed = max(time.monotonic() - started, 1e-6)
            progress.update(
                task, completed=settled if total else 1, rate=f"{rows / elapsed:,.0f} rows/s"
            )
            if finished:
                return status
            time.sleep(interval)


def verify_table(report: dict[str, Any]) -> None:
    mark = {True: "[green]ok[/]", False: "[red]FAILED[/]"}
    c = report["counts"]
    console.print(f"run {report['run_id']}: verification {mark[report['ok']]}")
    if "rows_in_range" in c:
        console.print(
            f"  counts {mark[c['ok']]}: {c['rows_in_range']:,} rows in range now, "
            f"{c['rows_read']:,} read = {c['written']:,} written + {c['quarantined']:,} "
            f"quarantined + {c['unchanged']:,} unchanged; {c['pre_images']:,} pre-images, "
            f"{c['quarantine_records']:,} quarantine records"
        )
    k = report["checksum"]
    detail = k.get("error") or (
        f"{k.get('sample', 0):,} sampled rows, {k.get('rows_that_differ', 0)} differ"
    )
    console.print(f"  checksum {mark[k['ok']]}: {detail}")
    r = report["rules"]
    console.print(f"  rules {mark[r['ok']]}: {len(r.get('violations', []))} rule(s) broken")
    for v in r.get("violations", []):
        console.print(f"    {v['field']} ({v['type']}): {v['rows']:,} rows: {v['message']}")
    d = report["drift"]
    console.print(
        f"  drift {mark[d.get('ok', not d['rows'])]} ({d['method']}): "
        f"{d['rows']:,} row(s) changed after their chunk ran"
    )
    if d.get("catch_up"):
        console.print("    re-apply the run to them with:")
        console.print(f"    {d['catch_up']}", markup=False, soft_wrap=True)


def quarantine_table(result: dict[str, Any]) -> None:
    table = Table(title=f"run {result['run_id']}: {result['rows']:,} quarantined row(s)")
    for name in ("rule", "field", "type", "message", "rows", "examples (key masked-value)"):
        table.add_column(name)
    for r in result["rules"]:
        table.add_row(
            str(r["rule_index"]),
            r["field"],
            r["rule_type"],
            r["message"],
            f"{r['rows']:,}",
            ", ".join(r["examples"]),
        )
    console.print(table)
