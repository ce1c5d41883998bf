"""The demo's state folder: generated secrets, and the processes it started, by pid file.

Why pid files with the process's start time: ``ferry demo --keep`` leaves servers
and workers running after the command exits, and ``ferry demo --down`` (another
process, maybe days later) must stop exactly those, never a process that reused
a pid. Each process runs in its own session, so a terminal's Ctrl-C reaches only
the demo, which then stops everything in order (clients first, servers last).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from migrations.errors import BadInput, CheckFailed


def _start_ticks(pid: int) -> str | None:
    """The process's start time (Linux /proc), so a recycled pid is never mistaken for ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not Path("/proc/self").exists():  # no procfs (macOS): the signal test is all we have
        return True
    try:  # a zombie is dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False  # it went away meanwhile


class State:
    """The state folder: secrets, pid files, logs, and the two servers' data."""

    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()
        self.pgdata = self.root / "pg"
        self.redis_dir = self.root / "redis"
        self.run_dir = self.root / "run"
        self.log_dir = self.root / "logs"

    def prepare(self) -> None:
        for folder in (self.root, self.redis_dir, self.run_dir, self.log_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755 if os.geteuid() == 0 else 0o700)
        self.redis_dir.chmod(0o700)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """One demo (or ``--down``) per state folder at a time; the lock dies with the process."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            handle = open(self.root / "lock", "w")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise BadInput(f"state folder {self.root}: {exc.strerror}") from None
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise CheckFailed(
                    f"another ferry demo is using {self.root}: wait for it or stop it (Ctrl-C)"
                ) from None
            yield

    def secret(self, name: str) -> str:
        """A password generated once per state folder and kept (mode 0600) for later runs."""
        path = self.root / "secrets.json"
        values: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
        if name not in values:
            values[name] = secrets.token_urlsafe(18)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump(values, out)
        return values[name]

    # -- processes -------------------------------------------------------------------------
    def spawn(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], *, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a process in its own session (a terminal's Ctrl-C reaches only the demo,
        which then stops everything in order) and record it for ``--down``."""
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                list(argv),
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        record = {"pid": proc.pid, "start": _start_ticks(proc.pid), "argv0": argv[0]}
        (self.run_dir / f"{name}.pid").write_text(json.dumps(record))
        return proc

    def recorded(self) -> dict[str, int]:
        """Live processes this state folder started, by name (stale pid files are removed)."""
        found: dict[str, int] = {}
        for path in sorted(self.run_dir.glob("*.pid")) if self.run_dir.exists() else []:
            try:
                record = json.loads(path.read_text())
                pid = int(record["pid"])
            except (OSError, ValueError, KeyError, TypeError):
                path.unlink(missing_ok=True)
                continue
            if alive(pid) and record.get("start") == _start_ticks(pid):
                found[path.stem] = pid
            else:
                path.unlink(missing_ok=True)
        return found

    def stop(self, name: str, *, timeout: float = 20.0) -> bool:
        """SIGTERM the recorded process (a Celery worker finishes its chunk, then stops its
        pool), SIGKILL its whole session after ``timeout``. Whether something was running."""
        pid = self.recorded().get(name)
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while alive(pid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # the group it leads: what outlived a warm shutdown
        while alive(pid):
            _reap(pid)
            time.sleep(0.05)
        (self.run_dir / f"{name}.pid").unlink(missing_ok=True)
        return True


def _reap(pid: int) -> None:
    """Collect our own exited child so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
