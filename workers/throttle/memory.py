"""An in-process Limiter with the Redis backend's semantics, for unit tests."""

from __future__ import annotations

import time
from collections.abc import Callable


class MemoryLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.slots: dict[str, dict[str, float]] = {}
        self.buckets: dict[str, tuple[float, float]] = {}

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
