"""``ferry demo``: the whole workflow on a local PostgreSQL and Redis.

It creates a ``ferry_demo`` database beside the one FERRY_DATABASE_URL names
(or on 127.0.0.1:5432), fills a messy patients table, starts real Celery
worker processes, runs one SQL-path and one pandas-path backfill, checks the
result and rolls one back. Nothing is mocked. (The embedded, serverless
variant is tracked separately.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import click
import psycopg
from psycopg import sql

from coordinator import commands, health, render
from migrations.errors import CheckFailed
from workers.settings import Settings

DEMO_DB = "ferry_demo"
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def _demo_url(base: str | None) -> tuple[str, str]:
    """(admin URL, demo URL) on the same server as ``base``."""
    from sqlalchemy.engine import make_url

    url = make_url(base or DEFAULT_SERVER)
    admin = url.set(drivername="postgresql", database="postgres")
    demo = url.set(drivername="postgresql", database=DEMO_DB)
    return (admin.render_as_string(hide_password=False), demo.render_as_string(hide_password=False))


def build_data(url: str, rows: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS demo CASCADE")
        conn.execute("DROP SCHEMA IF EXISTS ferry CASCADE")
        conn.execute("CREATE SCHEMA demo")
        conn.execute(
            """CREATE TABLE demo.patients (
                 id bigint PRIMARY KEY, name text, dob_text text, dob date,
                 weight_lb text, weight_kg numeric(8,2), updated_at timestamptz DEFAULT now())"""
        )
        conn.execute(
            sql.SQL(
                """INSERT INTO demo.patients (id, name, dob_text, weight_lb)
                SELECT g, 'patient ' || g,
                  CASE g % 5
                    WHEN 0 THEN to_char(d, 'YYYY-MM-DD') WHEN 1 THEN to_char(d, 'MM/DD/YYYY')
                    WHEN 2 THEN to_char(d, 'DD.MM.YYYY') WHEN 3 THEN to_char(d, 'YYYYMMDD')
                    ELSE CASE WHEN g % 97 = 0 THEN 'unknown' ELSE to_char(d, 'YYYY-MM-DD') END
                  END,
                  CASE WHEN g % 101 = 0 THEN NULL WHEN g % 211 = 0 THEN '9999 lb'
                       ELSE (90 + (g * 7919) % 200)::text || CASE g % 3 WHEN 0 THEN ' lbs'
                            WHEN 1 THEN '' ELSE '.5' END END
                FROM generate_series(1::bigint, {rows}) AS g,
                     LATERAL (SELECT date '1930-01-01' + ((g * 104729) % 30000)::integer
                              AS d) AS x"""
            ).format(rows=sql.Literal(rows))
        )
        conn.execute("ANALYZE demo.patients")


def start_workers(count: int, env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(count):
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "workers",
                    "worker",
                    "--concurrency",
                    "1",
                    "--loglevel",
                    "WARNING",
                    "-n",
                    f"demo{i}@%h",
                    "--without-gossip",
                    "--without-mingle",
                ],
                env=env,
                start_new_session=True,
            )
        )
    return procs


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _run(ctx: commands.Context, reference: str) -> dict[str, Any]:
    result = commands.launch(ctx, reference)
    assert result.run_id is not None
    status = render.follow(result.chunks, commands.poller(ctx, result.run_id), reference)
    h = health.health(ctx, result.run_id)
    render.health_table(h)
    if status not in ("completed", "completed_with_errors"):
        raise CheckFailed(f"demo run {result.run_id} ended {status}")
    return h


@click.command()
@click.option("--rows", default=200_000, show_default=True, type=click.IntRange(min=1))
@click.option("--workers", "worker_count", default=2, show_default=True, type=click.IntRange(1, 16))
@click.option(
    "--database-url",
    envvar="FERRY_DATABASE_URL",
    help="Server to use; the demo creates its own ferry_demo database there.",
)
@click.option("--redis-url", envvar="FERRY_REDIS_URL")
def demo(rows: int, worker_count: int, database_url: str | None, redis_url: str | None) -> None:
    """Run the whole workflow on local PostgreSQL and Redis (creates database ferry_demo)."""
    from coordinator.cli import _guarded

    _guarded(_demo)(rows, worker_count, database_url, redis_url)


def _demo(rows: int, worker_count: int, database_url: str | None, redis_url: str | None) -> None:
    admin, url = _demo_url(database_url)
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DEMO_DB,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DEMO_DB)))
    render.console.print(
        f"[bold]ferry demo[/]: {rows:,} patients in database {DEMO_DB}, "
        f"{worker_count} worker process(es), local PostgreSQL and Redis"
    )
    build_data(url, rows)
    settings = Settings.from_env(database_url=url, redis_url=redis_url, queue="ferry-demo")
    env = {
        **os.environ,
        "FERRY_DATABASE_URL": url,
        "FERRY_REDIS_URL": settings.redis_url,
        "FERRY_QUEUE": settings.queue,
    }
    ctx = commands.Context(settings)
    procs = start_workers(worker_count, env)
    try:
        commands.init(ctx)
        render.console.print("[bold]1.[/] weight lb -> kg (SQL path)")
        _run(ctx, "coordinator.demo_backfills:weight_kg")
        render.console.print("[bold]2.[/] birth dates in mixed formats -> date (pandas path)")
        h = _run(ctx, "coordinator.demo_backfills:normalize_dob")
        render.console.print(f"[bold]3.[/] rolling back run {h['run_id']}")
        commands.rollback(ctx, h["run_id"])
        status = render.follow(
            h["chunks"]["done"], commands.poller(ctx, h["run_id"]), f"rollback {h['run_id']}"
        )
        render.console.print(f"run {h['run_id']} is {status}; every dob is back to NULL")
    finally:
        stop_workers(procs)
        ctx.close()
