"""Session-wide services for the integration and acceptance rings.

A database of its own per test session (created, then dropped), a Redis
database of its own (claimed from 15 down, flushed at the start) and a
Celery queue of its own, so a session never touches anything else on the
machine. Services that do not answer skip the
rings that need them locally, and fail them under CI (CI=true).
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from psycopg import sql

from workers.command import worker_command

SERVER = os.environ.get("FERRY_TEST_SERVER", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("FERRY_TEST_REDIS", "redis://127.0.0.1:6379/15")
SESSION_CLAIM = "ferry-test:session"
ROOT = Path(__file__).resolve().parent.parent


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Parallel workers of one ``pytest -n`` run share the machine; a test marked ``alone``
    has it to itself.

    Those are the tests that restart the shared Redis or time a lease to the second: beside
    another worker's test they would break it or be broken by it. Every other test takes a
    shared flock, these an exclusive one; nothing is taken when the run is not parallel.
    Taken around the test's whole protocol, not in a fixture: the module and session fixtures
    a test sets up first (a module's whole run of ``ferry``, the session's workers) run
    before any function fixture, and once met a Redis restarted under them.
    """
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run is None:
        return (yield)
    alone = item.get_closest_marker("alone") is not None
    with open(Path(tempfile.gettempdir()) / f"ferry-test-{run}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        try:
            return (yield)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _unavailable(what: str, exc: BaseException) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is not available under CI: {exc}")
    pytest.skip(f"{what} is not available: {exc}")


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    name = f"ferry_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        admin = psycopg.connect(SERVER, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        _unavailable("PostgreSQL", exc)
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = SERVER.rsplit("/", 1)[0] + "/" + name
    yield url
    with psycopg.connect(SERVER, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis database of the session's own, claimed with a key so parallel sessions never share.

    Run ids restart at 1 in every session's database, and Redis keys are named by run id, so two
    sessions on one Redis database would read each other's progress and throttle state.
    """
    base = REDIS.rsplit("/", 1)[0]
    token = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
    for number in range(15, 0, -1):
        client = redis.Redis.from_url(f"{base}/{number}", socket_connect_timeout=3)
        try:
            claimed = client.set(SESSION_CLAIM, token, nx=True, ex=6 * 3600)
        except redis.RedisError as exc:
            _unavailable("Redis", exc)
        if claimed:
            client.flushdb()
            client.set(SESSION_CLAIM, token, ex=6 * 3600)
            yield f"{base}/{number}"
            if client.get(SESSION_CLAIM) == token.encode():
                client.delete(SESSION_CLAIM)
            return
    pytest.fail("every Redis database 1-15 is claimed by another test session")


@pytest.fixture(scope="session")
def queue() -> str:
    return f"ferry-test-{os.getpid()}"


@pytest.fixture(scope="session")
def env(database_url: str, redis_url: str, queue: str) -> dict[str, str]:
    """The environment every worker and CLI process of the session gets."""
    return {
        **os.environ,
        "FERRY_DATABASE_URL": database_url,
        "FERRY_REDIS_URL": redis_url,
        "FERRY_QUEUE": queue,
        "FERRY_LEASE_SECONDS": "5",
        "FERRY_SWEEP_INTERVAL": "1",
        "FERRY_ACTOR": "pytest",
        "PYTHONPATH": str(ROOT),
    }


@pytest.fixture(scope="session")
def ledger_ready(env: dict[str, str]) -> None:
    ferry("init", env=env, check=True)


def ferry(
    *args: str, env: dict[str, str], check: bool = False, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run the real ``ferry`` CLI in a subprocess."""
    proc = subprocess.run(
        [sys.executable, "-m", "coordinator", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"ferry {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


class WorkerPool:
    """Real ``celery -A workers worker`` processes, each in its own process group."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, concurrency: int = 1) -> subprocess.Popen[bytes]:
        path = self.log_dir / f"{name}.log"
        offset = path.stat().st_size if path.exists() else 0
        with open(path, "ab") as log:
            proc = subprocess.Popen(
                worker_command(
                    name, self.env["FERRY_QUEUE"], concurrency=concurrency, loglevel="INFO"
                ),
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=ROOT,
            )
        self.procs[name] = proc
        self._wait_ready(name, proc, offset)
        return proc

    def _wait_ready(self, name: str, proc: subprocess.Popen[bytes], offset: int) -> None:
        deadline = time.monotonic() + 60
        path = self.log_dir / f"{name}.log"
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"worker {name} exited: {path.read_text()[-2000:]}")
            if b"ready." in path.read_bytes()[offset:]:
                return
            time.sleep(0.2)
        raise RuntimeError(f"worker {name} did not start: {path.read_text()[-2000:]}")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.log_dir.glob("*.log"))


@pytest.fixture(scope="session")
def workers(env: dict[str, str], ledger_ready: None, tmp_path_factory: Any) -> Iterator[WorkerPool]:
    """Two worker processes for the whole session."""
    pool = WorkerPool(env, tmp_path_factory.mktemp("workers"))
    pool.start("w1")
    pool.start("w2")
    yield pool
    pool.stop_all()


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def own_env(env: dict[str, str], request: pytest.FixtureRequest) -> dict[str, str]:
    """A queue of the test's own, short leases, fast sweeps, stall detection and backoff."""
    return {
        **env,
        "FERRY_QUEUE": f"{env['FERRY_QUEUE']}-{request.node.name[-40:]}",
        "FERRY_LEASE_SECONDS": "3",
        "FERRY_SWEEP_INTERVAL": "0.5",
        "FERRY_STALL_SECONDS": "6",
        "FERRY_BACKOFF_BASE": "0.2",
        "FERRY_BACKOFF_MAX": "2",
    }


@pytest.fixture
def pool(own_env: dict[str, str], tmp_path: Path, ledger_ready: None) -> Iterator[WorkerPool]:
    """Workers of the test's own queue, which the test starts and kills as it likes."""
    workers = WorkerPool(own_env, tmp_path)
    yield workers
    workers.stop_all()
