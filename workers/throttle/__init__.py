"""Capacity limits shared by every worker of a run: one interface, a Redis backend.

A lease-based semaphore bounds the chunks in flight (a killed worker's slot
frees itself when its lease ends) and a token bucket bounds rows per second
(it may go into debt by one chunk, so any chunk size fits any rate); a second
bucket, charged after each chunk with the seconds its transaction took, bounds
the database time a run takes (its average load, in busy connections). Adding
workers only fills the budget, never exceeds it.

A chunk that must wait takes a place in the run's line and is retried when its
turn should come: its place times the run's pace. Without the line every
waiting task would be retried when the budget next allows one chunk: the
whole backlog (a worker holds any number of countdown tasks) woke together,
one went, the rest were sent again, dozens of Celery round trips a second
spent on a run that is meant to be gentle. ``MemoryLimiter`` is the
in-process twin for unit tests.
"""

from __future__ import annotations

from typing import Protocol

from workers.throttle.memory import MemoryLimiter
from workers.throttle.redis import RedisLimiter, smoothed


class Limiter(Protocol):
    def acquire(self, scope: str, holder: str, limit: int, lease: float) -> bool:
        """Take one of ``limit`` slots of ``scope`` for ``lease`` seconds (renewable)."""

    def release(self, scope: str, holder: str) -> None:
        """Give the slot back."""

    def take(self, scope: str, amount: float, rate: float) -> float:
        """Spend ``amount`` of a ``rate``/s budget: 0 when granted, else seconds to wait."""

    def charge(self, scope: str, amount: float, rate: float) -> None:
        """Spend ``amount`` already used, into debt if need be (costs known afterwards)."""

    def typical(self, scope: str) -> float | None:
        """The smoothed charge of ``scope``'s bucket (a chunk's database time), once charged."""

    def turn(self, scope: str, member: str, earliest: float, pace: float, horizon: float) -> float:
        """Seconds until ``member`` should look again: ``earliest`` plus its place in
        ``scope``'s line (kept while it waits; a newcomer joins the end) times ``pace``; at
        most ``horizon``, so that it looks again before its broker forgets it."""

    def leave(self, scope: str, member: str) -> None:
        """Take ``member`` out of the line (it went, or it never will)."""

    def clear_line(self, scope: str) -> None:
        """Forget ``scope``'s line: new limits make a new one."""


__all__ = ["Limiter", "MemoryLimiter", "RedisLimiter", "smoothed"]
