"""``ferry audit`` and ``ferry purge``: the audit trail and retention, on the command line.

Registered by ``coordinator.cli._register_security``; like every verb, a thin layer over
library calls (``coordinator.audit``, ``coordinator.purge``).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.table import Table

from coordinator import audit as audit_log
from coordinator import purge as retention
from coordinator import render
from coordinator.cli import _context, _guarded


@click.group()
def audit() -> None:
    """The append-only, hash-chained audit log: list it, prove it was not tampered with."""


@audit.command(name="verify")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
@_guarded
def audit_verify(obj: dict[str, Any], as_json: bool) -> None:
    """Recompute the hash chain; exit 1 naming the first row altered, removed or forged."""
    with _context(obj) as ctx:
        try:
            result = audit_log.verify(ctx)
        except audit_log.ChainBroken as exc:
            if not as_json:
                raise
            click.echo(
                json.dumps(
                    {
                        "ok": False,
                        "broken_at": exc.row_id,
                        "reason": exc.reason,
                        "rows_checked": exc.checked,
                    }
                )
            )
            sys.exit(1)
    if as_json:
        click.echo(json.dumps(result))
    else:
        sealing = (
            f"; {result['sealed_heads']} head(s) sealed outside the database still stand"
            if result["keyed"]
            else "; not keyed: set FERRY_AUDIT_KEY so that the ledger's owner cannot rewrite it"
        )
        click.echo(
            f"audit log intact: {result['rows']} row(s) chained, last row {result['last_id']}"
            + sealing
        )


@audit.command(name="list")
@click.option("--run", "run_id", type=int, help="Only the entries of this run.")
@click.option(
    "--limit", default=100, show_default=True, type=click.IntRange(min=1), help="Newest N."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON array.")
@click.pass_obj
@_guarded
def audit_list(obj: dict[str, Any], run_id: int | None, limit: int, as_json: bool) -> None:
    """Who did what, when, from where, on which run, with which parameters."""
    with _context(obj) as ctx:
        rows = audit_log.entries(ctx, run_id=run_id, limit=limit)
    if as_json:
        click.echo(json.dumps(rows, default=str))
        return
    table = Table(title="audit log" + (f" of run {run_id}" if run_id is not None else ""))
    for column in ("id", "at", "actor", "host", "action", "run", "parameters"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            str(r["id"]),
            f"{r['at']:%Y-%m-%d %H:%M:%S%z}",
            r["actor"],
            r["host"],
            r["action"],
            "" if r["run_id"] is None else str(r["run_id"]),
            json.dumps(r["params"], default=str, sort_keys=True),
        )
    render.console.print(table)


@click.command()
@click.option(
    "--older-than",
    required=True,
    help="Retention period: runs finished before now minus this (30d, 12h, 2w, 90m, 45s).",
)
@click.option("--dry-run", is_flag=True, help="List what would be purged; change nothing.")
@click.option(
    "--include-unverified",
    is_flag=True,
    help="Also purge runs whose latest `ferry verify` did not pass (or never ran).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_obj
@_guarded
def purge(
    obj: dict[str, Any], older_than: str, dry_run: bool, include_unverified: bool, as_json: bool
) -> None:
    """Drop pre-images and quarantined rows of finished runs past retention (audited).

    A purged run can no longer be rolled back. Active runs are never purged, nor runs
    not verified unless --include-unverified.
    """
    period = retention.parse_period(older_than)
    with _context(obj) as ctx:
        result = retention.purge(
            ctx, period, dry_run=dry_run, include_unverified=include_unverified
        )
    if as_json:
        click.echo(json.dumps(result, default=str))
        return
    verb = "would purge" if dry_run else "purged"
    for entry in result["purged"]:
        click.echo(
            f"{verb} run {entry['run_id']} ({entry['status']}, finished "
            f"{entry['finished_at']:%Y-%m-%d}): pre-images and "
            f"{entry['quarantine_rows']} quarantined row(s)"
        )
    for entry in result["skipped"]:
        click.echo(f"kept run {entry['run_id']}: {entry['reason']}")
    click.echo(f"{len(result['purged'])} run(s) {verb}, {len(result['skipped'])} kept")
