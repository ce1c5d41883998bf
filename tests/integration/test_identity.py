"""Runs bound to their ledger: two databases sharing one Redis database never meet.

Run ids start at 1 in every ledger. Here two databases of the test's own share the session's
Redis database, each with its run 1 at the same time, one of them made again after an earlier
database of the same name (and its run 1, which left a db-time debt and an error in Redis)
was dropped. Real PostgreSQL, Redis and ``celery -A workers worker`` processes.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import redis
from psycopg import sql

from tests.conftest import SERVER, WorkerPool, ferry
from tests.helpers import ledger_id, make_numbers_table, spec_file, wait_run
from workers.progress import errors_key

# A chunk that takes 0.6 s of database time (the sub-select runs once per statement), and
# fails on row ``bad`` (its -1 breaks the table's CHECK: only the UPDATE meets it, not the
# launch's sample): what leaves a db-time debt and an error event behind.
SLOW_FAILING = """
b = Backfill(table="{table}", key="id", reads=["a", "b"], writes=["score"], chunk_size=100,
             sql={{"score": "CASE WHEN id = {bad} THEN -1 ELSE a * 3 + b END"
                             " + (SELECT 0 FROM pg_sleep(0.6))"}}, allow_functions=["pg_sleep"])
"""
QUICK = """
b = Backfill(table="{table}", key="id", reads=["a", "b"], writes=["score"], chunk_size=100,
             sql={{"score": "CASE WHEN id = {bad} THEN -1 ELSE a * 3 + b END"}})
"""
CHUNKS = 16  # per run on the shared queue: many chances for a worker to meet the other's
LEDGER = re.compile(r"^[0-9a-f]{12}$")


@contextmanager
def database(name: str) -> Iterator[str]:
    """A database of the test's own, dropped afterwards."""
    with psycopg.connect(SERVER, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield SERVER.rsplit("/", 1)[0] + "/" + name
    finally:
        drop(name)


def drop(name: str) -> None:
    with psycopg.connect(SERVER, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def ledger_env(env: dict[str, str], url: str, queue: str = "") -> dict[str, str]:
    """Every process of one ledger: no FERRY_QUEUE (``""``) means the ledger's own queue,
    and a stall sweep too far off to rescue a run whose tasks were lost."""
    return {
        **env,
        "FERRY_DATABASE_URL": url,
        "FERRY_QUEUE": queue,
        "FERRY_STALL_SECONDS": "600",
        "FERRY_LEASE_SECONDS": "5",
    }


def prepare(url: str, env: dict[str, str], tmp_path: Path, body: str, bad: int, rows: int) -> Path:
    ferry("init", env=env, check=True)
    with psycopg.connect(url, autocommit=True) as conn:
        make_numbers_table(conn, "patients", rows)
        conn.execute("ALTER TABLE patients ADD CHECK (score >= 0)")
    tmp_path.mkdir(parents=True, exist_ok=True)
    return spec_file(tmp_path, body.format(table="patients", bad=bad))


def launch(env: dict[str, str], spec: Path, *limits: str) -> int:
    proc = ferry("launch", f"{spec}:b", "--json", *limits, env=env)
    assert proc.returncode == 0, proc.stderr
    return int(json.loads(proc.stdout)["run_id"])


def status(env: dict[str, str], run_id: int) -> dict[str, Any]:
    proc = ferry("status", str(run_id), "--json", env=env)
    assert proc.stdout, proc.stderr
    return dict(json.loads(proc.stdout))


def wait_all(urls: dict[str, str], runs: dict[str, int], timeout: float) -> dict[str, str]:
    """Each database's run's final status, as soon as every one has ended."""
    ended: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    for name, url in urls.items():
        with psycopg.connect(url, autocommit=True) as conn:
            left = max(deadline - time.monotonic(), 0.1)
            ended[name] = wait_run(conn, runs[name], timeout=left)
    return ended


def scores_right(url: str) -> int:
    """Rows whose score is not what the run computed (the failed chunk's rows aside)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM patients p WHERE score IS DISTINCT FROM a * 3 + b "
            "AND NOT EXISTS (SELECT 1 FROM ferry.chunks c WHERE c.status = 'failed' "
            "AND p.id > coalesce(c.lo::bigint, -1) AND p.id <= c.hi::bigint)"
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_two_databases_on_one_redis_each_see_only_their_own_run_1(
    env: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:6]
    name_a, name_b = f"ferry_id_a_{tag}", f"ferry_id_b_{tag}"
    pools: list[WorkerPool] = []
    try:
        # an earlier database B: its run 1 leaves a db-time debt and a failed chunk in Redis
        with database(name_b) as url_b:
            env_b = ledger_env(env, url_b)
            spec = prepare(url_b, env_b, tmp_path / "old", SLOW_FAILING, bad=250, rows=800)
            (tmp_path / "wold").mkdir()
            old = WorkerPool(env_b, tmp_path / "wold")
            pools.append(old)
            old.start("old", concurrency=4)
            run = launch(env_b, spec, "--db-load", "1", "--max-concurrency", "4")
            assert run == 1
            with psycopg.connect(url_b, autocommit=True) as conn:
                assert wait_run(conn, run, timeout=120) == "failed"
                old_ledger = ledger_id(conn)
            old.stop_all()
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        assert client.xlen(errors_key(old_ledger, 1)) >= 1  # what it left behind

        # B dropped (above) and made again beside a new database A; run 1 in both at once
        with database(name_a) as url_a, database(name_b) as url_b:
            env_a, env_b = ledger_env(env, url_a), ledger_env(env, url_b)
            spec_a = prepare(url_a, env_a, tmp_path / "a", QUICK, bad=250, rows=300)
            spec_b = prepare(url_b, env_b, tmp_path / "b", QUICK, bad=0, rows=300)
            with psycopg.connect(url_a) as a, psycopg.connect(url_b) as b:
                ledgers = {"a": ledger_id(a), "b": ledger_id(b)}
            assert len({old_ledger, *ledgers.values()}) == 3  # made again: a new identity
            for name, ledger_env_ in (("a", env_a), ("b", env_b)):
                (tmp_path / f"w{name}").mkdir()
                pool = WorkerPool(ledger_env_, tmp_path / f"w{name}")
                pools.append(pool)
                pool.start(f"w{name}")  # no -Q and no FERRY_QUEUE: its ledger's own queue
            # A db-load bound that the old run's debt (about 2 s of database time) would
            # stretch to half a minute a chunk, were run 1 of B still paying it.
            began = time.monotonic()
            runs = {
                "a": launch(env_a, spec_a, "--db-load", "0.05"),
                "b": launch(env_b, spec_b, "--db-load", "0.05"),
            }
            assert runs == {"a": 1, "b": 1}
            ended = wait_all({"a": url_a, "b": url_b}, runs, timeout=60)
            took = time.monotonic() - began
            assert ended == {"a": "failed", "b": "completed"}, pools[-1].logs()[-3000:]
            assert took < 25, f"runs took {took:.1f}s: a debt or a task of the other ledger?"
            assert scores_right(url_a) == 0 and scores_right(url_b) == 0

            health_a, health_b = status(env_a, 1), status(env_b, 1)
            assert {e["chunk"] for e in health_a["recent_errors"]} == {2}, health_a
            assert health_b["recent_errors"] == [], health_b  # not the dropped B's, nor A's
            assert health_b["chunks"]["done"] == 3 and health_b["chunks"]["failed"] == 0
            assert health_a["workers"] == 1 and health_b["workers"] == 1
            # every key either ledger wrote carries its identity; queues are the ledgers' own
            for ledger in ledgers.values():
                assert client.exists(f"ferry:{ledger}:run:1:counters")
            bare = [k for k in client.scan_iter("ferry:*") if not LEDGER.match(k.split(":")[1])]
            assert bare == []
            for pool in pools:
                logs = pool.logs()
                assert "NotFound" not in logs and "no run 1" not in logs, logs[-3000:]
                assert "forwarded" not in logs  # each ledger's tasks on its own queue
    finally:
        for pool in pools:
            pool.stop_all()
        drop(name_b)


def test_a_worker_of_another_ledger_on_a_shared_queue_forwards_never_drops(
    env: dict[str, str], tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:6]
    shared = f"{env['FERRY_QUEUE']}-shared-{tag}"
    pools: list[WorkerPool] = []
    with database(f"ferry_id_c_{tag}") as url_a, database(f"ferry_id_d_{tag}") as url_b:
        env_a, env_b = ledger_env(env, url_a, shared), ledger_env(env, url_b, shared)
        spec_a = prepare(url_a, env_a, tmp_path / "a", QUICK, bad=0, rows=CHUNKS * 100)
        spec_b = prepare(url_b, env_b, tmp_path / "b", QUICK, bad=0, rows=CHUNKS * 100)
        try:
            for name, ledger_env_ in (("a", env_a), ("b", env_b)):
                (tmp_path / f"w{name}").mkdir()
                pool = WorkerPool(ledger_env_, tmp_path / f"w{name}")
                pools.append(pool)
                pool.start(f"w{name}")
            # Only A has a run at first: every one of its tasks B's worker takes is one it
            # must hand on; then B's run 1 beside A's, the same run and chunk numbers.
            began = time.monotonic()
            runs = {"a": launch(env_a, spec_a, "--db-load", "0")}
            runs["b"] = launch(env_b, spec_b, "--db-load", "0")
            assert runs == {"a": 1, "b": 1}
            ended = wait_all({"a": url_a, "b": url_b}, runs, timeout=60)
            took = time.monotonic() - began
            logs = "\n".join(p.logs() for p in pools)
            assert ended == {"a": "completed", "b": "completed"}, logs[-4000:]
            assert took < 40, f"{took:.1f}s: rescued by a sweep, not by the worker"
            assert scores_right(url_a) == 0 and scores_right(url_b) == 0
            for url in (url_a, url_b):
                with psycopg.connect(url) as conn:
                    row = conn.execute(
                        "SELECT count(*), sum(attempts) FROM ferry.chunks WHERE run_id = 1"
                    ).fetchone()
                assert row == (CHUNKS, CHUNKS)  # each chunk claimed once, by a worker of its ledger
            assert "NotFound" not in logs and "no run 1" not in logs, logs[-4000:]
            # B's worker met tasks of A (or A's of B) and handed them on, with a warning
            assert "forwarded to queue ferry." in logs, logs[-4000:]
        finally:
            for pool in pools:
                pool.stop_all()


def test_identity_is_made_once_and_a_copied_ledger_is_refused_until_init_rekeys_it(
    env: dict[str, str], tmp_path: Path
) -> None:
    """A restored dump beside the original (here CREATE DATABASE ... TEMPLATE, the same
    bytes in another database) would share the original's keys, tasks and queue: refused
    with one line until ``ferry init`` gives it an identity of its own."""
    tag = uuid.uuid4().hex[:6]
    with database(f"ferry_id_e_{tag}") as url:
        env_x = ledger_env(env, url)
        spec = prepare(url, env_x, tmp_path, QUICK, bad=0, rows=300)
        with psycopg.connect(url) as conn:
            original = ledger_id(conn)
        again = ferry("init", env=env_x, check=True)  # an upgrade keeps it
        assert f"ledger identity {original}" in again.stdout and "copy" not in again.stdout
        assert launch(env_x, spec, "--db-load", "0") == 1  # its tasks wait on its queue
        copy = f"ferry_id_f_{tag}"
        with psycopg.connect(SERVER, autocommit=True) as admin:
            admin.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(copy), sql.Identifier(f"ferry_id_e_{tag}")
                )
            )
        try:
            url_copy = SERVER.rsplit("/", 1)[0] + "/" + copy
            env_copy = ledger_env(env, url_copy)
            with psycopg.connect(url_copy) as conn:
                assert ledger_id(conn) == original  # the copy's bytes say "original"
            refused = ferry("status", "1", "--json", env=env_copy)
            assert refused.returncode == 1 and refused.stdout == ""
            assert refused.stderr.count("\n") == 1, refused.stderr
            assert "copied from another database" in refused.stderr
            assert "run `ferry init`" in refused.stderr

            rekeyed = ferry("init", env=env_copy, check=True)
            with psycopg.connect(url_copy) as conn:
                own = ledger_id(conn)
                row = conn.execute("SELECT previous FROM ferry.identity").fetchone()
                queue = conn.execute("SELECT params->>'queue' FROM ferry.runs").fetchone()
            assert own != original and row == ([original],)
            assert f"a copy of ledger {original}" in rekeyed.stdout and own in rekeyed.stdout
            assert queue == (None,)  # follows the copy's own queue, not the original's
            assert ferry("status", "1", "--json", env=env_copy).returncode == 0
            assert ferry("init", env=env_copy, check=True).stdout.count("copy") == 0
        finally:
            drop(copy)
        with psycopg.connect(url) as conn:  # the original is untouched
            assert ledger_id(conn) == original
            queue = conn.execute("SELECT params->>'queue' FROM ferry.runs").fetchone()
        assert queue == (f"ferry.{original}",)
        assert ferry("status", "1", "--json", env=env_x).returncode == 0


def test_an_upgraded_ledger_gets_an_identity_once_and_its_runs_follow_its_queue(
    env: dict[str, str], tmp_path: Path
) -> None:
    """A ledger of version 9 (no identity; runs launched on the one shared queue "ferry")
    upgraded by ``ferry init``: the identity is made then and kept by every later init."""
    tag = uuid.uuid4().hex[:6]
    with database(f"ferry_id_g_{tag}") as url:
        env_x = ledger_env(env, url)
        spec = prepare(url, env_x, tmp_path, QUICK, bad=0, rows=300)
        assert launch(env_x, spec, "--db-load", "0") == 1
        with psycopg.connect(url, autocommit=True) as conn:  # back to version 9, as it was
            conn.execute("DROP TABLE ferry.identity")
            conn.execute("DROP FUNCTION ferry.system_identifier()")
            conn.execute("DELETE FROM ferry.ledger_version WHERE version = 10")
            conn.execute("""UPDATE ferry.runs SET params = params || '{"queue": "ferry"}'""")
        upgraded = ferry("init", env=env_x, check=True)
        assert "applied: 10" in upgraded.stdout
        with psycopg.connect(url) as conn:
            made = ledger_id(conn)
            queue = conn.execute("SELECT params->>'queue' FROM ferry.runs").fetchone()
        assert queue == (None,)  # the run's tasks go to the ledger's own queue from now on
        for _ in range(2):
            assert f"ledger identity {made}" in ferry("init", env=env_x, check=True).stdout
        with psycopg.connect(url) as conn:
            assert ledger_id(conn) == made
