"""Post a run's health alerts to a webhook, each once, never holding up ``ferry status``.

``ferry status RUN --watch --alert-webhook URL`` recomputes MigrationHealth
every two seconds; an alert stays in it as long as its cause lasts. Each
alert is posted once per watch, identified by (run, type, message): a
different message (3 failed chunks, then 4) is news and posted again.

Delivery happens on a daemon thread with a short timeout, so a slow or dead
endpoint cannot stall the dashboard, and a failure is one warning line on
stderr naming the endpoint without its credentials or query string.
Credentials in the URL (``https://user:token@host/...``) become a Basic
``Authorization`` header and are never printed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import queue
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any, TextIO
from urllib.parse import unquote, urlsplit, urlunsplit

from migrations.errors import BadInput

DEFAULT_TIMEOUT_S = 3.0
Identity = tuple[int, str, str]


def redact(url: str) -> str:
    """``scheme://host[:port]/path``: no user, password, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _target(url: str) -> tuple[str, dict[str, str]]:
    """The URL to request (credentials removed) and its headers; bad URLs are BadInput."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a malformed port
    except ValueError:
        raise BadInput("--alert-webhook is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadInput("--alert-webhook must be an http:// or https:// URL with a host")
    headers = {"Content-Type": "application/json", "User-Agent": "ferry-alerts"}
    if parts.username is not None:
        secret = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(secret.encode()).decode()
    netloc = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    if ":" in parts.hostname:  # IPv6 literal
        netloc = f"[{parts.hostname}]" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")), headers


def payloads(health: Mapping[str, Any]) -> list[tuple[Identity, dict[str, Any]]]:
    """One JSON body per alert of a MigrationHealth, with the identity it is deduplicated by."""
    out = []
    for alert in health.get("alerts", []):
        identity = (int(health["run_id"]), str(alert["type"]), str(alert["message"]))
        out.append(
            (
                identity,
                {
                    "source": "ferry",
                    "run_id": health["run_id"],
                    "backfill": health.get("backfill"),
                    "table": health.get("table"),
                    "status": health.get("status"),
                    "run_status": health.get("run_status"),
                    "alert": {
                        "type": alert["type"],
                        "message": alert["message"],
                        "timestamp": alert.get("timestamp"),
                    },
                },
            )
        )
    return out


class AlertWebhook:
    """Posts each new alert once, from a background thread; see the module docstring."""

    def __init__(
        self, url: str, *, timeout: float = DEFAULT_TIMEOUT_S, warn: TextIO | None = None
    ) -> None:
        self._url, self._headers = _target(url)
        self.shown = redact(url)
        self.timeout = timeout
        self._warn = warn or sys.stderr
        self._seen: set[Identity] = set()
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.sent = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="ferry-webhook", daemon=True)
        self._thread.start()

    def notify(self, health: Mapping[str, Any]) -> int:
        """Queue the alerts not posted yet; returns how many. Never blocks, never raises."""
        fresh = 0
        for identity, body in payloads(health):
            if identity in self._seen:
                continue
            self._seen.add(identity)
            self._queue.put(body)
            fresh += 1
        return fresh

    def __enter__(self) -> AlertWebhook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, wait: float | None = None) -> None:
        """Give queued alerts ``wait`` seconds (default: one timeout) to go out, then say
        how many did not: leaving ``ferry status`` is never held up longer than that."""
        self._queue.put(None)
        self._thread.join(self.timeout + 0.5 if wait is None else wait)
        if self._thread.is_alive():
            left = self._queue.qsize()  # the sentinel stands for the post in progress
            self._fail(f"gave up on {left} alert(s) not delivered at exit")

    def _run(self) -> None:
        while True:
            body = self._queue.get()
            if body is None:
                return
            self._post(body)

    def _post(self, body: Mapping[str, Any]) -> None:
        request = urllib.request.Request(
            self._url, data=json.dumps(body).encode(), headers=self._headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read(1024)
            self.sent += 1
        except urllib.error.HTTPError as exc:
            self._fail(f"HTTP {exc.code}")
        except Exception as exc:  # any failure of delivery is a warning, never a crash
            reason = getattr(exc, "reason", exc)
            self._fail(type(reason if isinstance(reason, BaseException) else exc).__name__)

    def _fail(self, why: str) -> None:
        self.failed += 1
        with contextlib.suppress(OSError, ValueError):
            print(f"ferry: warning: alert webhook {self.shown} failed: {why}", file=self._warn)


class NoWebhook:
    """What ``ferry status`` uses without ``--alert-webhook``: alerts go nowhere."""

    def notify(self, health: Mapping[str, Any]) -> int:
        return 0

    def __enter__(self) -> NoWebhook:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def for_url(url: str | None, *, timeout: float = DEFAULT_TIMEOUT_S) -> AlertWebhook | NoWebhook:
    """A webhook for ``url`` (checked now: a bad URL is BadInput before anything runs)."""
    return AlertWebhook(url, timeout=timeout) if url else NoWebhook()
