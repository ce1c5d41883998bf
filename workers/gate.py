"""The gate every chunk passes before it may touch the table.

In order: the run's control state (paused, cancelled, stopped), the database's
health, a slot of the run's concurrency, rows from its rows/s budget, and
database time (each chunk is charged what its transaction took, so the run
keeps at most ``db_load`` connections busy on average). A task
that must wait gives its slot back and is retried with a countdown: it never
holds a worker process while waiting. The countdown is its turn in the run's
line (workers.throttle), at most TURN_HORIZON seconds away, so that waiting
chunks come back one by one at the pace the limits allow, not all at once.
Control state and health are cached a second or two per worker, so a ``ferry
pause`` or ``throttle`` reaches every worker within seconds without a query
per chunk.
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
from workers.throttle import Limiter, smoothed

log = logging.getLogger("ferry.gate")
CONTROL_TTL = 1.0
HEALTH_TTL = 2.0
# The longest countdown a waiting chunk is given: how late new limits (`ferry throttle`
# clears the line) reach the chunks already waiting, and far under any visibility timeout.
TURN_HORIZON = 10.0


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
        self._cost: dict[int, float] = {}  # seconds a chunk of the run took here, smoothed

    def control(self, run_id: int) -> tuple[str, Limits]:
        cached = self._control.get(run_id)
        # Only "running" is taken from the cache: a task that finds its run paused or stopped
        # asks the ledger, or a `ferry resume` within the cache's second would see its tasks
        # deferred by a stale "paused" and the run stall until the sweep sends them again.
        if cached and cached[1] == "running" and self.clock() - cached[0] < CONTROL_TTL:
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

    def check(
        self,
        run_id: int,
        spec: RunSpec,
        holder: str,
        rows: int,
        *,
        member: str,
        queued: bool = False,
    ) -> Decision:
        """May the chunk go now? ``member`` names it in the run's line of waiting chunks;
        ``queued``: its task waited before, so it may hold a place to give up once it goes."""
        decision = self._check(run_id, spec, holder, rows, member)
        if queued and decision.kind != "wait":
            with contextlib.suppress(redis.RedisError):  # an unused turn expires by itself
                self.limiter.leave(f"run:{run_id}", member)
        return decision

    def _check(self, run_id: int, spec: RunSpec, holder: str, rows: int, member: str) -> Decision:
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
        cap = limits.in_flight
        if health.level == "soft":
            cap = max(1, cap // 2)  # back off: fewer chunks in flight
        scope = f"run:{run_id}"
        rows = min(rows, self._targets.get(run_id, rows))  # chunks are cut to the target size
        try:
            if not self.limiter.acquire(scope, holder, cap, self.lease):
                # A running chunk ends in about a chunk's time; then the next may go.
                soon = self._cost.get(run_id) or limits.chunk_time
                return self._wait(run_id, member, soon, limits, cap, rows, "concurrency")
            if limits.rows_per_second:
                wait = self.limiter.take(scope, rows, limits.rows_per_second)
                if wait > 0:
                    self.limiter.release(scope, holder)
                    return self._wait(run_id, member, wait, limits, cap, rows, "rows per second")
            if limits.db_load:
                # In debt from the chunks that just ran: wait until the run's database time
                # is back under its average load.
                wait = self.limiter.take(db_time_scope(run_id), 0, limits.db_load)
                if wait > 0:
                    self.limiter.release(scope, holder)
                    return self._wait(run_id, member, wait, limits, cap, rows, "database load")
        except redis.RedisError as exc:
            return Decision("wait", _jitter(2.0), f"limiter unavailable: {type(exc).__name__}")
        if health.level == "soft":
            return Decision("go", reason=f"backing off: {health.reason}")
        return Decision("go")

    def _wait(
        self,
        run_id: int,
        member: str,
        earliest: float,
        limits: Limits,
        cap: int,
        rows: int,
        reason: str,
    ) -> Decision:
        pace = self._pace(run_id, limits, cap, rows)
        delay = self.limiter.turn(f"run:{run_id}", member, earliest, pace, TURN_HORIZON)
        return Decision("wait", max(delay, 0.01), reason)

    def _pace(self, run_id: int, limits: Limits, cap: int, rows: int) -> float:
        """Seconds between chunk starts that the run's tightest limit allows, less a quarter.

        A chunk asked back too early only looks again, and by then it is first in line and
        told the budget's exact wait; one asked back late wastes the budget. Hence the
        quarter, and no database-load term until a chunk of the run was timed.
        """
        mine = self._cost.get(run_id)
        pace = (mine or limits.chunk_time) / cap
        if limits.rows_per_second:
            pace = max(pace, rows / limits.rows_per_second)
        if limits.db_load:
            # What chunks of the run took on any worker (this one may not have run one yet).
            typical = self.limiter.typical(db_time_scope(run_id)) or mine
            if typical:
                pace = max(pace, typical / limits.db_load)
        return 0.75 * pace

    def done(self, run_id: int, holder: str, seconds: float = 0.0) -> None:
        """Give the slot back and charge the database time the chunk took."""
        with contextlib.suppress(redis.RedisError):  # else the slot's lease ends it
            self.limiter.release(f"run:{run_id}", holder)
        if seconds > 0:
            self._cost[run_id] = smoothed(self._cost.get(run_id), seconds)
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
