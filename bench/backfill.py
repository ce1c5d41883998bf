"""Ferry against its floors, measured in one run on the same 1,000,000-row table.

    python bench/backfill.py [--rows 1000000] [--chunk-size 10000]

Contenders, each on a fresh copy of the same table:
  (a) one whole-table UPDATE
  (b) raw 10k-row range UPDATEs in 2 processes, no bookkeeping (the chunked floor)
  (c) Ferry, SQL path, 2 Celery worker processes (pre-images, ledger, rules, Redis progress)
  (d) raw 2-process pandas COPY loop (COPY out, transform, COPY into temp, UPDATE ... FROM)
  (e) Ferry, pandas path, 2 Celery worker processes
Ferry runs with 2 chunks in flight and no database-load bound (--db-load 0): this measures
what the engine costs, not how gently it is throttled (bench/oltp_impact.py does that).
Needs the local PostgreSQL and Redis; creates database ferry_bench and uses Redis db 3.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
import statistics
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import WEIGHT_KG as EXPR  # noqa: E402
from bench.harness import follow, fresh_database, start_workers, stop_workers  # noqa: E402

SERVER = os.environ.get("FERRY_BENCH_SERVER", "postgresql://postgres@127.0.0.1:5432/postgres")
DB = "ferry_bench"
URL = SERVER.rsplit("/", 1)[0] + "/" + DB
REDIS = os.environ.get("FERRY_BENCH_REDIS", "redis://127.0.0.1:6379/3")
QUEUE = "ferry-bench"


def transform(df: pd.DataFrame) -> pd.DataFrame:
    lb = pd.to_numeric(df["weight_lb"].str.replace(r"[^0-9.]", "", regex=True), errors="coerce")
    return pd.DataFrame({"id": df["id"], "weight_kg": (lb * 0.45359237).round(2)})


SPEC = textwrap.dedent(f"""
    import pandas as pd
    from migrations import Backfill

    def transform(df):
        lb = pd.to_numeric(df["weight_lb"].str.replace(r"[^0-9.]", "", regex=True),
                           errors="coerce")
        return pd.DataFrame({{"id": df["id"], "weight_kg": (lb * 0.45359237).round(2)}})

    def make(table, chunk):
        return (
            Backfill(table=table, key="id", reads=["weight_lb"], writes=["weight_kg"],
                     sql={{"weight_kg": {EXPR!r}}}, chunk_size=chunk),
            Backfill(table=table, key="id", reads=["weight_lb"], writes=["weight_kg"],
                     transform=transform, chunk_size=chunk),
        )
""")


def setup(rows: int) -> None:
    fresh_database(SERVER, DB)
    with psycopg.connect(URL, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE template (id bigint PRIMARY KEY, dob_text text, weight_lb text, "
            "weight_kg numeric(8,2), pad text)"
        )
        conn.execute(
            "INSERT INTO template SELECT g, '1980-01-01', (100 + g %% 150)::text || "
            "CASE WHEN g %% 3 = 0 THEN ' lbs' ELSE '.4' END, NULL, repeat('x', 80) "
            "FROM generate_series(1, %s) g",
            (rows,),
        )


def fresh(name: str) -> None:
    with psycopg.connect(URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(
            sql.SQL("CREATE TABLE {} AS SELECT * FROM template").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (id)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(name)))
        conn.execute("CHECKPOINT")


def drop(name: str) -> None:
    with psycopg.connect(URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))


def check(name: str) -> str:
    with psycopg.connect(URL) as conn:
        row = conn.execute(
            sql.SQL("SELECT md5(string_agg(weight_kg::text, ',' ORDER BY id)) FROM {}").format(
                sql.Identifier(name)
            )
        ).fetchone()
    return str(row[0]) if row else ""


def ranges(rows: int, chunk: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + chunk, rows)) for lo in range(0, rows, chunk)]


def _raw_sql_worker(table: str, work: mp.Queue) -> None:  # type: ignore[type-arg]
    with psycopg.connect(URL) as conn:
        stmt = sql.SQL("UPDATE {} SET weight_kg = " + EXPR + " WHERE id > %s AND id <= %s").format(
            sql.Identifier(table)
        )
        while (item := work.get()) is not None:
            conn.execute(stmt, item)
            conn.commit()


def _raw_pandas_worker(table: str, work: mp.Queue) -> None:  # type: ignore[type-arg]
    t = sql.Identifier(table)
    with psycopg.connect(URL) as conn:
        while (item := work.get()) is not None:
            buf = bytearray()
            with conn.cursor().copy(
                sql.SQL(
                    "COPY (SELECT id, weight_lb FROM {} WHERE id > {} AND id <= {}) TO STDOUT "
                    "(FORMAT csv)"
                ).format(t, sql.Literal(item[0]), sql.Literal(item[1]))
            ) as cp:
                for block in cp:
                    buf += block
            df = pd.read_csv(
                io.BytesIO(bytes(buf)), names=["id", "weight_lb"], dtype={"weight_lb": str}
            )
            out = transform(df)
            conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS tmp (id bigint, weight_kg numeric) "
                "ON COMMIT DELETE ROWS"
            )
            with conn.cursor().copy("COPY tmp FROM STDIN (FORMAT csv)") as cp:
                cp.write(out.to_csv(index=False, header=False))
            conn.execute(
                sql.SQL(
                    "UPDATE {} t SET weight_kg = tmp.weight_kg FROM tmp WHERE t.id = tmp.id"
                ).format(t)
            )
            conn.commit()


def raw_parallel(table: str, target, rows: int, chunk: int, procs: int) -> float:  # type: ignore[no-untyped-def]
    work: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    for r in ranges(rows, chunk):
        work.put(r)
    for _ in range(procs):
        work.put(None)
    started = time.perf_counter()
    ps = [mp.Process(target=target, args=(table, work)) for _ in range(procs)]
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    return time.perf_counter() - started


def single_update(table: str) -> float:
    with psycopg.connect(URL) as conn:
        started = time.perf_counter()
        conn.execute(sql.SQL("UPDATE {} SET weight_kg = " + EXPR).format(sql.Identifier(table)))
        conn.commit()
        return time.perf_counter() - started


def ferry_run(
    table: str, mode: str, chunk: int, workers: int, spec_dir: Path
) -> tuple[float, list[float]]:
    from coordinator import commands
    from workers.limits import Limits
    from workers.settings import Settings

    spec = spec_dir / f"bench_{table}.py"
    spec.write_text(SPEC + f"\nsql_bf, pandas_bf = make({table!r}, {chunk})\n")
    settings = Settings.from_env({}, database_url=URL, redis_url=REDIS, queue=QUEUE)
    ctx = commands.Context(settings)
    started = time.perf_counter()
    plan = commands.launch(ctx, f"{spec}:{mode}_bf", limits=Limits(db_load=None))
    assert plan.run_id is not None
    status = follow(ctx, plan.run_id)
    elapsed = time.perf_counter() - started
    with psycopg.connect(URL) as conn:
        durations = [
            r[0]
            for r in conn.execute(
                "SELECT duration_ms FROM ferry.chunks WHERE run_id = %s", (plan.run_id,)
            )
        ]
    ctx.close()
    if status != "completed":
        raise SystemExit(f"ferry run ended {status}")
    return elapsed, durations


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-size", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians are reported")
    parser.add_argument(
        "--only",
        default="abcde",
        help="contenders to run, e.g. 'de' (ratios need the floor they divide by)",
    )
    args = parser.parse_args()
    rows, chunk, n = args.rows, args.chunk_size, args.workers

    import redis

    redis.Redis.from_url(REDIS).flushdb()
    print(f"building {rows:,} rows ...", flush=True)
    setup(rows)
    spec_dir = Path(os.environ.get("TMPDIR", "/tmp")) / "ferry-bench-specs"
    spec_dir.mkdir(exist_ok=True)
    from coordinator import commands
    from workers.settings import Settings

    commands.init(commands.Context(Settings.from_env({}, database_url=URL, redis_url=REDIS)))
    procs = start_workers(
        n, {"FERRY_DATABASE_URL": URL, "FERRY_REDIS_URL": REDIS}, "bench", QUEUE, spec_dir
    )
    times: dict[str, list[float]] = {t: [] for t in "abcde"}
    sums: dict[str, str] = {}
    durations: dict[str, list[float]] = {"c": [], "e": []}
    plan: list[Contender] = [
        ("a", "one whole-table UPDATE", lambda t: single_update(t)),
        (
            "b",
            f"raw {chunk:,}-row UPDATEs, {n} processes",
            lambda t: raw_parallel(t, _raw_sql_worker, rows, chunk, n),
        ),
        ("c", f"Ferry SQL path, {n} workers", None),
        (
            "d",
            f"raw pandas COPY loop, {n} processes",
            lambda t: raw_parallel(t, _raw_pandas_worker, rows, chunk, n),
        ),
        ("e", f"Ferry pandas path, {n} workers", None),
    ]
    chosen = [entry for entry in plan if entry[0] in args.only]
    try:
        for round_no in range(1, args.repeat + 1):
            print(f"round {round_no} of {args.repeat}", flush=True)
            # every other round backwards: the machine's speed drifts within a round, and a
            # fixed order would hand the same contenders the slow end of it every time
            for tag, label, fn in chosen if round_no % 2 else chosen[::-1]:
                table = f"bench_{tag}"
                fresh(table)
                if fn is None:
                    mode = "sql" if tag == "c" else "pandas"
                    secs, chunk_ms = ferry_run(table, mode, chunk, n, spec_dir)
                    durations[tag].extend(chunk_ms)
                else:
                    secs = fn(table)
                times[tag].append(secs)
                sums[tag] = check(table)
                drop(table)  # its dead rows must not be vacuumed while the next contender runs
                print(f"  ({tag}) {label}: {secs:.2f} s, {rows / secs:,.0f} rows/s", flush=True)
    finally:
        stop_workers(procs)
    report(rows, chunk, args.repeat, chosen, times, sums, durations)


# (tag, label, the raw contender's function or None for a Ferry run)
Contender = tuple[str, str, Callable[[str], float] | None]


def report(
    rows: int,
    chunk: int,
    repeat: int,
    chosen: list[Contender],
    times: dict[str, list[float]],
    sums: dict[str, str],
    durations: dict[str, list[float]],
) -> None:
    rate = {k: rows / statistics.median(v) for k, v in times.items() if v}
    print()
    print(f"medians of {repeat} rounds, {rows:,} rows, chunks of {chunk:,}")
    print("| contender | wall s | rows/s | × (a) | × floor |")
    print("|---|---|---|---|---|")
    floors = {"a": "a", "b": "b", "c": "b", "d": "d", "e": "d"}

    def ratio(tag: str, floor: str) -> str:
        return f"{rate[tag] / rate[floor]:.2f}" if tag in rate and floor in rate else "-"

    for tag, label, _ in chosen:
        print(
            f"| ({tag}) {label} | {rows / rate[tag]:.2f} | {rate[tag]:,.0f} | "
            f"{ratio(tag, 'a')} | {ratio(tag, floors[tag])} × ({floors[tag]}) |"
        )
    print()
    for tag in durations:
        d = durations[tag]
        if d:
            print(
                f"Ferry ({tag}) chunk transaction, all rounds: p50 {statistics.median(d):.0f} ms,"
                f" p99 {pct(d, 0.99):.0f} ms, max {max(d):.0f} ms over {len(d)} chunks"
            )
    for group in ("abc", "de"):
        present = [sums[t] for t in group if t in sums]
        if len(present) > 1:
            same = len(set(present)) == 1
            print(f"results identical across ({', '.join(t for t in group if t in sums)}): {same}")
    print(
        f"targets: (c) >= 1.0x (a): {ratio('c', 'a')}; (c) >= 0.7x (b): {ratio('c', 'b')}; "
        f"(e) >= 0.85x (d): {ratio('e', 'd')}"
    )

    def rounds(tag: str, floor: str) -> str:
        if not (times[tag] and len(times[tag]) == len(times[floor])):
            return "-"
        return ", ".join(f"{f / t:.2f}" for t, f in zip(times[tag], times[floor], strict=True))

    # The machine's speed moves ±25 % within minutes: the spread of one ratio over rounds is
    # what tells a real change from noise.
    print(
        f"each round: (c)/(a) {rounds('c', 'a')}; (c)/(b) {rounds('c', 'b')}; "
        f"(e)/(d) {rounds('e', 'd')}"
    )


if __name__ == "__main__":
    main()
