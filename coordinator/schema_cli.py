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
from coordinator.schema_steps import CoordinatorBackfills
from migrations.errors import FerryError
from migrations.schema import SchemaRunner, Step, lint, load_directory, report
from migrations.schema.python_step import parse_python_step
from migrations.schema.source import MigrationFile, parse_migration
from workers.settings import Settings

DEFAULT_DIR = "migrations/versions"
EPILOG = """\b
Examples:
  ferry schema status
  ferry schema plan --json
  ferry schema lint migrations/versions/20240315_add_patient_vitals.sql
  ferry schema up --to 20240315
  ferry schema up --no-wait-backfill
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
    ctx: commands.Context,
    conn: psycopg.Connection[Any],
    obj: dict[str, Any],
    wait: bool,
    **backfill_options: bool,
) -> SchemaRunner:
    return SchemaRunner(
        conn,
        _migrations(obj),
        actor=ctx.settings.actor,
        wait=wait,
        wait_seconds=obj["wait_seconds"],
        on_wait=lambda: click.echo("waiting for another schema migrator to finish...", err=True),
        backfills=CoordinatorBackfills(ctx),
        **backfill_options,
    )


def _steps(steps: list[Step]) -> list[dict[str, Any]]:
    return [
        {
            "version": s.version,
            "name": s.name,
            "status": s.status,
            "seconds": s.seconds,
            "run_id": s.run_id,
            "message": s.message,
            "blocked": s.blocked,
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
        if entry["kind"] == "backfill":
            mode = "backfill run"
        click.echo(
            f"{entry['version']} {entry['name']} [{entry['category']}, {mode}]"
            f"{'' if entry['rollback'] else ' (no rollback section)'}"
        )
        if entry["kind"] == "backfill":
            click.echo(f"  launches, follows and verifies backfill {entry['backfill']}")
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
            files.append(parse_python_step(path) if path.suffix == ".py" else parse_migration(path))
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
@click.option(
    "--wait-backfill/--no-wait-backfill",
    default=True,
    show_default=True,
    help="Follow a backfill step's run to its end and verify it, or leave it in_progress "
    "after launching (a later `up` checks the run and completes the version).",
)
@click.option(
    "--accept-quarantine",
    is_flag=True,
    help="Let a verified run that quarantined rows (completed_with_errors) complete its version.",
)
@_wait_option
@click.pass_obj
@_guarded
def up(
    obj: dict[str, Any],
    to: int | None,
    allow_destructive: bool,
    wait_backfill: bool,
    accept_quarantine: bool,
    wait: bool,
) -> None:
    """Apply pending migrations in version order, each in its own transaction.

    A Python step (VERSION_name.py declaring `backfill = Backfill(...)`) is launched,
    followed and verified; its version completes when the run completed and verify passed.
    """
    with _session(obj) as (ctx, conn):
        runner = _runner(
            ctx,
            conn,
            obj,
            wait,
            wait_backfill=wait_backfill,
            accept_quarantine=accept_quarantine,
        )
        params = {
            "dir": obj["dir"],
            "to": to,
            "allow_destructive": allow_destructive,
            "wait_backfill": wait_backfill,
            "accept_quarantine": accept_quarantine,
        }
        steps = _audited(
            ctx,
            "schema_up",
            params,
            lambda: _steps(runner.up(to=to, allow_destructive=allow_destructive)),
        )
    for step in steps:
        label = f"{step['version']} {step['name']}"
        if step["status"] == "in_progress":
            click.echo(
                f"{label} is in_progress: {step['message']}"
                if step["message"]
                else f"applied {label} in {step['seconds']:.2f}s; it waits for its backfill: "
                "`ferry launch` it, `ferry verify` the run, then `ferry schema up` again"
            )
        elif step["run_id"] is not None:
            click.echo(f"completed {label} (backfill run {step['run_id']} verified)")
        else:
            click.echo(f"applied {label} in {step['seconds']:.2f}s")
    if not steps:
        click.echo("nothing to apply")
    if any(step["blocked"] for step in steps):
        raise SystemExit(1)


@schema.command()
@click.option("--to", "to", type=int, metavar="V", help="Roll back every version newer than V.")
@click.option(
    "--rollback-backfills/--no-rollback-backfills",
    default=True,
    show_default=True,
    help="Roll back the runs of a version's backfill (pre-images) before undoing it, or stop "
    "and name the run to roll back.",
)
@_wait_option
@click.pass_obj
@_guarded
def down(obj: dict[str, Any], to: int | None, rollback_backfills: bool, wait: bool) -> None:
    """Run rollback sections, newest first (default: the newest applied version only).

    The runs of an expand's backfill or of a Python step are rolled back first (their
    pre-images restored, waiting for it), so `down --to 0` undoes a whole change.
    """
    with _session(obj) as (ctx, conn):
        runner = _runner(ctx, conn, obj, wait)
        params = {"dir": obj["dir"], "to": to, "rollback_backfills": rollback_backfills}
        steps = _audited(
            ctx,
            "schema_down",
            params,
            lambda: _steps(runner.down(to=to, rollback_backfills=rollback_backfills)),
        )
    for step in steps:
        undone = f" (backfill run {step['run_id']} rolled back)" if step["run_id"] else ""
        click.echo(
            f"rolled back {step['version']} {step['name']}{undone} in {step['seconds']:.2f}s"
        )
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
