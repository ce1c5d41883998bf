"""The ``ferry`` command line: a thin layer over ``coordinator.commands``.

Exit codes: 0 success, 1 the run or a check failed, 2 bad input or usage.
Errors are one line on stderr; no password or row value is ever printed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import psycopg
import redis

from coordinator import commands, control, health, quarantine, render
from coordinator import verify as verification
from migrations.errors import FerryError
from migrations.masking import mask_text
from workers.limits import DEFAULT_DB_LOAD, Limits
from workers.settings import Settings

EPILOG = """\b
Examples:
  ferry init
  ferry plan app.backfills:normalize_dob
  ferry launch app.backfills:normalize_dob --wait
  ferry status 12 --json
  ferry rollback 12 --wait
"""


@contextmanager
def _context(obj: dict[str, Any]) -> Iterator[commands.Context]:
    ctx = commands.Context(Settings.from_env(**obj))
    try:
        yield ctx
    finally:
        ctx.close()


def _fail(message: str, code: int) -> None:
    click.echo(f"ferry: error: {message}", err=True)
    sys.exit(code)


def _reason(exc: BaseException) -> str:
    """The error's class and first line, masked (a TLS failure says why; no password shows)."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {mask_text(first)}" if first else type(exc).__name__


def _guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map Ferry errors to their exit codes and connection failures to one masked line."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FerryError as exc:
            _fail(str(exc), exc.exit_code)
        except psycopg.OperationalError as exc:
            # libpq's connection messages name the host, port, database and role (never row
            # data): shown as they are, a password in a URL masked.
            first = str(exc).splitlines()[0] if str(exc) else ""
            _fail(f"database unavailable: {mask_text(first, names=True)}", 1)
        except redis.RedisError as exc:
            _fail(f"redis unavailable: {_reason(exc)}", 1)
        except Exception as exc:  # kombu/celery connection errors have no common base
            if type(exc).__module__.startswith(("kombu", "celery", "amqp")):
                _fail(f"broker unavailable: {_reason(exc)}", 1)
            raise

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


@click.group(epilog=EPILOG)
@click.option(
    "--database-url",
    envvar="FERRY_DATABASE_URL",
    show_envvar=True,
    help="Database to migrate; it also holds the ledger.",
)
@click.option(
    "--redis-url",
    envvar="FERRY_REDIS_URL",
    show_envvar=True,
    help="Redis for the Celery broker and live progress.",
)
@click.option("--queue", envvar="FERRY_QUEUE", show_envvar=True, help="Celery queue name.")
@click.pass_context
def main(
    click_ctx: click.Context, database_url: str | None, redis_url: str | None, queue: str | None
) -> None:
    """Ferry: zero-downtime chunked data migrations for PostgreSQL."""
    click_ctx.obj = {"database_url": database_url, "redis_url": redis_url, "queue": queue}


@main.command()
@click.option(
    "--roles",
    is_flag=True,
    help="Also create the group roles ferry_coordinator, ferry_worker, ferry_monitor, "
    "ferry_unmask and grant them on the ledger (see docs/security.md).",
)
@click.pass_obj
@_guarded
def init(obj: dict[str, Any], roles: bool) -> None:
    """Create or upgrade the ledger (schema ferry)."""
    with _context(obj) as ctx:
        result = commands.init(ctx, roles=roles)
    applied = ", ".join(map(str, result["applied"])) or "none (up to date)"
    click.echo(f"ledger at version {result['version']}; applied: {applied}")
    click.echo(f"ledger identity {result['identity']}")
    if result["rekeyed"]:
        old, new = result["rekeyed"]
        click.echo(
            f"this ledger is a copy of ledger {old} (restored backup or clone): "
            f"it is ledger {new} now, with Redis keys and a default queue of its own"
        )
    if result["roles"] is not None:
        created = ", ".join(result["roles"]["created"]) or "none (all existed)"
        click.echo(f"roles granted: {', '.join(result['roles']['roles'])}; created: {created}")


def _plan_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--where", help='SQL filter narrowing the rows (e.g. "dob IS NULL").')(fn)
    fn = click.option("--chunk-size", type=click.IntRange(min=1), help="Rows per chunk.")(fn)
    fn = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")(fn)
    return click.argument("reference")(fn)


@main.command()
@_plan_options
@click.pass_obj
@_guarded
def plan(
    obj: dict[str, Any], reference: str, where: str | None, chunk_size: int | None, as_json: bool
) -> None:
    """Dry run: check the spec, count chunks and rows, estimate time and space."""
    with _context(obj) as ctx:
        result = commands.plan(ctx, reference, where=where, chunk_size=chunk_size)
    if as_json:
        click.echo(json.dumps(result.as_dict()))
    else:
        render.plan_table(result.as_dict(), f"plan for {reference} (nothing written)")


DB_LOAD_HELP = (
    "Average database connections the run's chunk transactions may keep busy, across all "
    "workers (0: no bound)."
)


@main.command()
@_plan_options
@click.option("--wait", is_flag=True, help="Follow progress until the run ends.")
@click.option(
    "--catch-up",
    "catch_up",
    type=int,
    metavar="RUN",
    help="Re-apply only the rows of RUN that changed after their chunk ran.",
)
@click.option(
    "--max-concurrency",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Chunks in flight across all workers.",
)
@click.option(
    "--rows-per-second",
    type=click.FloatRange(min=0, min_open=True),
    help="Row budget shared by all workers (default: none).",
)
@click.option(
    "--chunk-time",
    type=click.FloatRange(min=0, min_open=True),
    default=0.5,
    show_default=True,
    help="Target seconds per chunk transaction; chunks are cut to fit (chunk size is the cap).",
)
@click.option(
    "--db-load",
    type=click.FloatRange(min=0),
    default=DEFAULT_DB_LOAD,
    show_default=True,
    help=DB_LOAD_HELP,
)
@click.option("--force", is_flag=True, help="Launch even if the capacity check fails.")
@click.pass_obj
@_guarded
def launch(
    obj: dict[str, Any],
    reference: str,
    where: str | None,
    chunk_size: int | None,
    as_json: bool,
    wait: bool,
    catch_up: int | None,
    max_concurrency: int,
    rows_per_second: float | None,
    chunk_time: float,
    db_load: float,
    force: bool,
) -> None:
    """Plan a run and send one Celery task per chunk."""
    limits = Limits(
        max_concurrency=max_concurrency,
        rows_per_second=rows_per_second,
        chunk_time=chunk_time,
        db_load=db_load or None,
    ).checked()
    with _context(obj) as ctx:
        result = commands.launch(
            ctx,
            reference,
            where=where,
            chunk_size=chunk_size,
            catch_up=catch_up,
            limits=limits,
            force=force,
        )
        assert result.run_id is not None
        status = result.status or "running"
        if wait:
            if not as_json:
                render.plan_table(result.as_dict(), f"run {result.run_id} launched")
            status = (
                render.follow(
                    result.chunks, commands.poller(ctx, result.run_id), f"run {result.run_id}"
                )
                if result.chunks
                else status
            )
        if as_json:
            payload = result.as_dict() | {"status": status}
            if wait:
                payload["health"] = health.health(ctx, result.run_id)
            click.echo(json.dumps(payload, default=str))
        elif wait:
            render.health_table(health.health(ctx, result.run_id))
        else:
            render.plan_table(result.as_dict(), f"run {result.run_id} launched")
            click.echo(f"follow it with: ferry status {result.run_id} --watch")
    if wait and status != "completed":
        sys.exit(1)


@main.command()
@click.argument("run_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print MigrationHealth as JSON.")
@click.option("--watch", is_flag=True, help="Refresh every 2 seconds until the run ends.")
@click.option(
    "--alert-webhook",
    "webhook_url",
    envvar="FERRY_ALERT_WEBHOOK",
    show_envvar=True,
    metavar="URL",
    help="POST each new alert once as JSON to URL (user:password@ in it becomes Basic auth).",
)
@click.pass_obj
@_guarded
def status(
    obj: dict[str, Any], run_id: int, as_json: bool, watch: bool, webhook_url: str | None
) -> None:
    """Progress, throughput, ETA, errors and health of a run."""
    import time

    from coordinator import webhook

    with _context(obj) as ctx, webhook.for_url(webhook_url) as alerts:
        while True:
            h = health.health(ctx, run_id)
            alerts.notify(h)
            if as_json:
                click.echo(json.dumps(h, default=str))
            else:
                if watch:
                    render.console.clear()
                render.health_table(h)
            if not watch or h["run_status"] in (
                "completed",
                "completed_with_errors",
                "failed",
                "cancelled",
                "rolled_back",
                "rollback_failed",
            ):
                break
            time.sleep(2)
    if h["status"] == "failed":
        sys.exit(1)


@main.command()
@click.argument("run_id", type=int)
@click.option("--chunk", "chunk_no", type=int, help="Roll back this chunk only.")
@click.option("--wait", is_flag=True, help="Follow until the rollback ends.")
@click.option(
    "--force",
    is_flag=True,
    help="Restore rows the application changed since (audited), and over a later run's writes.",
)
@click.pass_obj
@_guarded
def rollback(
    obj: dict[str, Any], run_id: int, chunk_no: int | None, wait: bool, force: bool
) -> None:
    """Restore the pre-images of a run (or one chunk), newest chunk first.

    A row is restored only where it still holds what the run wrote: rows the application
    changed since are left as they are and counted (`--force` restores them too), rows it
    deleted are not re-inserted. Without --wait the chunks are dispatched and `ferry status`
    reports the outcome; with --wait: exit 0 when every row was restored, 1 when rows were
    left to the application or a chunk could not be restored (run `rollback_failed`).
    """
    with _context(obj) as ctx:
        result = commands.rollback(ctx, run_id, chunk_no=chunk_no, force=force)
        click.echo(f"rolling back {result['chunks']} chunk(s) of run {run_id}")
        if not wait:
            click.echo(
                f"`ferry status {run_id}` follows it and counts the rows the application "
                "changed since, which are left as they are"
            )
            return
        status = render.follow(
            result["chunks"] if chunk_no is None else 1,
            commands.poller(ctx, run_id, chunk_no=chunk_no),
            f"rollback {run_id}",
        )
        click.echo(f"run {run_id}: {status}" if chunk_no is None else f"chunk {chunk_no}: {status}")
        done = commands.rollback_result(ctx, run_id, chunk_no)
    click.echo(f"restored {done['restored']:,} row(s) in {done['chunks']:,} chunk(s)")
    if done["overwritten"]:
        click.echo(
            f"{done['overwritten']:,} row(s) the application changed since were restored anyway "
            "(--force; recorded in the audit log)"
        )
    if done["kept"]:
        click.echo(
            f"{done['kept']:,} row(s) the application changed since were left as they are "
            f"(ferry.rollback_conflicts; `ferry rollback {run_id} --force` restores them)",
            err=True,
        )
    if done["gone"]:
        click.echo(
            f"{done['gone']:,} row(s) the application deleted since were not re-inserted",
            err=True,
        )
    if done["failed_chunks"]:
        click.echo(
            f"{done['failed_chunks']:,} chunk(s) could not be restored: {done['error']}",
            err=True,
        )
    if status != "rolled_back" or done["kept"] or done["gone"] or done["failed_chunks"]:
        sys.exit(1)


@main.command()
@click.argument("run_id", type=int)
@click.pass_obj
@_guarded
def resume(obj: dict[str, Any], run_id: int) -> None:
    """Continue a run from the ledger (after losing Redis, workers or the coordinator)."""
    with _context(obj) as ctx:
        result = commands.resume(ctx, run_id)
    recorded = (
        f"; {result['recorded']} chunk(s) its launch had not recorded, recorded now"
        if result["recorded"]
        else ""
    )
    click.echo(f"run {run_id}: {result['pending']} pending chunk(s); {_window(result)}{recorded}")


@main.command()
@click.argument("run_id", type=int)
@click.option("--quarantined", is_flag=True, help="Re-run only the quarantined rows.")
@click.pass_obj
@_guarded
def retry(obj: dict[str, Any], run_id: int, quarantined: bool) -> None:
    """Send the failed chunks of a run again (or, with --quarantined, its quarantined rows)."""
    with _context(obj) as ctx:
        if quarantined:
            result = quarantine.retry_quarantined(ctx, run_id)
            click.echo(
                f"run {run_id}: quarantined rows of {result['chunks']} chunk(s) to re-run; "
                + _window(result)
            )
        else:
            result = commands.retry(ctx, run_id)
            click.echo(f"run {run_id}: {result['pending']} chunk(s) to run; {_window(result)}")


def _window(result: dict[str, Any]) -> str:
    return f"{result['dispatched']} sent now, the rest as chunks finish"


@main.command()
@click.argument("run_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--sample",
    default=1000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Rows whose transform is recomputed for the checksum.",
)
@click.pass_obj
@_guarded
def verify(obj: dict[str, Any], run_id: int, as_json: bool, sample: int) -> None:
    """Prove a completed run: counts, checksum on a sample, rules, and drift."""
    with _context(obj) as ctx:
        report = verification.verify(ctx, run_id, sample=sample)
    if as_json:
        click.echo(json.dumps(report, default=str))
    else:
        render.verify_table(report)
    if not report["ok"]:
        sys.exit(1)


@main.command(name="quarantine")
@click.argument("run_id", type=int)
@click.option(
    "--export",
    "export_to",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write every quarantined row to this CSV file.",
)
@click.option("--unmask", is_flag=True, help="Export raw values (needs the unmask privilege).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_obj
@_guarded
def quarantine_cmd(
    obj: dict[str, Any], run_id: int, export_to: Path | None, unmask: bool, as_json: bool
) -> None:
    """Quarantined rows of a run by rule, with masked values; export them to CSV."""
    if unmask and export_to is None:
        _fail("--unmask only goes with --export", 2)
    with _context(obj) as ctx:
        if export_to is not None:
            rows = quarantine.export(ctx, run_id, export_to, unmask=unmask)
            click.echo(
                f"{rows} quarantined row(s) written to {export_to}"
                + (" (values unmasked)" if unmask else " (values masked)")
            )
            return
        result = quarantine.summary(ctx, run_id)
    if as_json:
        click.echo(json.dumps(result, default=str))
    else:
        render.quarantine_table(result)


@main.command()
@click.argument("run_id", type=int)
@click.pass_obj
@_guarded
def pause(obj: dict[str, Any], run_id: int) -> None:
    """Stop starting chunks (in-flight chunks finish); `ferry resume` continues."""
    with _context(obj) as ctx:
        control.pause(ctx, run_id)
    click.echo(f"run {run_id} paused")


@main.command()
@click.argument("run_id", type=int)
@click.pass_obj
@_guarded
def cancel(obj: dict[str, Any], run_id: int) -> None:
    """End a run for good; chunks already done stay done (see `ferry rollback`)."""
    with _context(obj) as ctx:
        result = control.cancel(ctx, run_id)
    click.echo(f"run {run_id} cancelled; {result['chunks_cancelled']} chunk(s) will not run")


@main.command()
@click.argument("run_id", type=int)
@click.option("--rows-per-second", type=click.FloatRange(min=0, min_open=True))
@click.option("--max-concurrency", type=click.IntRange(min=1))
@click.option(
    "--chunk-time",
    type=click.FloatRange(min=0, min_open=True),
    help="Target seconds per chunk transaction.",
)
@click.option("--db-load", type=click.FloatRange(min=0), help=DB_LOAD_HELP)
@click.pass_obj
@_guarded
def throttle(
    obj: dict[str, Any],
    run_id: int,
    rows_per_second: float | None,
    max_concurrency: int | None,
    chunk_time: float | None,
    db_load: float | None,
) -> None:
    """Change a running run's limits; every worker follows within seconds."""
    if (rows_per_second, max_concurrency, chunk_time, db_load) == (None, None, None, None):
        _fail(
            "give at least one of --rows-per-second, --max-concurrency, --chunk-time, --db-load",
            2,
        )
    with _context(obj) as ctx:
        result = control.throttle(
            ctx,
            run_id,
            rows_per_second=rows_per_second,
            max_concurrency=max_concurrency,
            chunk_time=chunk_time,
            db_load=db_load,
        )
    click.echo(f"run {run_id} limits: {json.dumps(result['limits'])}")


def _register_demo() -> None:
    from coordinator.demo import demo

    main.add_command(demo)


_register_demo()


def _register_report() -> None:
    from coordinator import report as run_report
    from coordinator import report_render

    @main.command(name="report")
    @click.argument("run_id", type=int)
    @click.option(
        "--html",
        "html_to",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Write a self-contained HTML page (inline SVG charts, viewable offline).",
    )
    @click.option(
        "--md", "md_to", type=click.Path(dir_okay=False, path_type=Path), help="Write Markdown."
    )
    @click.pass_obj
    @_guarded
    def report_cmd(
        obj: dict[str, Any], run_id: int, html_to: Path | None, md_to: Path | None
    ) -> None:
        """Document one run for an audit: spec, rules, timeline, charts, quarantine, proofs."""
        if html_to is None and md_to is None:
            _fail("give --html FILE, --md FILE or both", 2)
        with _context(obj) as ctx:
            data = run_report.collect(ctx, run_id)
        for path, text in ((html_to, report_render.to_html), (md_to, report_render.to_markdown)):
            if path is not None:
                path.write_text(text(data), encoding="utf-8")
                click.echo(f"run {run_id}: report written to {path}")


_register_report()


def _register_security() -> None:
    from coordinator.security_cli import audit, purge

    main.add_command(audit)
    main.add_command(purge)


_register_security()


def _register_schema() -> None:
    from coordinator.schema_cli import schema

    main.add_command(schema)


_register_schema()
