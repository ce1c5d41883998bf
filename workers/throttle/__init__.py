"""Capacity limits shared by every worker of a run: one interface, a Redis backend.

A lease-based semaphore bounds the chunks in flight (a killed worker's slot
frees itself when its lease ends) and a token bucket bounds rows per second
(it may go into debt by one chunk, so any chunk size fits any rate); a second
bucket, charged after each chunk with the seconds its transaction took, bounds
the database time a run takes (its average load, in busy connections). Adding
workers only fills the budget, never exceeds it. ``MemoryLimiter`` is the
in-process twin for unit tests.
"""

from __future__ import annotations

from typing import Protocol

from workers.throttle.memory import MemoryLimiter
from workers.throttle.redis import RedisLimiter


class Limiter(Protocol):
    def acquire(self, scope: str, holder: str, limit: int, lease: float) -> bool:
        """Take one of ``limit`` slots of ``scope`` for ``lease`` seconds (renewable)."""

    def release(self, scope: str, holder: str) -> None:
        """Give the slot back."""

    def take(self, scope: str, amount: float, rate: float) -> float:
        """Spend ``amount`` of a ``rate``/s budget: 0 when granted, else seconds to wait."""

    def charge(self, scope: str, amount: float, rate: float) -> None:
        """Spend ``amount`` already used, into debt if need be (costs known afterwards)."""


__all__ = ["Limiter", "MemoryLimiter", "RedisLimiter"]
