"""The gate every chunk passes before it may touch the table.

In order: the run's control state (paused, cancelled, stopped), the database's
health, a slot of the run's concurrency, rows from its rows/s budget, and
database time (each chunk is charged what its transaction took, so the run
keeps at most ``db_load`` connections busy on average). A task
that must wait gives its slot back and is retried with a countdown: it never
holds a worker process while waiting. Control state and health are cached a
second or two per worker, so a ``ferry pause`` or ``throttle`` reaches every
worker within seconds without a query per chunk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import psycopg
import redis
from psycopg import sql

from workers.db import Database
from workers.ledger import q
from workers.limits import Limits
from workers.model import RunSpec
from workers.throttle import Limiter

log = logging.getLogger("ferry.gate")
CONTROL_TTL = 1.0
HEALTH_TTL = 2.0


@dataclass(frozen=True, slots=True)
class Decision:
    kind: Literal["go", "wait", "defer", "stop"]
    delay: float = 0.0
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Health:
    metrics: dict[str, float]
    level: Literal["ok", "soft", "critical"]
    reason: str


def judge_health(metrics: dict[str, float], limits: Limits) -> Health:
    level: Literal["ok", "soft", "critical"] = "ok"
    reasons = []
    for name, (soft, critical) in limits.health.items():
        value = metrics.get(name, 0.0)
        if value >= critical:
            level = "critical"
            reasons.append(f"{name} {value:g} >= {critical:g}")
        elif value >= soft:
            if level == "ok":
                level = "soft"
            reasons.append(f"{name} {value:g} >= {soft:g}")
    return Health(metrics, level, "; ".join(reasons))


class Gate:
    def __init__(
        self,
        db: Database,
        limiter: Limiter,
        lease: float,
        clock: Callable[[], float] = time.monotonic,
        memory_mb: int | None = None,
    ) -> None:
        self.db = db
        self.memory_mb = memory_mb
        self.limiter = limiter
        self.lease = lease
        self.clock = clock
        self._control: dict[int, tuple[float, str, Limits]] = {}
        self._targets: dict[int, int] = {}
        self._health: dict[str, tuple[float, Health]] = {}

    def control(self, run_id: int) -> tuple[str, Limits]:
        cached = self._control.get(run_id)
        if cached and self.clock() - cached[0] < CONTROL_TTL:
            return cached[1], cached[2]
        with self.db.transaction() as conn:
            row = conn.execute(q("run_control"), {"run_id": run_id}).fetchone()
        status = row["status"] if row else "missing"
        limits = Limits.from_json(row["limits"] if row else None)
        self._control[run_id] = (self.clock(), status, limits)
        if row and row["target_rows"]:
            self._targets[run_id] = int(row["target_rows"])
        return status, limits

    def health(self, spec: RunSpec, limits: Limits) -> Health:
        table = sql.Identifier(spec.schema, spec.table).as_string(None)
        cached = self._health.get(table)
        if cached and self.clock() - cached[0] < HEALTH_TTL:
            return judge_health(cached[1].metrics, limits)
        started = time.perf_counter()
        with self.db.transaction() as conn:
            row = conn.execute(q("db_health"), {"table": table}).fetchone()
        metrics = {k: float(v) for k, v in (row or {}).items()}
        metrics["probe_ms"] = (time.perf_counter() - started) * 1000
        health = judge_health(metrics, limits)
        self._health[table] = (self.clock(), health)
        return health

    def check(self, run_id: int, spec: RunSpec, holder: str, rows: int) -> Decision:
        if self.memory_mb and resident_mb() > self.memory_mb:
            # Over its memory limit this process declines new chunks; Celery recycles it
            # after its current task (worker_max_memory_per_child), then it takes work again.
            return Decision("wait", _jitter(2.0), "worker memory limit")
        status, limits = self.control(run_id)
        if status == "paused":
            return Decision("defer", reason="run paused")
        if status != "running":
            return Decision("stop", reason=f"run {status}")
        try:
            health = self.health(spec, limits)
        except psycopg.Error as exc:
            return Decision("wait", _jitter(2.0), f"health probe failed: {type(exc).__name__}")
        if health.level == "critical":
            self._pause(run_id, health.reason)
            return Decision("defer", reason=f"paused: {health.reason}")
        cap = limits.max_concurrency
        if health.level == "soft":
            cap = max(1, cap // 2)  # back off: fewer chunks in flight
        try:
            if not self.limiter.acquire(f"run:{run_id}", holder, cap, self.lease):
                return Decision("wait", _jitter(limits.chunk_time), "concurrency")
            if limits.rows_per_second:
                # Chunks are cut to the run's target size: charge what a chunk now holds.
                rows = min(rows, self._targets.get(run_id, rows))
                wait = self.limiter.take(f"run:{run_id}", rows, limits.rows_per_second)
                if wait > 0:
                    self.limiter.release(f"run:{run_id}", holder)
                    return Decision("wait", wait + _jitter(0.05), "rows per second")
            if limits.db_load:
                # In debt from the chunks that just ran: wait until the run's database time
                # is back under its average load.
                wait = self.limiter.take(db_time_scope(run_id), 0, limits.db_load)
                if wait > 0:
                    self.limiter.release(f"run:{run_id}", holder)
                    return Decision("wait", wait + _jitter(0.05), "database load")
        except redis.RedisError as exc:
            return Decision("wait", _jitter(2.0), f"limiter unavailable: {type(exc).__name__}")
        if health.level == "soft":
            return Decision("go", reason=f"backing off: {health.reason}")
        return Decision("go")

    def done(self, run_id: int, holder: str, seconds: float = 0.0) -> None:
        """Give the slot back and charge the database time the chunk took."""
        with contextlib.suppress(redis.RedisError):  # else the slot's lease ends it
            self.limiter.release(f"run:{run_id}", holder)
        cached = self._control.get(run_id)  # as check() just read it: no query here
        if cached is None or seconds <= 0 or not cached[2].db_load:
            return
        with contextlib.suppress(redis.RedisError):  # a lost charge only speeds the run up
            self.limiter.charge(db_time_scope(run_id), seconds, cached[2].db_load)

    def _pause(self, run_id: int, reason: str) -> None:
        with self.db.transaction() as conn:
            paused = conn.execute(q("pause_run"), {"run_id": run_id}).fetchone()
            if paused:
                conn.execute(
                    q("add_alert"),
                    {
                        "run_id": run_id,
                        "type": "health_pause",
                        "message": f"paused by a worker: {reason}",
                    },
                )
                log.warning("run %s paused: %s", run_id, reason)
        self._control.pop(run_id, None)


def db_time_scope(run_id: int) -> str:
    return f"run:{run_id}:db-time"


def resident_mb() -> float:
    """This process's resident memory, from /proc (0 where there is none)."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _jitter(base: float) -> float:
    return base * random.uniform(0.5, 1.5)
