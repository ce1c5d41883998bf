"""What a backfill costs the application: OLTP latency alone, under one UPDATE, under Ferry.

    python bench/oltp_impact.py [--rows 1000000] [--window 10] [--db-load 1 --db-load 0 ...]

A pgbench-style load (4 client processes, each a point UPDATE then a point SELECT by random
key, autocommit) runs alone, then while one whole-table UPDATE rewrites the table, then while
Ferry backfills the same column with 2 worker processes and its default limits (and once
more for each ``--db-load`` given, 0 meaning no database-load bound). Each prints
transactions/s and p50/p99/max latency, measured in this one run on the same table; the load
alone is measured before and after the rest, and the ratios are to both windows together.
Needs the local PostgreSQL and Redis; creates database ferry_oltp, flushes Redis db 2.
"""

from __future__ import annotations

import argparse
import bisect
import multiprocessing as mp
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import WEIGHT_KG as EXPR  # noqa: E402
from bench.harness import follow, fresh_database, start_workers, stop_workers  # noqa: E402

SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
DB = "ferry_oltp"
URL = f"postgresql://postgres@127.0.0.1:5432/{DB}"
REDIS = "redis://127.0.0.1:6379/2"
QUEUE = "ferry-oltp"
CLIENTS = 4


def setup(rows: int) -> None:
    fresh_database(SERVER, DB)
    with psycopg.connect(URL, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE patients (id bigint PRIMARY KEY, dob_text text, weight_lb text, "
            "weight_kg numeric(8,2), visits integer NOT NULL DEFAULT 0, pad text)"
        )
        conn.execute(
            "INSERT INTO patients SELECT g, '1980-01-01', (100 + g %% 150)::text || ' lbs',"
            " NULL, 0, repeat('x', 80) FROM generate_series(1, %s) g",
            (rows,),
        )
        conn.execute("VACUUM ANALYZE patients")
        conn.execute("CHECKPOINT")  # as reset ends: every contender starts just after one


def reset() -> None:
    """The table as ``setup`` left it, in content and in size.

    VACUUM FULL, not VACUUM: a plain vacuum leaves the table and its index at the size the
    updates grew them to (here past shared_buffers), so the next contender's load would read
    colder pages than the load measured alone did, and the difference would be charged to it.
    """
    with psycopg.connect(URL, autocommit=True) as conn:
        conn.execute("UPDATE patients SET weight_kg = NULL")
        conn.execute("VACUUM (FULL, ANALYZE) patients")
        conn.execute("CHECKPOINT")


def _client(seed: int, rows: int, stop: mp.Event, out: mp.Queue) -> None:  # type: ignore[type-arg]
    """Records (wall-clock start, ms) of each transaction: the start places it against chunks."""
    rng = random.Random(seed)
    samples = []
    with psycopg.connect(URL, autocommit=True) as conn:
        while not stop.is_set():
            key = rng.randint(1, rows)
            at = time.time()
            started = time.perf_counter()
            conn.execute("UPDATE patients SET visits = visits + 1 WHERE id = %s", (key,))
            conn.execute("SELECT * FROM patients WHERE id = %s", (key,)).fetchone()
            samples.append((at, (time.perf_counter() - started) * 1000))
    out.put(samples)


def _figures(latencies: list[float], seconds: float) -> dict[str, float]:
    latencies = sorted(latencies)
    if not latencies:
        return {"tps": 0.0, "p50": 0.0, "p99": 0.0, "max": 0.0}
    return {
        "tps": len(latencies) / seconds,
        "p50": statistics.median(latencies),
        "p99": latencies[int(0.99 * (len(latencies) - 1))],
        "max": latencies[-1],
    }


Samples = list[tuple[float, float]]


def measure(rows: int, during: Callable[[], None]) -> tuple[dict[str, float], float, Samples]:
    """Run the load while ``during`` runs: the load's figures, during's seconds, the samples."""
    stop = mp.Event()
    out: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    clients = [mp.Process(target=_client, args=(i, rows, stop, out)) for i in range(CLIENTS)]
    for c in clients:
        c.start()
    time.sleep(1.0)  # connections up, caches warm
    started = time.perf_counter()
    during()
    elapsed = time.perf_counter() - started
    stop.set()
    samples = [x for _ in clients for x in out.get()]
    for c in clients:
        c.join()
    # the whole load, including its warm-up second
    return _figures([ms for _, ms in samples], elapsed + 1.0), elapsed, samples


def split_by_chunks(samples: Samples) -> dict[str, tuple[dict[str, float], float]]:
    """The Ferry run's load split by whether a chunk transaction ran while it ran.

    Tells the chunks' own cost (CPU and WAL while one runs) from what the run costs between
    them (workers waiting their turn, the coordinator following the run).
    """
    with psycopg.connect(URL) as conn:
        spans = conn.execute(
            "SELECT extract(epoch FROM started_at)::float8, extract(epoch FROM finished_at)::float8"
            " FROM ferry.chunks WHERE run_id = (SELECT max(id) FROM ferry.runs)"
            " AND started_at IS NOT NULL AND finished_at IS NOT NULL ORDER BY 1"
        ).fetchall()
    merged: list[list[float]] = []  # chunks in flight together count once
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    starts = [a for a, _ in merged]
    inside: list[float] = []
    outside: list[float] = []
    for at, ms in samples:
        i = bisect.bisect_right(starts, at + ms / 1000) - 1  # the last span begun before its end
        (inside if i >= 0 and merged[i][1] >= at else outside).append(ms)
    busy = sum(b - a for a, b in merged)
    first, last = min(at for at, _ in samples), max(at for at, _ in samples)
    idle = max(last - first - busy, 1e-9)
    return {
        "while a chunk ran": (_figures(inside, max(busy, 1e-9)), busy),
        "between chunks": (_figures(outside, idle), idle),
    }


def single_update() -> None:
    with psycopg.connect(URL, autocommit=True) as conn:
        conn.execute("UPDATE patients SET weight_kg = " + EXPR)


def ferry_backfill(spec: Path, db_load: float | None = None) -> Callable[[], None]:
    def run() -> None:
        from coordinator import commands
        from workers.limits import Limits
        from workers.settings import Settings

        ctx = commands.Context(
            Settings.from_env({}, database_url=URL, redis_url=REDIS, queue=QUEUE)
        )
        limits = Limits() if db_load is None else Limits(db_load=db_load or None)
        plan = commands.launch(ctx, f"{spec}:b", limits=limits)
        assert plan.run_id is not None
        status = follow(ctx, plan.run_id)
        ctx.close()
        if status != "completed":
            raise SystemExit(f"ferry run ended {status}")

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument(
        "--db-load", type=float, action="append", default=[], help="also run Ferry with this"
    )
    args = parser.parse_args()
    print(f"building {args.rows:,} rows ...", flush=True)
    setup(args.rows)
    redis.Redis.from_url(REDIS).flushdb()
    from coordinator import commands
    from workers.settings import Settings

    commands.init(commands.Context(Settings.from_env({}, database_url=URL, redis_url=REDIS)))
    spec = Path(tempfile.mkdtemp()) / "oltp_spec.py"
    spec.write_text(
        "from migrations import Backfill\n"
        f"b = Backfill(table='patients', key='id', reads=['weight_lb'], "
        f"writes=['weight_kg'], sql={{'weight_kg': {EXPR!r}}})\n"
    )
    results: dict[str, tuple[dict[str, float], float, Samples]] = {}
    results["alone"] = measure(args.rows, lambda: time.sleep(args.window))
    print("  alone", flush=True)
    results["one UPDATE"] = measure(args.rows, single_update)
    print("  one UPDATE", flush=True)
    reset()
    workers = start_workers(2, {"FERRY_DATABASE_URL": URL, "FERRY_REDIS_URL": REDIS}, "oltp", QUEUE)
    try:
        results["Ferry, default limits"] = measure(args.rows, ferry_backfill(spec))
        splits = {"Ferry, default limits": split_by_chunks(results["Ferry, default limits"][2])}
        print("  Ferry", flush=True)
        for load in args.db_load:
            reset()
            name = f"Ferry, db load {load:g}" if load else "Ferry, no db-load bound"
            results[name] = measure(args.rows, ferry_backfill(spec, load))
            splits[name] = split_by_chunks(results[name][2])
            print(f"  {name}", flush=True)
    finally:
        stop_workers(workers)
    # The machine's own speed drifts by a quarter within minutes: the load alone is measured
    # again after Ferry, on the table reset the same way, and the ratios are taken against
    # both windows together, so a fast or slow first window does not decide them.
    reset()
    results["alone, after"] = measure(args.rows, lambda: time.sleep(args.window))
    print("  alone, after", flush=True)
    pooled = results["alone"][2] + results["alone, after"][2]
    base = _figures([ms for _, ms in pooled], 2 * (args.window + 1.0))
    results["alone, both windows"] = (base, 0.0, pooled)
    print("\n(2 cores shared by PostgreSQL, the load and the workers)")
    print("| during | tps | p50 ms | p99 ms | max ms | tps vs alone | p99 vs alone | writer s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (r, secs, _) in results.items():
        print(
            f"| {name} | {r['tps']:,.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['max']:.0f} | "
            f"{r['tps'] / base['tps']:.2f} | {r['p99'] / base['p99']:.2f} | "
            f"{'-' if name.startswith('alone') else f'{secs:.1f}'} |"
        )
    print("\nEach Ferry run's load, by whether a chunk transaction overlapped it:")
    print("| run | load | tps | p50 ms | p99 ms | max ms | tps vs alone | p99 vs alone | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run, split in splits.items():
        for name, (r, secs) in split.items():
            print(
                f"| {run} | {name} | {r['tps']:,.0f} | {r['p50']:.1f} | {r['p99']:.1f} | "
                f"{r['max']:.0f} | {r['tps'] / base['tps']:.2f} | {r['p99'] / base['p99']:.2f} | "
                f"{secs:.1f} |"
            )
    f = results["Ferry, default limits"][0]
    checks = {
        "p99 <= 2x alone": f["p99"] <= 2 * base["p99"],
        "max <= 250 ms": f["max"] <= 250,
        "tps >= 70% of alone": f["tps"] >= 0.7 * base["tps"],
    }
    print(
        "targets under Ferry: "
        + "; ".join(f"{k}: {'PASS' if v else 'MISS'}" for k, v in checks.items())
    )


if __name__ == "__main__":
    main()
