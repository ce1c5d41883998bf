"""Services of the differential harness: a database, a Redis database and a queue of its own,
two real Celery workers for the whole session, and the in-process coordinator.

The harness puts triggers on its tables and on ``ferry.chunks`` (its record of when each chunk
was claimed and done), so it keeps its own database: the session database of the other rings
stays as they expect it. Runs are launched and followed through the coordinator's Python API
(``coordinator.commands``), not the CLI: a subprocess costs a second of start-up an example.

``BROKEN`` names the dimensions of the oracle that the current code is known to fail. While a
dimension is listed, the property tests leave it out (so CI stays green) and its regression in
``test_regressions.py`` is a strict xfail; delete the entry once its fix is merged, and both
the property and the regression test hold it from then on.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
import redis
from psycopg import sql

from coordinator import commands
from tests.conftest import REDIS, ROOT, SERVER, WorkerPool, _unavailable
from tests.properties.harness import restarting
from tests.properties.strategies import SETUP_SQL
from workers.settings import Settings

F = TypeVar("F")

# dimension -> the issue 20 item it waits for, and the branch that fixes it.
BROKEN: dict[str, str] = {}

# Type families the pandas path cannot carry exactly while "pandas_exact" is broken.
PANDAS_INEXACT = frozenset({"numeric", "numeric(38,15)", "real", "double precision", "money"})

# Type families whose '=' holds between values of different text (citext 'A' = 'a',
# numeric 1.0 = 1.00, interval '1 day' = '24:00:00', float -0 = 0, jsonb 1.0 = 1.00): left
# out of the backfill while "equal_but_different" is broken.
EQUAL_BUT_DIFFERENT = frozenset(
    {"citext", "numeric", "numeric(38,15)", "real", "double precision", "interval", "jsonb"}
)


def broken_now() -> dict[str, str]:
    """BROKEN, or the dimensions FERRY_PROPERTY_BROKEN lists (comma-separated; empty: none,
    a campaign that looks for everything)."""
    chosen = os.environ.get("FERRY_PROPERTY_BROKEN")
    if chosen is None:
        return BROKEN
    return {name: BROKEN.get(name, "chosen") for name in chosen.split(",") if name}


def excluded(mode: str) -> frozenset[str]:
    """The type families the backfill never reads or writes in ``mode`` while dimensions are
    broken (they still fill the other columns)."""
    out: set[str] = set()
    broken = broken_now()
    if "pandas_exact" in broken and mode == "pandas":
        out |= PANDAS_INEXACT
    if "equal_but_different" in broken:
        out |= EQUAL_BUT_DIFFERENT
    if "json_written" in broken:
        out.add("json")
    return frozenset(out)


def only_families() -> frozenset[str] | None:
    """FERRY_PROPERTY_FAMILIES=a,b: only those type families anywhere (to chase one failure)."""
    only = os.environ.get("FERRY_PROPERTY_FAMILIES")
    return frozenset(only.split(",")) | {"boolean"} if only else None


def broken(dimension: str) -> Callable[[F], F]:
    """A strict xfail while ``dimension`` is listed in BROKEN, no mark once it is fixed."""
    if dimension in BROKEN:
        return pytest.mark.xfail(strict=True, reason=BROKEN[dimension])
    return lambda test: test


def examples_budget(default: int) -> int:
    """FERRY_PROPERTY_EXAMPLES scales the campaign (the long one: 2000)."""
    raw = os.environ.get("FERRY_PROPERTY_EXAMPLES")
    return int(raw) if raw else default


@pytest.fixture(scope="session")
def props_database_url() -> Iterator[str]:
    name = f"ferry_props_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        admin = psycopg.connect(SERVER, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        _unavailable("PostgreSQL", exc)
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = SERVER.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SETUP_SQL)
    yield url
    with psycopg.connect(SERVER, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="session")
def props_redis_url() -> Iterator[str]:
    """A Redis database of the harness's own (claimed as tests/conftest.py claims one)."""
    base = REDIS.rsplit("/", 1)[0]
    token = f"props-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    claim = "ferry-test:session"
    for number in range(1, 16):
        client = redis.Redis.from_url(f"{base}/{number}", socket_connect_timeout=3)
        try:
            claimed = client.set(claim, token, nx=True, ex=6 * 3600)
        except redis.RedisError as exc:
            _unavailable("Redis", exc)
        if claimed:
            client.flushdb()
            client.set(claim, token, ex=6 * 3600)
            yield f"{base}/{number}"
            if client.get(claim) == token.encode():
                client.flushdb()
            return
    pytest.fail("every Redis database 1-15 is claimed by another test session")


@pytest.fixture(scope="session")
def props_env(props_database_url: str, props_redis_url: str) -> dict[str, str]:
    """Short leases and fast sweeps, so a killed worker's chunk comes back within seconds."""
    return {
        **os.environ,
        "FERRY_DATABASE_URL": props_database_url,
        "FERRY_REDIS_URL": props_redis_url,
        "FERRY_QUEUE": f"ferry-props-{os.getpid()}",
        "FERRY_LEASE_SECONDS": "3",
        "FERRY_SWEEP_INTERVAL": "0.5",
        "FERRY_STALL_SECONDS": "6",
        "FERRY_BACKOFF_BASE": "0.1",
        "FERRY_BACKOFF_MAX": "1",
        "FERRY_ACTOR": "pytest-properties",
        "PYTHONPATH": str(ROOT),
    }


@pytest.fixture(scope="session")
def coordinator(props_env: dict[str, str]) -> Iterator[commands.Context]:
    ctx = commands.Context(Settings.from_env(props_env))
    commands.init(ctx)
    yield ctx
    ctx.close()


@pytest.fixture(scope="session")
def props_pool(
    props_env: dict[str, str], coordinator: commands.Context, tmp_path_factory: Any
) -> Iterator[WorkerPool]:
    pool = WorkerPool(props_env, tmp_path_factory.mktemp("props-workers"))
    starting = [threading.Thread(target=pool.start, args=(name,)) for name in ("p1", "p2")]
    for thread in starting:
        thread.start()
    for thread in starting:
        thread.join()
    if len(pool.procs) != 2:
        pool.stop_all()
        pytest.fail("the harness's workers did not start")
    yield pool
    for thread in restarting:
        thread.join()
    pool.stop_all()


@pytest.fixture(scope="session")
def spec_dir(tmp_path_factory: Any) -> Path:
    """Where each example's Backfill module is written (one file an example: workers cache
    a file's module by its path)."""
    return Path(tmp_path_factory.mktemp("props-specs"))
