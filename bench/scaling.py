"""How Ferry scales across worker hosts, and what planning costs the coordinator.

    python bench/scaling.py [--rows 2000000] [--chunk-size 10000] [--hosts 1,2,3]
                            [--plan-rows 1000000,10000000]

Part 1, scaling: the same backfill (a CPU-heavy pandas transform normalizing four text columns:
accents and spacing of names, phone numbers in three formats, birth dates in three formats
parsed per value, e-mail case) on a fresh copy of the same table, run by one worker process on
each of 1, 2, 3 "hosts": network namespaces on a private bridge, reaching PostgreSQL and Redis
through the forwarders of tests/cluster/netns.py (the same harness the cluster tests use).
Prints rows/s, speed-up, efficiency and the marginal gain of each added host, and the
per-chunk costs the README's sizing estimate uses.

Part 2, planning: ``ferry plan`` (a real subprocess) over key indexes of 1M and 10M entries:
its peak resident memory (ru_maxrss from wait4) and wall time, next to the interpreter's own
floor. A 100M-row table is not built here: the ledger rows of a 100M-row plan are computed
from the chunk size (one row per chunk) and their size from the ledger's measured row width.

Needs root (namespaces), iproute2, socat, and the local PostgreSQL and Redis; creates database
ferry_scaling_<pid> (dropped at the end) and claims a free Redis database the way the tests do.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import redis
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.cluster.netns import Cluster, HostWorkers, missing_requirements  # noqa: E402

SERVER = os.environ.get("FERRY_BENCH_SERVER", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("FERRY_BENCH_REDIS", "redis://127.0.0.1:6379")
CLAIM = "ferry-test:session"  # the key tests/conftest.py claims a Redis database with

SPEC = textwrap.dedent("""
    import pandas as pd
    from migrations import Backfill

    def normalize(df):
        out = pd.DataFrame({"id": df["id"]})
        name = (df["name"].str.normalize("NFKD").str.encode("ascii", "ignore")
                .str.decode("ascii"))
        out["name_norm"] = name.str.strip().str.replace(r"\\s+", " ", regex=True).str.title()
        digits = df["phone"].str.replace(r"\\D", "", regex=True).str[-10:]
        out["phone_norm"] = digits.str[:3] + "-" + digits.str[3:6] + "-" + digits.str[6:]
        dob = pd.to_datetime(df["dob_text"], format="mixed", errors="coerce")
        out["dob"] = dob.dt.strftime("%Y-%m-%d")
        out["email_norm"] = df["email"].str.strip().str.lower()
        return out

    def scaling(table, chunk):
        return Backfill(table=table, key="id", reads=["name", "phone", "dob_text", "email"],
                        writes=["name_norm", "phone_norm", "dob", "email_norm"],
                        transform=normalize, chunk_size=chunk)

    def planning(table, chunk):
        return Backfill(table=table, key="id", reads=["dob_text"], writes=["dob"],
                        sql={"dob": "to_date(dob_text, 'YYYY-MM-DD')"}, chunk_size=chunk)
""")

BASE = """
CREATE TABLE scaling_base AS
SELECT g::bigint AS id,
       (ARRAY['  jOhN ', 'mARÍA  ', 'Zoë', '  o''brien', 'JOSÉ'])[1 + g %% 5] || '   '
         || (ARRAY['sMith', 'GARCÍA ', 'müller', '  Lee', 'nguyễn'])[1 + (g / 7) %% 5] AS name,
       CASE g %% 3
         WHEN 0 THEN format('(%%s) %%s-%%s', 200 + g %% 800, lpad((g %% 1000)::text, 3, '0'),
                            lpad((g %% 10000)::text, 4, '0'))
         WHEN 1 THEN format('%%s.%%s.%%s', 200 + g %% 800, lpad((g %% 1000)::text, 3, '0'),
                            lpad((g %% 10000)::text, 4, '0'))
         ELSE format('+1 %%s %%s %%s', 200 + g %% 800, lpad((g %% 1000)::text, 3, '0'),
                     lpad((g %% 10000)::text, 4, '0'))
       END AS phone,
       CASE g %% 3
         WHEN 0 THEN to_char(date '1930-01-01' + (g %% 30000)::int, 'YYYY-MM-DD')
         WHEN 1 THEN to_char(date '1930-01-01' + (g %% 30000)::int, 'MM/DD/YYYY')
         ELSE to_char(date '1930-01-01' + (g %% 30000)::int, 'DD Mon YYYY')
       END AS dob_text,
       format('  %%s.%%s@Example.COM ', (ARRAY['John', 'Maria', 'ZOE'])[1 + g %% 3], g) AS email,
       NULL::text AS name_norm, NULL::text AS phone_norm, NULL::date AS dob,
       NULL::text AS email_norm
  FROM generate_series(1, %(rows)s) AS g
"""


def claim_redis(token: str) -> str:
    """A Redis database nobody claimed, from 1 up (test sessions claim from 15 down)."""
    for number in range(1, 16):
        client = redis.Redis.from_url(f"{REDIS}/{number}")
        if client.set(CLAIM, token, nx=True, ex=6 * 3600):
            client.flushdb()
            client.set(CLAIM, token, ex=6 * 3600)
            return f"{REDIS}/{number}"
    raise SystemExit("every Redis database is claimed by a test session")


def release_redis(url: str, token: str) -> None:
    client = redis.Redis.from_url(url)
    if client.get(CLAIM) == token.encode():
        client.flushdb()


def ferry(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "coordinator", *args],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=3600,
    )
    if proc.returncode != 0:
        raise SystemExit(f"ferry {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def peak_rss(env: dict[str, str], *args: str) -> tuple[float, float, str]:
    """(peak resident MiB, wall seconds, stdout) of one ``ferry`` subprocess, from wait4."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "coordinator", *args], env=env, stdout=out, cwd=ROOT
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        out.seek(0)
        text = out.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"ferry {' '.join(args)} exited {proc.returncode}")
    return usage.ru_maxrss / 1024, wall, text


def fresh_copy(conn: psycopg.Connection[Any], table: str) -> None:
    t = sql.Identifier(table)
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(t))
    conn.execute(sql.SQL("CREATE TABLE {} AS TABLE scaling_base").format(t))
    conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (id)").format(t))
    conn.execute(sql.SQL("VACUUM ANALYZE {}").format(t))


def wait_run(conn: psycopg.Connection[Any], run_id: int) -> dict[str, Any]:
    while True:
        row = conn.execute(
            "SELECT status, extract(epoch FROM finished_at - started_at)::float8 "
            "FROM ferry.runs WHERE id = %s",
            (run_id,),
        ).fetchone()
        assert row is not None
        if row[0] not in ("planning", "running"):
            break
        time.sleep(0.25)
    stats = conn.execute(
        "SELECT count(*), sum(rows_read), avg(duration_ms)::float8, "
        "percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms)::float8, "
        "count(DISTINCT split_part(split_part(worker, '@', 2), ':', 1)), "
        "count(*) FILTER (WHERE status <> 'done') "
        "FROM ferry.chunks WHERE run_id = %s",
        (run_id,),
    ).fetchone()
    assert stats is not None
    return {
        "status": row[0],
        "seconds": float(row[1]),
        "chunks": int(stats[0]),
        "rows": int(stats[1] or 0),
        "chunk_ms": float(stats[2] or 0),
        "chunk_p50_ms": float(stats[3] or 0),
        "hosts_used": int(stats[4]),
        "not_done": int(stats[5]),
    }


def scaling(
    conn: psycopg.Connection[Any],
    env: dict[str, str],
    spec_dir: Path,
    rows: int,
    chunk: int,
    counts: list[int],
    logs: Path,
) -> list[dict[str, Any]]:
    results = []
    with_hosts = Cluster(max(counts))
    try:
        for k in counts:
            table = f"scaling_{k}"
            fresh_copy(conn, table)
            workers = HostWorkers(with_hosts, env, logs)
            try:
                for host in with_hosts.hosts[:k]:
                    workers.start(host, concurrency=1, name=f"k{k}")
                run = ferry(
                    env,
                    "launch",
                    f"{spec_dir / f'spec_{table}.py'}:b",
                    "--json",
                    "--max-concurrency",
                    str(k),
                    # no database-time budget, and chunks kept whole (not cut to 0.5 s):
                    # the per-chunk costs below are for chunk_size rows
                    "--db-load",
                    "0",
                    "--chunk-time",
                    "600",
                )
                run_id = int(json.loads(run.stdout)["run_id"])
                result = wait_run(conn, run_id)
            finally:
                workers.stop_all()
            if result["status"] != "completed" or result["rows"] != rows or result["not_done"]:
                raise SystemExit(f"{k} host(s): run {run_id} ended {result}")
            # Another process restarting Redis (the fault tests do) empties the queue: the run
            # then waits FERRY_STALL_SECONDS for the sweepers. Such a round is flagged.
            text = "".join(p.read_text(errors="replace") for p in logs.glob(f"*-k{k}.log"))
            disturbed = "Connection to broker lost" in text or "stalled with" in text
            result.update(hosts=k, rows_per_s=rows / result["seconds"], disturbed=disturbed)
            results.append(result)
            print(
                f"  {k} host(s): {result['seconds']:.1f} s, {result['rows_per_s']:,.0f} rows/s, "
                f"{result['chunks']} chunks on {result['hosts_used']} host(s)",
                flush=True,
            )
            conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(table)))
    finally:
        with_hosts.close()
    return results


def planning(
    conn: psycopg.Connection[Any], env: dict[str, str], spec_dir: Path, sizes: list[int], chunk: int
) -> list[dict[str, Any]]:
    floor, _, _ = peak_rss(env, "--help")
    out = [{"rows": 0, "rss_mb": floor, "seconds": 0.0, "chunks": 0}]
    for n in sizes:
        table = f"plan_{n}"
        t = sql.Identifier(table)
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(t))
        conn.execute(sql.SQL("CREATE TABLE {} (id bigint, dob_text text, dob date)").format(t))
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (id, dob_text) SELECT g, "
                "to_char(date '1930-01-01' + (g %% 30000)::int, 'YYYY-MM-DD') "
                "FROM generate_series(1, %s) g"
            ).format(t),
            (n,),
        )
        conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (id)").format(t))
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(t))  # index-only scans of the key
        path = spec_dir / f"plan_{n}.py"
        path.write_text(SPEC + f"\nb = planning({table!r}, {chunk})\n")
        rss, wall, text = peak_rss(env, "plan", f"{path}:b", "--json")
        out.append(
            {"rows": n, "rss_mb": rss, "seconds": wall, "chunks": json.loads(text)["chunks"]}
        )
        print(f"  plan over {n:,} rows: {rss:.1f} MiB peak, {wall:.1f} s", flush=True)
        conn.execute(sql.SQL("DROP TABLE {}").format(t))
    return out


def transform_ms(conn: psycopg.Connection[Any], chunk: int) -> float:
    """The transform alone on one chunk's rows, in this process: the CPU share of a chunk."""
    import pandas as pd

    namespace: dict[str, Any] = {}
    exec(compile(SPEC, "spec", "exec"), namespace)
    cur = conn.execute(
        "SELECT id, name, phone, dob_text, email FROM scaling_base ORDER BY id LIMIT %s", (chunk,)
    )
    frame = pd.DataFrame(cur.fetchall(), columns=[c.name for c in cur.description or ()])
    times = []
    for _ in range(3):
        started = time.perf_counter()
        namespace["normalize"](frame)
        times.append((time.perf_counter() - started) * 1000)
    return sorted(times)[1]


def report(
    runs: list[dict[str, Any]],
    plans: list[dict[str, Any]],
    chunk: int,
    row_bytes: float,
    cpu_ms: float,
) -> None:
    one = runs[0]
    print("\nScaling (one worker process, concurrency 1, per host; 2 CPU cores on this machine)")
    print(
        f"{'hosts':>5} {'seconds':>8} {'rows/s':>10} {'speed-up':>9} {'efficiency':>10} "
        f"{'gain of this host':>18} {'chunk ms (mean/p50)':>20}"
    )
    previous = None
    for r in runs:
        speed = r["rows_per_s"] / one["rows_per_s"]
        gain = (
            "" if previous is None else f"{(r['rows_per_s'] - previous) / one['rows_per_s']:+.0%}"
        )
        print(
            f"{r['hosts']:>5} {r['seconds']:>8.1f} {r['rows_per_s']:>10,.0f} {speed:>8.2f}x "
            f"{speed / r['hosts']:>10.0%} {gain:>18} "
            f"{r['chunk_ms']:>11.0f}/{r['chunk_p50_ms']:.0f}"
            + ("  DISTURBED: a worker lost Redis mid-run" if r["disturbed"] else "")
        )
        previous = r["rows_per_s"]
    flat = next(
        (
            b["hosts"]
            for a, b in zip(runs, runs[1:], strict=False)
            if (b["rows_per_s"] - a["rows_per_s"]) / one["rows_per_s"] < 0.25
        ),
        None,
    )
    if flat is not None:
        print(
            f"the curve flattens at {flat} hosts (that host adds under 25% of one host's rate): "
            f"this machine has {os.cpu_count()} cores, shared by every worker, PostgreSQL and "
            "the forwarders, so past that many busy processes hosts only split the same CPU"
        )
    per_chunk = one["seconds"] / one["chunks"]
    overhead = per_chunk * 1000 - one["chunk_ms"]
    print(
        f"per-chunk cost on one host: {per_chunk * 1000:.0f} ms wall per {chunk:,}-row chunk "
        f"({one['chunk_ms']:.0f} ms inside the chunk's transaction, {overhead:.0f} ms queue, "
        "gate and claim)"
    )
    print(
        f"of which the transform alone: {cpu_ms:.0f} ms (median of 3, in one process); "
        f"database side (COPY out and in, update, pre-images, ledger): "
        f"{max(one['chunk_ms'] - cpu_ms, 0):.0f} ms"
    )
    print("\nPlanning (`ferry plan`, a subprocess; peak RSS from wait4)")
    print(f"{'rows':>12} {'chunks':>8} {'peak MiB':>9} {'seconds':>8}")
    for p in plans:
        label = "(--help)" if p["rows"] == 0 else f"{p['rows']:,}"
        print(f"{label:>12} {p['chunks']:>8} {p['rss_mb']:>9.1f} {p['seconds']:>8.1f}")
    big = 100_000_000
    ledger_rows = math.ceil(big / chunk)
    largest = plans[-1]
    est = largest["seconds"] / largest["rows"] * big if largest["rows"] else 0.0
    print(
        f"100,000,000 rows (computed, not built): {ledger_rows:,} ledger rows "
        f"(one per {chunk:,}-row chunk), about {ledger_rows * row_bytes / 2**20:.1f} MiB at the "
        f"measured {row_bytes:.0f} bytes per ferry.chunks row; planning time extrapolated "
        f"linearly from {largest['rows']:,} rows: about {est:.0f} s. Peak memory does not grow "
        "with the table: planning walks the key index (index-only) and keeps one key pair "
        "per chunk."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--chunk-size", type=int, default=10_000)
    parser.add_argument("--hosts", default="1,2,3")
    parser.add_argument("--plan-rows", default="1000000,10000000")
    args = parser.parse_args()
    reason = missing_requirements()
    if reason is not None:
        raise SystemExit(f"scaling: {reason}")
    counts = [int(x) for x in args.hosts.split(",")]
    sizes = [int(x) for x in args.plan_rows.split(",") if x]
    name = f"ferry_scaling_{os.getpid()}"
    token = f"bench-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    url = SERVER.rsplit("/", 1)[0] + "/" + name
    redis_url = claim_redis(token)
    with psycopg.connect(SERVER, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    work = Path(tempfile.mkdtemp(prefix="ferry-scaling-"))
    env = {
        **os.environ,
        "FERRY_DATABASE_URL": url,
        "FERRY_REDIS_URL": redis_url,
        "FERRY_QUEUE": f"ferry-scaling-{os.getpid()}",
        "FERRY_ACTOR": "bench",
        "PYTHONPATH": str(ROOT),
    }
    try:
        ferry(env, "init")
        with psycopg.connect(url, autocommit=True) as conn:
            print(f"building {args.rows:,} rows ...", flush=True)
            conn.execute(BASE, {"rows": args.rows})
            for k in counts:
                (work / f"spec_scaling_{k}.py").write_text(
                    SPEC + f"\nb = scaling('scaling_{k}', {args.chunk_size})\n"
                )
            print("scaling:", flush=True)
            runs = scaling(conn, env, work, args.rows, args.chunk_size, counts, work)
            width = conn.execute(
                "SELECT coalesce(avg(pg_column_size(c.*)), 0)::float8 FROM ferry.chunks c"
            ).fetchone()
            print("planning:", flush=True)
            plans = planning(conn, env, work, sizes, args.chunk_size)
            cpu_ms = transform_ms(conn, args.chunk_size)
        report(runs, plans, args.chunk_size, float(width[0]) if width else 0.0, cpu_ms)
    finally:
        with psycopg.connect(SERVER, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        release_redis(redis_url, token)


if __name__ == "__main__":
    main()
