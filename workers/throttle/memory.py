"""An in-process Limiter with the Redis backend's semantics, for unit tests."""

from __future__ import annotations

import time
from collections.abc import Callable

from workers.throttle.redis import TURN_GRACE, smoothed


class MemoryLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.slots: dict[str, dict[str, float]] = {}
        self.buckets: dict[str, tuple[float, float]] = {}
        self.lines: dict[str, dict[str, float]] = {}  # member: when it joined
        self.due: dict[str, dict[str, float]] = {}  # member: when it is due back
        self.typicals: dict[str, float] = {}

    def acquire(self, scope: str, holder: str, limit: int, lease: float) -> bool:
        now = self.clock()
        held = {h: end for h, end in self.slots.get(scope, {}).items() if end > now}
        if holder in held or len(held) < limit:
            held[holder] = now + lease
            self.slots[scope] = held
            return True
        self.slots[scope] = held
        return False

    def release(self, scope: str, holder: str) -> None:
        self.slots.get(scope, {}).pop(holder, None)

    def take(self, scope: str, amount: float, rate: float, *, force: bool = False) -> float:
        now = self.clock()
        tokens, ts = self.buckets.get(scope, (rate, now))
        tokens = min(rate, tokens + (now - ts) * rate)
        if tokens < 0 and not force:
            self.buckets[scope] = (tokens, now)
            return -tokens / rate
        self.buckets[scope] = (tokens - amount, now)
        return 0.0

    def charge(self, scope: str, amount: float, rate: float) -> None:
        self.take(scope, amount, rate, force=True)
        self.typicals[scope] = smoothed(self.typicals.get(scope), amount)

    def typical(self, scope: str) -> float | None:
        return self.typicals.get(scope)

    def turn(self, scope: str, member: str, earliest: float, pace: float, horizon: float) -> float:
        now = self.clock()
        line = self.lines.setdefault(scope, {})
        due = self.due.setdefault(scope, {})
        for gone in [m for m, t in due.items() if t < now - TURN_GRACE]:
            line.pop(gone, None)
            due.pop(gone)
        line.setdefault(member, now)
        place = sorted(line, key=line.__getitem__).index(member)
        delay = min(earliest + place * pace, horizon)
        due[member] = now + delay
        return delay

    def leave(self, scope: str, member: str) -> None:
        self.lines.get(scope, {}).pop(member, None)
        self.due.get(scope, {}).pop(member, None)

    def clear_line(self, scope: str) -> None:
        self.lines.pop(scope, None)
        self.due.pop(scope, None)
