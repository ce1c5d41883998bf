"""Worker "hosts" on one machine: network namespaces on a private bridge, for real partitions.

Each host is a Linux network namespace with one veth link into a bridge in the root
namespace; its processes get their own UTS namespace too, so a worker's name (and the
``worker`` column of the ledger) says which host ran a chunk. PostgreSQL and Redis keep
listening on 127.0.0.1 only: the harness forwards one bridge address per service to them
with socat, so each service can be cut from a host on its own (a blackhole route to that
address inside the namespace) and a whole host can be cut by taking its link down. Either
way the host's processes keep running and its established TCP connections hang, as with a
pulled cable, unlike a clean kill.

Nothing here is pytest-specific: ``bench/scaling.py`` builds its hosts with the same code.
Names start with ``fy`` plus a tag unique per process, and the /24 is chosen free under a file
lock, so parallel sessions never share a device, a namespace or an address. Only
10.231.0.0/16 addresses are used and the namespaces have no default route: nothing else is
ever reachable from a host.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from workers.command import worker_command

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "10.231"
LOCK = Path("/run/ferry-netns.lock")
# One file per live cluster, named by its tag: its owner's pid, then its forwarders' pids.
OWNERS = Path("/run/ferry-netns")
SOCAT = "/usr/bin/socat"
PG_PORT, REDIS_PORT = 5432, 6379


class HarnessError(RuntimeError):
    """The machine cannot build the cluster (not root, no ip or socat, an ip command failed)."""


def missing_requirements() -> str | None:
    """Why namespaces cannot be built here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is missing"
    if shutil.which("unshare") is None:
        return "the unshare command (util-linux) is missing"
    if not (os.access(SOCAT, os.X_OK) or shutil.which("socat")):
        return "socat is missing"
    return None


def ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", *(["-n", ns] if ns else []), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise HarnessError(f"{' '.join(cmd)}: {proc.stderr.strip()}")
    return proc


def _free_subnet() -> str:
    """A 10.231.X prefix no interface of the root namespace uses (caller holds LOCK)."""
    used = ip("-o", "-4", "addr", "show").stdout
    start = os.getpid() % 250
    for step in range(250):
        third = (start + step) % 250 + 1
        prefix = f"{PREFIX}.{third}."
        if prefix not in used:
            return f"{PREFIX}.{third}"
    raise HarnessError("no free 10.231.X.0/24 left")


def _remove_orphans() -> None:
    """Remove what clusters of dead processes left (a SIGKILLed session runs no finalizer).

    Only names carrying a recorded tag whose owner pid is gone are touched (caller holds LOCK).
    """
    if not OWNERS.is_dir():
        return
    for record in OWNERS.iterdir():
        owner, *forwarders = (record.read_text() or "0").split()
        try:
            os.kill(int(owner), 0)
            continue  # its owner is alive
        except (ProcessLookupError, ValueError):
            pass
        except PermissionError:
            continue
        for pid in forwarders:  # its socat processes, if they are still those
            with contextlib.suppress(OSError, ValueError):
                if b"socat" in Path(f"/proc/{int(pid)}/cmdline").read_bytes():
                    os.kill(int(pid), signal.SIGKILL)
        prefix = f"fy{record.name}"
        for ns in ip("netns", "list", check=False).stdout.split("\n"):
            name = ns.split(" ", 1)[0]
            if name.startswith(prefix):
                for pid in ip("netns", "pids", name, check=False).stdout.split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                ip("netns", "del", name, check=False)
        for line in ip("-o", "link", "show", check=False).stdout.split("\n"):
            fields = line.split(": ")
            if len(fields) > 1 and fields[1].split("@")[0].startswith(prefix):
                ip("link", "del", fields[1].split("@")[0], check=False)
        record.unlink(missing_ok=True)


def rewrite_host(url: str, host: str) -> str:
    """``url`` with its host (and nothing else: user, port, database) replaced."""
    parts = urlsplit(url)
    netloc = parts.netloc
    userinfo, _, hostport = netloc.rpartition("@")
    port = ""
    if hostport.startswith("["):
        end = hostport.index("]")
        port = hostport[end + 1 :]
    elif ":" in hostport:
        port = ":" + hostport.rsplit(":", 1)[1]
    new = (userinfo + "@" if userinfo else "") + host + port
    return urlunsplit(parts._replace(netloc=new))


@dataclass
class Host:
    """One namespace: its name (also its hostname), its address and its root-side veth."""

    name: str
    address: str
    veth: str
    cut_services: set[str] = field(default_factory=set)
    link_up: bool = True


class Cluster:
    """A bridge, its service forwarders and ``hosts`` namespaces; ``close()`` removes them all."""

    def __init__(self, hosts: int, tag: str | None = None) -> None:
        self.tag = tag or uuid.uuid4().hex[:5]
        self.bridge = f"fy{self.tag}br"
        self.hosts: list[Host] = []
        self.forwarders: list[subprocess.Popen[bytes]] = []
        self.subnet = ""
        self.service_address: dict[str, str] = {}
        try:
            self._build(hosts)
        except BaseException:
            self.close()
            raise

    # -- building --------------------------------------------------------------------------
    def _build(self, count: int) -> None:
        LOCK.parent.mkdir(parents=True, exist_ok=True)
        with open(LOCK, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                _remove_orphans()
                OWNERS.mkdir(parents=True, exist_ok=True)
                (OWNERS / self.tag).write_text(str(os.getpid()))
                self.subnet = _free_subnet()
                ip("link", "add", self.bridge, "type", "bridge")
                ip("addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        ip("addr", "add", f"{self.subnet}.2/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        self.service_address = {"postgres": f"{self.subnet}.1", "redis": f"{self.subnet}.2"}
        for n in range(1, count + 1):
            self._add_host(n)
        self._forward("postgres", PG_PORT)
        self._forward("redis", REDIS_PORT)
        record = [os.getpid(), *(proc.pid for proc in self.forwarders)]
        (OWNERS / self.tag).write_text(" ".join(str(n) for n in record))

    def _add_host(self, n: int) -> None:
        name, veth, peer = f"fy{self.tag}h{n}", f"fy{self.tag}v{n}", f"fy{self.tag}p{n}"
        ip("netns", "add", name)
        host = Host(name=name, address=f"{self.subnet}.{10 + n}", veth=veth)
        self.hosts.append(host)
        ip("link", "add", veth, "type", "veth", "peer", "name", peer)
        ip("link", "set", peer, "netns", name)
        ip("link", "set", veth, "master", self.bridge)
        ip("link", "set", veth, "up")
        ip("link", "set", "lo", "up", ns=name)
        ip("link", "set", peer, "name", "eth0", ns=name)
        ip("addr", "add", f"{host.address}/24", "dev", "eth0", ns=name)
        ip("link", "set", "eth0", "up", ns=name)

    def _forward(self, service: str, port: int) -> None:
        """A socat on the service's bridge address, relaying each connection to 127.0.0.1."""
        address = self.service_address[service]
        proc = subprocess.Popen(
            [
                SOCAT if os.access(SOCAT, os.X_OK) else "socat",
                f"TCP-LISTEN:{port},bind={address},reuseaddr,fork,backlog=256",
                f"TCP:127.0.0.1:{port},nodelay",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.forwarders.append(proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise HarnessError(f"the {service} forwarder exited {proc.returncode}")
            if (
                f"{address}:{port} "
                in subprocess.run(["ss", "-Hltn"], capture_output=True, text=True).stdout
            ):
                return
            time.sleep(0.05)
        raise HarnessError(f"the {service} forwarder did not listen on {address}:{port}")

    # -- what hosts see -------------------------------------------------------------------
    def database_url(self, url: str) -> str:
        return rewrite_host(url, self.service_address["postgres"])

    def redis_url(self, url: str) -> str:
        return rewrite_host(url, self.service_address["redis"])

    def host(self, name_or_index: str | int) -> Host:
        if isinstance(name_or_index, int):
            return self.hosts[name_or_index]
        return next(h for h in self.hosts if h.name == name_or_index)

    def command(self, host: Host, argv: list[str]) -> list[str]:
        """``argv`` run inside ``host``: its network namespace, and a hostname of its own."""
        return [
            "ip",
            "netns",
            "exec",
            host.name,
            "unshare",
            "--uts",
            "--",
            "sh",
            "-c",
            'hostname "$0" && exec "$@"',
            host.name,
            *argv,
        ]

    # -- faults ---------------------------------------------------------------------------
    def cut_link(self, host: Host) -> None:
        """Pull the host's cable: the root-side veth goes down, every packet of it is lost."""
        ip("link", "set", host.veth, "down")
        host.link_up = False

    def restore_link(self, host: Host) -> None:
        ip("link", "set", host.veth, "up")
        host.link_up = True

    def cut_service(self, host: Host, service: str) -> None:
        """Drop the host's packets to one service: a blackhole route to its forwarder address.

        Established connections hang (their segments are discarded on the way out, TCP keeps
        retransmitting) and new ones fail, while the other service stays reachable.
        """
        ip("route", "add", "blackhole", f"{self.service_address[service]}/32", ns=host.name)
        host.cut_services.add(service)

    def restore_service(self, host: Host, service: str) -> None:
        ip("route", "del", "blackhole", f"{self.service_address[service]}/32", ns=host.name)
        host.cut_services.discard(service)

    def heal(self) -> None:
        """Every link up and every service reachable again (between tests)."""
        for host in self.hosts:
            if not host.link_up:
                self.restore_link(host)
            for service in list(host.cut_services):
                self.restore_service(host, service)

    def pids(self, host: Host) -> set[int]:
        out = ip("netns", "pids", host.name, check=False).stdout
        return {int(p) for p in out.split()}

    # -- teardown -------------------------------------------------------------------------
    def close(self) -> None:
        """Kill what runs in the namespaces and the forwarders, delete namespaces and bridge."""
        for host in self.hosts:
            for pid in self.pids(host):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for proc in self.forwarders:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        self.forwarders.clear()
        for host in self.hosts:
            ip("netns", "del", host.name, check=False)
            ip("link", "del", host.veth, check=False)
        self.hosts.clear()
        ip("link", "del", self.bridge, check=False)
        (OWNERS / self.tag).unlink(missing_ok=True)


class HostWorkers:
    """``celery -A workers worker`` processes inside the cluster's hosts."""

    def __init__(self, cluster: Cluster, env: Mapping[str, str], log_dir: Path) -> None:
        self.cluster = cluster
        self.env = dict(env)
        self.redis_local = env["FERRY_REDIS_URL"]
        self.env["FERRY_DATABASE_URL"] = cluster.database_url(env["FERRY_DATABASE_URL"])
        self.env["FERRY_REDIS_URL"] = cluster.redis_url(env["FERRY_REDIS_URL"])
        self.env.setdefault("PYTHONPATH", str(ROOT))
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, host: Host, concurrency: int = 1, name: str = "w") -> subprocess.Popen[bytes]:
        key = f"{host.name}-{name}"
        path = self.log_dir / f"{key}.log"
        offset = path.stat().st_size if path.exists() else 0
        argv = worker_command(
            name,
            self.env["FERRY_QUEUE"],
            concurrency=concurrency,
            loglevel="INFO",
            extra=["--without-heartbeat"],
        )
        with open(path, "ab") as log:
            proc = subprocess.Popen(
                self.cluster.command(host, argv),
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=ROOT,
            )
        self.procs[key] = proc
        self._wait_ready(proc, path, offset)
        return proc

    def start_all(self, concurrency: int = 1) -> None:
        for host in self.cluster.hosts:
            self.start(host, concurrency)

    @staticmethod
    def _wait_ready(proc: subprocess.Popen[bytes], path: Path, offset: int) -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise HarnessError(f"worker exited: {path.read_text(errors='replace')[-2000:]}")
            if b"ready." in path.read_bytes()[offset:]:
                return
            time.sleep(0.2)
        raise HarnessError(f"worker did not start: {path.read_text(errors='replace')[-2000:]}")

    def wait_answering(self, host: Host, timeout: float) -> None:
        """Wait until every worker of ``host`` answers a broadcast ping over its own broker link.

        A healed host's hung connections resume only at TCP's next retransmission, which backs
        off exponentially while the link is down: after a minute's cut, up to about a minute.
        """

        def answered(control: Any, names: list[str]) -> bool:
            replies = control.ping(destination=names, timeout=1.0)
            return set(names) <= {name for reply in replies for name in reply}

        self._until(host, timeout, answered, "did not answer")

    def wait_idle(self, host: Host, timeout: float) -> None:
        """Wait until no worker of ``host`` has a task in hand.

        A pool child that was publishing to the broker when the link went down waits, like the
        main process's connections, for TCP's next retransmission after the heal: until then
        the host answers pings but takes no new task.
        """

        def idle(control: Any, names: list[str]) -> bool:
            active = control.inspect(destination=names, timeout=1.0).active() or {}
            return set(names) <= set(active) and not any(active.values())

        self._until(host, timeout, idle, "still busy")

    def _until(
        self, host: Host, timeout: float, done: Callable[[Any, list[str]], bool], failure: str
    ) -> None:
        """Ask the workers of ``host`` over Celery's control channel until ``done`` says so."""
        from workers.celery_app import make_app
        from workers.settings import Settings

        names = sorted(
            f"{key.split('-', 1)[1]}@{host.name}" for key in self.procs if key.startswith(host.name)
        )
        local = {**self.env, "FERRY_REDIS_URL": self.redis_local}
        app = make_app(Settings.from_env(local))
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if done(app.control, names):
                    return
        finally:
            app.close()
        raise HarnessError(f"{names} {failure} within {timeout:.0f}s")

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()

    def logs(self) -> str:
        return "\n".join(
            f"== {p.name}\n" + p.read_text(errors="replace") for p in self.log_dir.glob("*.log")
        )


@contextlib.contextmanager
def cluster(hosts: int) -> Iterator[Cluster]:
    built = Cluster(hosts)
    try:
        yield built
    finally:
        built.close()
