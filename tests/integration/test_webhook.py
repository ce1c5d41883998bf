"""``ferry status --alert-webhook``: a real local HTTP server receives each alert once.

The run quarantines 1 row in 40 (above the 1 % threshold), so MigrationHealth carries an
``error_rate`` alert for as long as the watch runs; the webhook must get it once, with the
URL's credentials as Basic auth and never printed. A dead or slow endpoint must not change
what ``ferry status`` prints or returns.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest

from coordinator.webhook import AlertWebhook, payloads, redact
from migrations.errors import BadInput
from tests.conftest import ferry
from tests.helpers import launch, make_numbers_table, spec_file, wait_run

SPEC = """
b = Backfill(table="{table}", key="id", reads=["a", "b", "name"], writes=["score", "code"],
             sql={{"score": "a * 3 + b", "code": "upper(trim(name))"}},
             rules=[ValidationRule(field="code", type="format", condition="^[A-Z ]+$",
                                   error_message="code must be letters", action="skip")],
             chunk_size=200)
"""


@dataclass
class Receiver:
    """What the local endpoint saw; ``delay`` and ``status`` shape how it answers."""

    delay: float = 0.0
    status: int = 204
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def endpoint() -> Iterator[tuple[Receiver, int]]:
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with receiver.lock:
                receiver.requests.append(
                    {
                        "path": self.path,
                        "auth": self.headers.get("Authorization"),
                        "type": self.headers.get("Content-Type"),
                        "body": json.loads(body),
                    }
                )
            time.sleep(receiver.delay)
            self.send_response(receiver.status)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield receiver, int(server.server_address[1])
    server.shutdown()
    server.server_close()


def _table(db: psycopg.Connection[Any], table: str, rows: int) -> None:
    make_numbers_table(db, table, rows)
    db.execute(f"UPDATE {table} SET name = CASE WHEN id % 40 = 0 THEN 'x1' ELSE 'plain name' END")


@pytest.mark.usefixtures("workers")
def test_watch_posts_each_alert_once_with_basic_auth(
    db: psycopg.Connection[Any],
    env: dict[str, str],
    tmp_path: Path,
    endpoint: tuple[Receiver, int],
) -> None:
    receiver, port = endpoint
    _table(db, "hook_watch", 3000)
    path = spec_file(tmp_path, SPEC.format(table="hook_watch"))
    # a budget of 300 rows/s: about ten seconds, so the watch (a second or more to start on
    # a loaded machine) still polls the same alert again
    run_id = launch(env, f"{path}:b", "--rows-per-second", "300")
    url = f"http://alice:s%3Acret@127.0.0.1:{port}/hooks/ferry?token=t0ps3cret"
    proc = ferry("status", str(run_id), "--watch", "--alert-webhook", url, env=env, timeout=120)
    assert wait_run(db, run_id, timeout=5) == "completed_with_errors"
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("health ") >= 2  # the dashboard refreshed at least once
    with receiver.lock:
        seen = list(receiver.requests)
    identities = [(r["body"]["alert"]["type"], r["body"]["alert"]["message"]) for r in seen]
    assert len(identities) == len(set(identities))  # never the same alert twice
    assert ("error_rate", "2.5% of processed rows quarantined") in identities
    for r in seen:
        assert r["path"] == "/hooks/ferry?token=t0ps3cret"
        assert r["type"] == "application/json"
        assert r["auth"] == "Basic " + base64.b64encode(b"alice:s:cret").decode()
        assert r["body"]["run_id"] == run_id and r["body"]["source"] == "ferry"
        assert r["body"]["table"] == "public.hook_watch"
    for secret in ("s%3Acret", "s:cret", "t0ps3cret", "alice"):
        assert secret not in proc.stdout + proc.stderr


@pytest.mark.usefixtures("workers")
def test_dead_or_slow_webhook_never_changes_status(
    db: psycopg.Connection[Any],
    env: dict[str, str],
    tmp_path: Path,
    endpoint: tuple[Receiver, int],
) -> None:
    _table(db, "hook_fail", 1000)
    path = spec_file(tmp_path, SPEC.format(table="hook_fail"))
    run_id = launch(env, f"{path}:b")
    assert wait_run(db, run_id) == "completed_with_errors"
    plain = ferry("status", str(run_id), "--json", env=env)
    expected = json.loads(plain.stdout)
    # nothing listens on a port just freed
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as gone:
        dead_port = gone.server_address[1]
    dead = ferry(
        "status",
        str(run_id),
        "--json",
        "--alert-webhook",
        f"http://bob:pw1@127.0.0.1:{dead_port}/x?k=secretq",
        env=env,
    )
    assert dead.returncode == plain.returncode == 0
    got = json.loads(dead.stdout)
    assert got["status"] == expected["status"] == "degraded"
    assert [a["type"] for a in got["alerts"]] == [a["type"] for a in expected["alerts"]]
    warning = f"ferry: warning: alert webhook http://127.0.0.1:{dead_port}/x failed: "
    assert warning in dead.stderr
    assert "pw1" not in dead.stderr and "secretq" not in dead.stderr and "bob" not in dead.stderr

    receiver, port = endpoint
    receiver.delay = 30.0  # far beyond the webhook's timeout
    started = time.monotonic()
    slow = ferry(
        "status", str(run_id), "--json", "--alert-webhook", f"http://127.0.0.1:{port}/", env=env
    )
    assert time.monotonic() - started < 15
    assert slow.returncode == 0 and json.loads(slow.stdout)["status"] == "degraded"
    assert f"alert webhook http://127.0.0.1:{port}/ failed" in slow.stderr
    assert len(receiver.requests) >= 1  # it did reach the endpoint, which was too slow


def test_http_error_status_is_a_warning(endpoint: tuple[Receiver, int]) -> None:
    receiver, port = endpoint
    receiver.status = 500
    warnings = _Sink()
    hook = AlertWebhook(f"http://127.0.0.1:{port}/h", timeout=2, warn=warnings)  # type: ignore[arg-type]
    health = {
        "run_id": 7,
        "status": "degraded",
        "alerts": [{"type": "stalled", "message": "1 chunk(s) past their lease"}],
    }
    assert hook.notify(health) == 1
    assert hook.notify(health) == 0  # same alert again: not queued
    hook.close()
    assert hook.sent == 0 and hook.failed == 1
    assert (
        warnings.text
        == f"ferry: warning: alert webhook http://127.0.0.1:{port}/h failed: HTTP 500\n"
    )
    assert len(receiver.requests) == 1


class _Sink:
    def __init__(self) -> None:
        self.text = ""

    def write(self, s: str) -> int:
        self.text += s
        return len(s)

    def flush(self) -> None:
        return None


@pytest.mark.parametrize(
    "url",
    ["ftp://example.org/x", "http:///nohost", "not a url", "http://h:notaport/x"],
)
def test_bad_urls_are_bad_input(url: str) -> None:
    with pytest.raises(BadInput):
        AlertWebhook(url)


@pytest.mark.usefixtures("ledger_ready")
def test_bad_url_exits_2_before_anything(env: dict[str, str]) -> None:
    proc = ferry("status", "1", "--alert-webhook", "gopher://u:hunter2@host/", env=env)
    assert proc.returncode == 2
    assert proc.stderr.startswith("ferry: error: --alert-webhook must be")
    assert "hunter2" not in proc.stderr


def test_redact_and_payload_identity() -> None:
    assert redact("https://u:p@hooks.example.org:8443/a/b?token=x#f") == (
        "https://hooks.example.org:8443/a/b"
    )
    health = {
        "run_id": 3,
        "backfill": "b",
        "table": "s.t",
        "status": "degraded",
        "run_status": "running",
        "alerts": [
            {"type": "stalled", "message": "2 chunk(s) past their lease", "timestamp": "t1"},
            {"type": "stalled", "message": "3 chunk(s) past their lease", "timestamp": "t2"},
        ],
    }
    (first, body), (second, _) = payloads(health)
    assert first == (3, "stalled", "2 chunk(s) past their lease") and first != second
    assert body["alert"] == {
        "type": "stalled",
        "message": "2 chunk(s) past their lease",
        "timestamp": "t1",
    }
    assert body["status"] == "degraded" and body["run_status"] == "running"
