"""``ferry demo``: the whole workflow in one command, on servers started from wheels.

By default PostgreSQL and Redis run from the ``embedded`` extra's wheels under a
state folder (``coordinator/embedded.py``); ``--external`` (or ``--database-url``)
uses running servers instead. Then: a ``ferry_demo`` database with the plan's
``patients`` full of messy synthetic data, real Celery worker processes, the
schema expand through the schema runner (the plan's ``20240315_add_patient_vitals``
plus the demo's own expand adding the typed columns), three backfills built from
``transforms`` with validation rules, ``verify`` of each run, and a summary.
Nothing is mocked: the same ledger, tasks and SQL as in production.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import click
import psycopg
from psycopg import sql
from rich.table import Table
from sqlalchemy.engine import make_url

from coordinator import commands, embedded, health, render
from coordinator import verify as verification
from coordinator.demo_data import EXPAND_MIGRATION, build_patients
from coordinator.demo_state import State
from migrations.errors import CheckFailed
from migrations.schema import SchemaRunner, load_directory
from workers.command import worker_command
from workers.db import connect as pinned_connect
from workers.limits import Limits
from workers.settings import Settings

DEMO_DB = "ferry_demo"
# The demo's backfills run at the db-load bound Ferry had by default before 0.15: nothing but
# the demo uses its embedded server, so there is no application to leave room for.
DEMO_DB_LOAD = 0.5
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
EXAMPLE_MIGRATION = (
    Path(__file__).resolve().parent.parent / "examples/migrations/20240315_add_patient_vitals.sql"
)
SERVERS = ("redis",)  # recorded processes that are servers (PostgreSQL has its own pid file)


@dataclass(frozen=True)
class Options:
    rows: int
    worker_count: int
    state: Path
    keep: bool
    flower: bool
    external: bool
    database_url: str | None
    redis_url: str | None


def _demo_url(base: str) -> tuple[str, str]:
    """(admin URL, demo database URL) on the server of ``base``."""
    url = make_url(base)
    admin = url.set(drivername="postgresql", database="postgres")
    demo = url.set(drivername="postgresql", database=DEMO_DB)
    return (admin.render_as_string(hide_password=False), demo.render_as_string(hide_password=False))


def _fresh_database(admin: str) -> None:
    """The demo owns ``ferry_demo``: every demo starts from an empty one."""
    with pinned_connect(admin, autocommit=True, connect_timeout=10) as conn:
        name = sql.Identifier(DEMO_DB)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(name))


def _start_workers(
    state: State, count: int, env: dict[str, str], flower_port: int | None
) -> list[str]:
    """Celery workers (and Flower) as their own processes, recorded for ``--down``."""
    started = []
    celery = [sys.executable, "-m", "celery", "-A", "workers"]
    for i in range(count):
        name = f"worker{i}"
        state.spawn(
            name,
            worker_command(f"demo{i}", extra=[f"--pidfile={state.run_dir / (name + '.celery')}"]),
            env,
        )
        started.append(name)
    if flower_port is not None:
        state.spawn(
            "flower",
            [
                *celery,
                "flower",
                f"--port={flower_port}",
                "--address=127.0.0.1",
                f"--basic-auth=ferry:{state.secret('flower')}",
            ],
            env,
        )
        started.append("flower")
    return started


def _migrations_dir(state: State) -> Path:
    """The plan's example migration verbatim, then the demo's expand, in a folder of its own."""
    folder = state.root / "migrations"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    shutil.copy(EXAMPLE_MIGRATION, folder / EXAMPLE_MIGRATION.name)
    (folder / "20240316_expand_patients.sql").write_text(EXPAND_MIGRATION)
    return folder


def _schema_up(ctx: commands.Context, folder: Path) -> list[str]:
    with ctx.db.connect() as conn:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.rollback()
        runner = SchemaRunner(conn, load_directory(folder), actor=ctx.settings.actor)
        steps = runner.up()
    applied = [s.name for s in steps]
    with ctx.db.transaction() as conn:
        ctx.ledger.audit(
            conn, actor=ctx.settings.actor, action="schema_up", params={"applied": applied}
        )
    return applied


def _backfill(ctx: commands.Context, name: str) -> dict[str, Any]:
    reference = f"coordinator.demo_backfills:{name}"
    result = commands.launch(ctx, reference, limits=Limits(db_load=DEMO_DB_LOAD))
    assert result.run_id is not None
    from coordinator.demo_backfills import BACKFILLS  # built from transforms: pandas

    status = render.follow(result.chunks, commands.poller(ctx, result.run_id), BACKFILLS[name])
    h = health.health(ctx, result.run_id)
    report = verification.verify(ctx, result.run_id) if status.startswith("completed") else None
    return {"name": name, "health": h, "verified": None if report is None else report["ok"]}


def _summary(results: list[dict[str, Any]], rows: int, seconds: float) -> bool:
    table = Table(title=f"ferry demo: {rows:,} patients")
    for column in ("backfill", "run", "status", "rows", "written", "chunks", "quarantined"):
        table.add_column(column, justify="left" if column in ("backfill", "status") else "right")
    table.add_column("verify")
    for r in results:
        h = r["health"]
        verified = {True: "[green]ok[/]", False: "[red]FAILED[/]", None: "-"}[r["verified"]]
        table.add_row(
            r["name"],
            str(h["run_id"]),
            h["run_status"],
            f"{h['rows']['processed']:,}",
            f"{h['rows']['written']:,}",
            f"{h['chunks']['done']:,}/{h['chunks']['total']:,}",
            f"{h['rows']['quarantined']:,}",
            verified,
        )
    render.console.print(table)
    ok = all(r["verified"] is True for r in results)
    totals = {
        "rows": sum(r["health"]["rows"]["processed"] for r in results),
        "written": sum(r["health"]["rows"]["written"] for r in results),
        "chunks": sum(r["health"]["chunks"]["done"] for r in results),
        "quarantined": sum(r["health"]["rows"]["quarantined"] for r in results),
    }
    click.echo(  # one unwrapped line that scripts (and the acceptance test) can read
        f"summary: patients={rows} runs={len(results)} rows={totals['rows']} "
        f"written={totals['written']} chunks={totals['chunks']} "
        f"quarantined={totals['quarantined']} verification={'ok' if ok else 'FAILED'} "
        f"duration={seconds:.1f}s"
    )
    return ok


def _servers(opts: Options, state: State) -> tuple[str, str, str]:
    """(admin database URL, Redis URL, queue) of the servers the demo uses."""
    if opts.external or opts.database_url or opts.redis_url:
        base = opts.database_url or os.environ.get("FERRY_DATABASE_URL") or DEFAULT_SERVER
        redis_url = opts.redis_url or Settings.from_env().redis_url
        shown = [make_url(u).render_as_string(hide_password=True) for u in (base, redis_url)]
        render.console.print(f"servers: external PostgreSQL {shown[0]}, Redis {shown[1]}")
        return _demo_url(base)[0], redis_url, "ferry-demo"
    began = time.monotonic()
    servers = embedded.up(state)
    render.console.print(
        f"servers: PostgreSQL on 127.0.0.1:{servers.postgres_port}, "
        f"Redis on 127.0.0.1:{servers.redis_port} "
        f"({'reused' if servers.reused else 'started'} in {time.monotonic() - began:.1f}s, "
        f"state {state.root})"
    )
    return servers.database_url, servers.redis_url, "ferry"


def run_demo(opts: Options) -> None:
    state = State(opts.state)
    with state.locked():
        _run_demo(opts, state)


def _run_demo(opts: Options, state: State) -> None:
    embedded_mode = not (opts.external or opts.database_url or opts.redis_url)
    began = time.monotonic()
    for name in state.recorded():  # workers of an earlier --keep: replaced by this demo's
        if name not in SERVERS:
            state.stop(name)
    started: list[str] = []
    keep_up = False
    ctx: commands.Context | None = None

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        state.prepare()
        admin, redis_url, queue = _servers(opts, state)
        url = _demo_url(admin)[1]
        _fresh_database(admin)
        settings = Settings.from_env(database_url=url, redis_url=redis_url, queue=queue)
        env = {
            **os.environ,
            "FERRY_DATABASE_URL": url,
            "FERRY_REDIS_URL": redis_url,
            "FERRY_QUEUE": queue,
        }
        flower_port = embedded.free_port() if opts.flower else None
        started = _start_workers(state, opts.worker_count, env, flower_port)
        render.console.print(f"workers: {opts.worker_count} Celery worker process(es)")
        if flower_port is not None:
            click.echo(
                f"flower: http://127.0.0.1:{flower_port} (user ferry, password "
                f"{state.secret('flower')})"
            )
        t = time.monotonic()
        build_patients(url, opts.rows)
        render.console.print(f"data: {opts.rows:,} patients in {time.monotonic() - t:.1f}s")
        ctx = commands.Context(settings)
        commands.init(ctx)
        with ctx.db.transaction() as conn:
            ctx.ledger.audit(
                conn,
                actor=settings.actor,
                action="demo",
                params={"rows": opts.rows, "workers": opts.worker_count},
            )
        applied = _schema_up(ctx, _migrations_dir(state))
        render.console.print(f"schema: applied {', '.join(applied) or 'nothing'}")
        from coordinator.demo_backfills import BACKFILLS

        results = [_backfill(ctx, name) for name in BACKFILLS]
        ok = _summary(results, opts.rows, time.monotonic() - began)
        if opts.keep:
            keep_up = True
            render.console.print("services left up; use them with every ferry command:")
            click.echo(
                f"export FERRY_DATABASE_URL={url} FERRY_REDIS_URL={redis_url}"
                + ("" if queue == "ferry" else f" FERRY_QUEUE={queue}")
            )
            click.echo(f"stop them with: ferry demo --down --state {state.root}")
        if not ok:
            raise CheckFailed("a demo run did not complete and verify")
    except KeyboardInterrupt:
        render.err.print("interrupted: stopping workers and servers")
        keep_up = False
        raise SystemExit(130) from None
    finally:
        # a second Ctrl-C must not leave half of the processes behind (each stop is bounded)
        interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if ctx is not None:
                ctx.close()
            if not keep_up:
                for name in started:
                    state.stop(name)
                if embedded_mode:
                    embedded.down(state)
        finally:
            signal.signal(signal.SIGINT, interrupt)
            signal.signal(signal.SIGTERM, previous)


@click.command()
@click.option(
    "--rows",
    default=1_000_000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Patients to generate.",
)
@click.option(
    "--workers",
    "worker_count",
    default=2,
    show_default=True,
    type=click.IntRange(1, 16),
    help="Celery worker processes.",
)
@click.option(
    "--state",
    "state_dir",
    default=".ferry",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder holding the embedded servers' data, pid files and logs.",
)
@click.option("--keep", is_flag=True, help="Leave servers and workers up; print their env vars.")
@click.option("--down", is_flag=True, help="Stop what an earlier --keep left running, and exit.")
@click.option("--flower", is_flag=True, help="Also start Flower (basic auth, printed).")
@click.option(
    "--external",
    is_flag=True,
    help="Use the servers FERRY_DATABASE_URL and FERRY_REDIS_URL name (or 127.0.0.1) "
    "instead of embedded ones; the demo creates its own database ferry_demo.",
)
@click.option("--database-url", metavar="URL", help="External PostgreSQL (implies --external).")
@click.option("--redis-url", metavar="URL", help="External Redis (implies --external).")
def demo(
    rows: int,
    worker_count: int,
    state_dir: Path,
    keep: bool,
    down: bool,
    flower: bool,
    external: bool,
    database_url: str | None,
    redis_url: str | None,
) -> None:
    """Run the whole workflow on PostgreSQL and Redis started from wheels (or --external).

    \b
    Examples:
      ferry demo                       # 1,000,000 patients, 2 workers, servers under .ferry/
      ferry demo --rows 20000 --keep   # then: eval the printed export line, ferry status 1
      ferry demo --down                # stop what --keep left running
      ferry demo --external --rows 50000
    """
    from coordinator.cli import _guarded

    if down:
        state = State(state_dir)
        with state.locked():
            stopped = embedded.down(state)
        click.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
        return
    opts = Options(rows, worker_count, state_dir, keep, flower, external, database_url, redis_url)
    _guarded(run_demo)(opts)
