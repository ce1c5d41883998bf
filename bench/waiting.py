"""What a run's waiting chunks cost the worker fleet: a run of many chunks at the default limits.

    python bench/waiting.py [--rows 1000000] [--chunk-size 200] [--seconds 60]

Builds a table of ``rows`` rows, measures the CPU of 2 idle worker processes for 10 s (the
baseline), then launches a backfill of ``rows / chunk-size`` chunks at the default limits
(db load 0.15: most chunks wait for the throttle) and, for ``seconds``, counts what the
workers did: chunk tasks executed, of them throttle retries, chunks done, their database time,
and the workers' CPU (main processes and pool children), from their INFO logs and /proc.
A run's waiting must cost about one retry or two per chunk and little CPU, whatever the number
of chunks: only a window of them is on the queue (Limits.window).
Needs the local PostgreSQL and Redis; creates database ferry_waiting, flushes Redis db 4.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import WEIGHT_KG as EXPR  # noqa: E402
from bench.harness import fresh_database, start_workers, stop_workers  # noqa: E402

SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
DB = "ferry_waiting"
URL = f"postgresql://postgres@127.0.0.1:5432/{DB}"
REDIS = "redis://127.0.0.1:6379/4"
QUEUE = "ferry-waiting"


def setup(rows: int) -> None:
    fresh_database(SERVER, DB)
    with psycopg.connect(URL, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE patients (id bigint PRIMARY KEY, weight_lb text, weight_kg numeric(8,2))"
        )
        conn.execute(
            "INSERT INTO patients SELECT g, (100 + g %% 150)::text || ' lbs', NULL"
            " FROM generate_series(1, %s) g",
            (rows,),
        )
        conn.execute("VACUUM ANALYZE patients")


def cpu_seconds(groups: list[int]) -> float:
    """CPU of every process in these process groups (a worker and its pool children)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) in groups:  # pgrp
            total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-size", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    print(f"building {args.rows:,} rows ...", flush=True)
    setup(args.rows)
    redis.Redis.from_url(REDIS).flushdb()
    from coordinator import commands, control
    from workers.limits import Limits
    from workers.settings import Settings

    settings = Settings.from_env({}, database_url=URL, redis_url=REDIS, queue=QUEUE)
    commands.init(commands.Context(settings))
    spec = Path(tempfile.mkdtemp()) / "waiting_spec.py"
    spec.write_text(
        "from migrations import Backfill\n"
        f"b = Backfill(table='patients', key='id', reads=['weight_lb'], writes=['weight_kg'], "
        f"sql={{'weight_kg': {EXPR!r}}}, chunk_size={args.chunk_size})\n"
    )
    logs = Path(tempfile.mkdtemp())
    env = {"FERRY_DATABASE_URL": URL, "FERRY_REDIS_URL": REDIS}
    workers = start_workers(2, env, "waiting", QUEUE, logs, loglevel="INFO")
    groups = [w.pid for w in workers]
    ctx = commands.Context(settings)
    try:
        before = cpu_seconds(groups)
        time.sleep(10)
        idle = (cpu_seconds(groups) - before) / 10
        started, before = time.monotonic(), cpu_seconds(groups)
        plan = commands.launch(ctx, f"{spec}:b", limits=Limits())
        time.sleep(args.seconds)
        busy = cpu_seconds(groups) - before
        elapsed = time.monotonic() - started
        with psycopg.connect(URL) as conn:
            row = conn.execute(
                "SELECT count(*), coalesce(sum(duration_ms), 0) / 1000 FROM ferry.chunks"
                " WHERE run_id = %s AND status = 'done'",
                (plan.run_id,),
            ).fetchone()
        queued = redis.Redis.from_url(REDIS).llen(QUEUE)
        control.cancel(ctx, plan.run_id)
    finally:
        stop_workers(workers)
    ctx.close()
    text = "\n".join(p.read_text(errors="replace") for p in logs.glob("*.log"))
    done, db_s = int(row[0]), float(row[1])  # type: ignore[index]
    executed, retries = text.count("] received"), text.count(" retry: ")
    print(f"\n{plan.chunks:,} chunks of {args.chunk_size:,} rows, default limits, {elapsed:.0f} s")
    print("| | value |")
    print("|---|---|")
    print(f"| workers' CPU idle (baseline), cores | {idle:.3f} |")
    print(f"| workers' CPU during the run, cores | {busy / elapsed:.3f} |")
    print(f"| chunks done | {done:,} ({done / elapsed:.1f}/s) |")
    print(f"| chunk transactions, db seconds per second | {db_s / elapsed:.3f} |")
    print(f"| chunk tasks executed | {executed:,} ({executed / elapsed:.0f}/s) |")
    per_chunk = retries / max(done, 1)
    print(f"| of them throttle retries | {retries:,} ({per_chunk:.1f} per chunk done) |")
    print(f"| worker CPU per chunk done, ms | {1000 * busy / max(done, 1):.1f} |")
    print(f"| tasks on the queue at the end | {queued:,} |")


if __name__ == "__main__":
    main()
