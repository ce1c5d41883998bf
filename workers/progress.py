"""Live progress: counters, a capped stream of recent errors and worker heartbeats.

Redis holds only what can be lost and rebuilt: the ledger stays the truth,
and ``ferry status`` falls back to it when Redis was flushed. Keys carry the
ledger's identity (run ids are only unique inside one ledger: workers.identity),
run ids and worker names, never row values. ``MemoryProgress`` is the in-process
twin for unit tests (like dramatiq's stub broker), not a stand-in for Redis
in integration tests.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict, deque
from collections.abc import Mapping
from typing import Any, Protocol

import redis

from workers.identity import check

log = logging.getLogger("ferry.progress")
ERRORS_KEPT = 200
HEARTBEAT_TTL = 30


def counters_key(ledger: str, run_id: int) -> str:
    return f"ferry:{check(ledger)}:run:{int(run_id)}:counters"


def errors_key(ledger: str, run_id: int) -> str:
    return f"ferry:{check(ledger)}:run:{int(run_id)}:errors"


def heartbeat_key(ledger: str, worker: str) -> str:
    return f"ferry:{check(ledger)}:worker:{worker}"


class ProgressStore(Protocol):
    def chunk_done(self, run_id: int, counts: Mapping[str, int]) -> None: ...
    def error(self, run_id: int, chunk_no: int, kind: str, message: str) -> None: ...
    def heartbeat(self, worker: str, info: Mapping[str, Any]) -> None: ...
    def counters(self, run_id: int) -> dict[str, int]: ...
    def recent_errors(self, run_id: int, limit: int = 20) -> list[dict[str, Any]]: ...
    def workers(self) -> list[dict[str, Any]]: ...


class RedisProgress:
    """Progress of ledger ``ledger``'s runs in Redis; every call is best effort and never
    fails a chunk."""

    def __init__(self, url: str, ledger: str) -> None:
        self.ledger = check(ledger)
        self.client: Any = redis.Redis.from_url(
            url, socket_timeout=2, socket_connect_timeout=2, decode_responses=True
        )

    def chunk_done(self, run_id: int, counts: Mapping[str, int]) -> None:
        try:
            pipe = self.client.pipeline(transaction=False)
            key = counters_key(self.ledger, run_id)
            for name, value in counts.items():
                pipe.hincrby(key, name, int(value))
            pipe.hset(key, "updated_at", f"{time.time():.3f}")
            pipe.expire(key, 7 * 86400)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("progress not recorded for run %s: %s", run_id, type(exc).__name__)

    def error(self, run_id: int, chunk_no: int, kind: str, message: str) -> None:
        try:
            self.client.xadd(
                errors_key(self.ledger, run_id),
                {"chunk": chunk_no, "kind": kind, "message": message, "at": f"{time.time():.3f}"},
                maxlen=ERRORS_KEPT,
                approximate=True,
            )
        except redis.RedisError as exc:
            log.warning("error event not recorded for run %s: %s", run_id, type(exc).__name__)

    def heartbeat(self, worker: str, info: Mapping[str, Any]) -> None:
        try:
            self.client.set(
                heartbeat_key(self.ledger, worker), json.dumps(dict(info)), ex=HEARTBEAT_TTL
            )
        except redis.RedisError as exc:
            log.warning("heartbeat not recorded: %s", type(exc).__name__)

    def queue_length(self, queue: str) -> int:
        """Messages waiting in a Celery queue (kombu keeps each queue as a Redis list)."""
        try:
            return int(self.client.llen(queue))
        except redis.RedisError:
            return 1  # unknown: assume something is queued rather than send twice

    def counters(self, run_id: int) -> dict[str, int]:
        try:
            raw = self.client.hgetall(counters_key(self.ledger, run_id))
        except redis.RedisError:
            return {}
        return {k: int(float(v)) for k, v in raw.items() if k != "updated_at"}

    def recent_errors(self, run_id: int, limit: int = 20) -> list[dict[str, Any]]:
        try:
            entries = self.client.xrevrange(errors_key(self.ledger, run_id), count=limit)
        except redis.RedisError:
            return []
        return [dict(fields) for _, fields in entries]

    def workers(self) -> list[dict[str, Any]]:
        try:
            keys = list(self.client.scan_iter(match=heartbeat_key(self.ledger, "*"), count=500))
            values = self.client.mget(keys) if keys else []
        except redis.RedisError:
            return []
        return [json.loads(v) for v in values if v]


class MemoryProgress:
    """An in-process ProgressStore for unit tests and single-process tools."""

    def __init__(self) -> None:
        self._counters: dict[int, dict[str, int]] = defaultdict(dict)
        self._errors: dict[int, deque[dict[str, Any]]] = defaultdict(
            lambda: deque(maxlen=ERRORS_KEPT)
        )
        self._workers: dict[str, dict[str, Any]] = {}

    def chunk_done(self, run_id: int, counts: Mapping[str, int]) -> None:
        bucket = self._counters[run_id]
        for name, value in counts.items():
            bucket[name] = bucket.get(name, 0) + int(value)

    def error(self, run_id: int, chunk_no: int, kind: str, message: str) -> None:
        self._errors[run_id].append(
            {"chunk": str(chunk_no), "kind": kind, "message": message, "at": f"{time.time():.3f}"}
        )

    def heartbeat(self, worker: str, info: Mapping[str, Any]) -> None:
        self._workers[worker] = dict(info)

    def counters(self, run_id: int) -> dict[str, int]:
        return dict(self._counters.get(run_id, {}))

    def recent_errors(self, run_id: int, limit: int = 20) -> list[dict[str, Any]]:
        return list(reversed(self._errors.get(run_id, deque())))[:limit]

    def workers(self) -> list[dict[str, Any]]:
        return list(self._workers.values())
