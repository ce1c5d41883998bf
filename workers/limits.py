"""A run's limits: what ``ferry throttle`` changes at runtime, stored with the run.

Defaults are deliberately gentle: two chunks in flight (one while the db load
is below 1), half-second chunks, chunk transactions busy 0.15 of a database
connection on average (``db_load``), and database-health thresholds past which
workers back off (soft) or pause the run (critical). The db-load default is
what kept an OLTP load that already saturates a 2-core server near 2x its p99
and at 70 % or more of its throughput (bench/oltp_impact.py: the figures move
from run to run); a DBA with spare cores raises it at runtime
(``ferry throttle RUN --db-load 2``) and the backfill speeds up within seconds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from migrations.errors import BadInput

# metric: (soft, critical). Backends active, oldest open transaction (s), replica replay
# lag (s), lock waits on the target table, health probe latency (ms).
DEFAULT_HEALTH: dict[str, tuple[float, float]] = {
    "active": (32, 128),
    "oldest_xact_s": (300, 3600),
    "replica_lag_s": (5, 60),
    "lock_waits": (4, 32),
    "probe_ms": (100, 2000),
}


DEFAULT_DB_LOAD = 0.15


@dataclass(frozen=True, kw_only=True)
class Limits:
    max_concurrency: int = 2
    rows_per_second: float | None = None
    chunk_time: float = 0.5
    # Seconds of chunk transactions per wall-clock second, across all workers of the run: the
    # average number of database connections the run keeps busy. None: no bound.
    db_load: float | None = DEFAULT_DB_LOAD
    health: Mapping[str, tuple[float, float]] = field(default_factory=lambda: DEFAULT_HEALTH)

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Limits:
        data = data or {}
        health = dict(DEFAULT_HEALTH)
        for name, pair in (data.get("health") or {}).items():
            health[name] = (float(pair[0]), float(pair[1]))
        return cls(
            max_concurrency=int(data.get("max_concurrency", 2)),
            rows_per_second=(
                float(data["rows_per_second"]) if data.get("rows_per_second") else None
            ),
            chunk_time=float(data.get("chunk_time", 0.5)),
            db_load=_optional(data.get("db_load", DEFAULT_DB_LOAD)),
            health=health,
        ).checked()

    @property
    def in_flight(self) -> int:
        """Chunks that may run at once: a run bounded to an average load of 0.15 busy
        connections never keeps two busy together (two chunks side by side take both cores
        of a small server from the application, however long the run then rests)."""
        if self.db_load is None:
            return self.max_concurrency
        return max(1, min(self.max_concurrency, math.ceil(self.db_load)))

    @property
    def window(self) -> int:
        """Chunks of the run sent to the broker and not yet settled (the rest wait in the
        ledger): twice those that may run at once, so that a worker finishing a chunk finds
        the next one queued, while the chunks that wait for the throttle stay few."""
        return 2 * self.in_flight

    def to_json(self) -> dict[str, Any]:
        return {
            "max_concurrency": self.max_concurrency,
            "rows_per_second": self.rows_per_second,
            "chunk_time": self.chunk_time,
            "db_load": self.db_load or 0,
            "health": {k: list(v) for k, v in self.health.items()},
        }

    def evolve(self, **changes: Any) -> Limits:
        """These limits with the given ones changed; None keeps one, a db_load of 0 lifts it."""
        kept = {k: v for k, v in changes.items() if v is not None}
        if kept.get("db_load") == 0:
            kept["db_load"] = None
        return replace(self, **kept).checked()

    def checked(self) -> Limits:
        if self.max_concurrency < 1:
            raise BadInput("max concurrency must be at least 1")
        if self.rows_per_second is not None and self.rows_per_second <= 0:
            raise BadInput("rows per second must be positive")
        if self.chunk_time <= 0:
            raise BadInput("chunk time must be positive")
        if self.db_load is not None and self.db_load <= 0:
            raise BadInput("database load must be positive (0 on the command line: no bound)")
        for name, (soft, critical) in self.health.items():
            if name not in DEFAULT_HEALTH:
                raise BadInput(f"unknown health metric {name}")
            if soft > critical:
                raise BadInput(f"health threshold {name}: soft is above critical")
        return self


def _optional(value: Any) -> float | None:
    return float(value) if value else None
