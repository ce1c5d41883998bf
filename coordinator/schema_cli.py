"""``ferry schema ...``: versioned schema migrations (status, up, down, plan, lint, repair).

A thin layer over ``migrations.schema``: it builds the connection and settings the
runner needs, renders results and writes one audit row per up/down/repair, whether it
succeeded or not.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import psycopg

from coordinator import commands
from migrations.errors import FerryError
from migrations.schema import SchemaRunner, Step, lint, load_directory, report
from migrations.schema.source import MigrationFile, parse_migration
from workers.settings import Settings

DEFAULT_DIR = "migrations/versions"
EPILOG = """\b
Examples:
  ferry schema status
  ferry schema plan --json
  ferry schema lint migrations/versions/20240315_add_patient_vitals.sql
  ferry schema up --to 20240315
  ferry schema down --to 0
"""


def _guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The main CLI's error mapping (imported late: ``coordinator.cli`` registers this group)."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from coordinator.cli import _guarded as guard

        return guard(fn)(*args, **kwargs)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


@contextmanager
def _session(obj: dict[str, Any]) -> Iterator[tuple[commands.Context, psycopg.Connection[Any]]]:
    ctx = commands.Context(Settings.from_env(**obj["settings"]))
    try:
        with ctx.db.connect() as conn:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.rollback()
            yield ctx, conn
    finally:
        ctx.close()


def _audit(ctx: commands.Context, action: str, params: dict[str, Any]) -> None:
    with ctx.db.transaction() as conn:
        ctx.ledger.audit(conn, actor=ctx.settings.actor, action=action, params=params)


def _audited(
    ctx: commands.Context, action: str, params: dict[str, Any], work: Callable[[], Any]
) -> Any:
    """Run ``work`` and record it, with the error when it failed."""
    try:
        result = work()
    except FerryError as exc:
        _audit(ctx, action, {**params, "error": str(exc)})
        raise
    _audit(ctx, action, {**params, "result": result})
    return result


def _migrations(obj: dict[str, Any]) -> list[MigrationFile]:
    return load_directory(Path(obj["dir"]))


def _runner(
    ctx: commands.Context, conn: psycopg.Connection[Any], obj: dict[str, Any], wait: bool
) -> SchemaRunner:
    return SchemaRunner(
        conn,
        _migrations(obj),
        actor=ctx.settings.actor,
        wait=wait,
        wait_seconds=obj["wait_seconds"],
        on_wait=lambda: click.echo("waiting for another schema migrator to finish...", err=True),
    )


def _steps(steps: list[Step]) -> list[dict[str, Any]]:
    return [
        {
            "version": s.version,
            "name": s.name,
            "status": s.status,
            "seconds": s.seconds,
            "run_id": s.run_id,
        }
        for s in steps
    ]


@click.group(epilog=EPILOG)
@click.option(
    "--dir",
    "directory",
    envvar="FERRY_MIGRATIONS",
    show_envvar=True,
    default=DEFAULT_DIR,
    show_default=True,
    help="Folder of versioned migration files (VERSION_name.sql).",
)
@click.option(
    "--wait-seconds",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="How long --wait waits for another migrator.",
)
@click.pass_context
def schema(click_ctx: click.Context, directory: str, wait_seconds: float) -> None:
    """Versioned schema migrations: status, up, down, plan, lint, repair."""
    click_ctx.obj = {
        "settings": dict(click_ctx.obj or {}),
        "dir": directory,
        "wait_seconds": wait_seconds,
    }


_wait_option = click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Wait for another migrator to finish, or exit at once.",
)


@schema.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array.")
@click.pass_obj
@_guarded
def status(obj: dict[str, Any], as_json: bool) -> None:
    """Every version: its status in the ledger and anything wrong with its file."""
    migrations = _migrations(obj)
    with _session(obj) as (_, conn):
        rows = report.status(conn, migrations)
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo(f"no migrations in {obj['dir']}")
    for row in rows:
        notes = f"  ({'; '.join(row['notes'])})" if row["notes"] else ""
        when = f"  {row['applied_at']} by {row['applied_by']}" if row["applied_at"] else ""
        click.echo(
            f"{row['version']:>14}  {row['status']:<11} {row['category']:<14} "
            f"{row['name']}{when}{notes}"
        )
        if row["error"]:
            click.echo(f"{'':>16}error: {row['error']}")


@schema.command()
@click.option("--to", "to", type=int, metavar="V", help="Stop after version V.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array.")
@click.pass_obj
@_guarded
def plan(obj: dict[str, Any], to: int | None, as_json: bool) -> None:
    """What `up` would apply: statements, their type, transaction and lint findings."""
    migrations = _migrations(obj)
    with _session(obj) as (_, conn):
        entries = report.plan(conn, migrations, to=to)
    if as_json:
        click.echo(json.dumps(entries))
        return
    if not entries:
        click.echo("nothing to apply")
    for entry in entries:
        mode = "one transaction" if entry["transactional"] else "non-transactional"
        click.echo(
            f"{entry['version']} {entry['name']} [{entry['category']}, {mode}]"
            f"{'' if entry['rollback'] else ' (no rollback section)'}"
        )
        for st in entry["statements"]:
            alone = ", alone" if st["own_transaction"] else ""
            click.echo(
                f"  line {st['line']:>4}  {st['phase']:<12} {st['category']:<14}"
                f"{st['sql'][:70]}{alone}"
            )
        for finding in entry["findings"]:
            click.echo(f"  {finding['level']}: line {finding['line']}: {finding['message']}")


@schema.command(name="lint")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array of findings.")
@click.pass_obj
@_guarded
def lint_cmd(obj: dict[str, Any], paths: tuple[Path, ...], as_json: bool) -> None:
    """Flag long or strong locks with the safe alternative; exit 1 on an error-level one.

    PATHS are files or folders (default: the migrations folder).
    """
    files: list[MigrationFile] = []
    for path in paths or (Path(obj["dir"]),):
        if path.is_dir():
            files.extend(load_directory(path))
        elif path.is_file():
            files.append(parse_migration(path))
        else:
            raise click.BadParameter(f"{path} does not exist", param_hint="PATHS")
    findings = [f for migration in files for f in lint(migration)]
    if as_json:
        click.echo(json.dumps([f.as_dict() for f in findings]))
    else:
        for f in findings:
            click.echo(f"{f.file}:{f.line}: {f.level}: {f.rule}: {f.message}")
            click.echo(f"    {f.statement}")
            click.echo(f"    safe: {f.safe}")
        errors = sum(f.level == "error" for f in findings)
        click.echo(f"{len(files)} file(s), {errors} error(s), {len(findings) - errors} warning(s)")
    if any(f.level == "error" for f in findings):
        raise SystemExit(1)


@schema.command()
@click.option("--to", "to", type=int, metavar="V", help="Apply up to and including version V.")
@click.option("--allow-destructive", is_flag=True, help="Apply drops, renames, deletes too.")
@_wait_option
@click.pass_obj
@_guarded
def up(obj: dict[str, Any], to: int | None, allow_destructive: bool, wait: bool) -> None:
    """Apply pending migrations in version order, each in its own transaction."""
    with _session(obj) as (ctx, conn):
        runner = _runner(ctx, conn, obj, wait)
        params = {"dir": obj["dir"], "to": to, "allow_destructive": allow_destructive}
        steps = _audited(
            ctx,
            "schema_up",
            params,
            lambda: _steps(runner.up(to=to, allow_destructive=allow_destructive)),
        )
    for step in steps:
        if step["status"] == "in_progress":
            click.echo(
                f"applied {step['version']} {step['name']} in {step['seconds']:.2f}s; it waits "
                "for its backfill: `ferry launch` it, `ferry verify` the run, then "
                "`ferry schema up` again"
            )
        elif step["run_id"] is not None:
            click.echo(
                f"completed {step['version']} {step['name']} (backfill run {step['run_id']} "
                "verified)"
            )
        else:
            click.echo(f"applied {step['version']} {step['name']} in {step['seconds']:.2f}s")
    if not steps:
        click.echo("nothing to apply")


@schema.command()
@click.option("--to", "to", type=int, metavar="V", help="Roll back every version newer than V.")
@_wait_option
@click.pass_obj
@_guarded
def down(obj: dict[str, Any], to: int | None, wait: bool) -> None:
    """Run rollback sections, newest first (default: the newest applied version only)."""
    with _session(obj) as (ctx, conn):
        runner = _runner(ctx, conn, obj, wait)
        steps = _audited(
            ctx, "schema_down", {"dir": obj["dir"], "to": to}, lambda: _steps(runner.down(to=to))
        )
    for step in steps:
        click.echo(f"rolled back {step['version']} {step['name']} in {step['seconds']:.2f}s")
    if not steps:
        click.echo("nothing to roll back")


@schema.command()
@_wait_option
@click.pass_obj
@_guarded
def repair(obj: dict[str, Any], wait: bool) -> None:
    """Accept edited files' checksums and forget failed or interrupted versions."""
    with _session(obj) as (ctx, conn):
        runner = _runner(ctx, conn, obj, wait)
        result = _audited(ctx, "schema_repair", {"dir": obj["dir"]}, runner.repair)
    click.echo(
        f"checksums accepted: {', '.join(map(str, result['realigned'])) or 'none'}; "
        f"versions forgotten: {', '.join(map(str, result['forgotten'])) or 'none'}"
    )
