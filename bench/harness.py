"""What every benchmark here needs: a database of its own, real workers, a run followed to its end.

Benchmarks import this after putting the repository root on ``sys.path`` (they are run as
scripts: ``python bench/NAME.py``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from workers.command import worker_command

ROOT = Path(__file__).resolve().parent.parent
# The benches' transformation, as the floors measured it (../shared/floors.md): pounds parsed
# out of free text, to kilograms.
WEIGHT_KG = (
    "round(nullif(regexp_replace(weight_lb, '[^0-9.]', '', 'g'), '')::numeric * 0.45359237, 2)"
)


def fresh_database(server: str, name: str) -> str:
    """Drop and create database ``name`` on ``server``; its URL."""
    db = sql.Identifier(name)
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(db))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(db))
    return server.rsplit("/", 1)[0] + "/" + name


def start_workers(
    count: int,
    env: dict[str, str],
    prefix: str,
    queue: str,
    log_dir: Path | None = None,
    loglevel: str = "WARNING",
) -> list[subprocess.Popen[bytes]]:
    """``count`` worker processes of one pool child each, ready when this returns."""
    full_env = {**os.environ, **env, "FERRY_QUEUE": queue, "PYTHONPATH": str(ROOT)}
    procs = []
    for i in range(count):
        out: Any = subprocess.DEVNULL
        if log_dir is not None:
            out = open(log_dir / f"{prefix}{i}.log", "wb")  # noqa: SIM115 - the child owns it
        procs.append(
            subprocess.Popen(
                worker_command(f"{prefix}{i}", queue, loglevel=loglevel),
                env=full_env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    time.sleep(4)  # broker connection and pool start; the benches time runs, not start-up
    return procs


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        proc.wait()


def follow(ctx: Any, run_id: int) -> str:
    """Wait for a run to end; its final status.

    What ``ferry launch --wait`` reads (the ledger's counts, a sweep) is read as often as it
    reads it, every half second; in between only the run's own row is looked at, so that the
    end is noticed within 50 ms without timing twenty count queries a second.
    """
    from coordinator import commands

    poll = commands.poller(ctx, run_id)
    last = 0.0
    while True:
        now = time.monotonic()
        if now - last >= 0.5:
            last = now
            _, _, status, done = poll()
            if done:
                return str(status)
        run = ctx.ledger.get_run(run_id)
        if run.is_final:
            return str(run.status)
        time.sleep(0.05)
