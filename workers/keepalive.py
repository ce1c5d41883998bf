"""Slow is not dead: a chunk transaction's session kept alive while Python works.

A chunk transaction runs under ``idle_in_transaction_session_timeout`` (by default the
lease): a worker cut off from the network leaves its session idle in transaction, holding
the chunk's ledger row and its rows' locks, and only that timeout frees them so the sweeper
can re-queue the chunk. But the pandas path leaves the session idle for as long as the
user's transform and Python rules run, and an enrichment call or a big chunk may
legitimately take minutes: on main, a 40 s transform failed its chunk with 25P03.

While they run, a thread of the worker's own process sends ``SELECT 1`` on the chunk's
session every third of that timeout. A live worker's session never idles out; a worker that
is really gone still frees its chunk as before: killed, its socket closes and PostgreSQL
rolls the transaction back at once (the sweeper re-queues the chunk when its lease ends);
cut off or frozen, its pings stop with it and the timeout ends the session. The pings stop
after ``limit`` seconds too (FERRY_TRANSFORM_TIMEOUT), so a transform stuck for ever lets
its session and its locks go one timeout later.

The thread touches the connection only while the transform runs, when the chunk's own code
does not, and ``__exit__`` waits for a ping in flight: the chunk's next statement never
meets one (psycopg would serialise them, but a ping inside a COPY would break it).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

import psycopg

from workers.staging import RunContext

log = logging.getLogger("ferry.keepalive")
P = ParamSpec("P")
R = TypeVar("R")


class SessionKeepalive:
    """``with SessionKeepalive(conn, interval, limit):`` pings ``conn`` while the block runs."""

    def __init__(self, conn: psycopg.Connection[Any], interval: float, limit: float) -> None:
        self.conn = conn
        self.interval = interval
        self.limit = limit
        self.pings = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ferry-keepalive", daemon=True)

    def __enter__(self) -> SessionKeepalive:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self._stop.wait(self.interval):
            if time.monotonic() >= deadline:
                log.warning(
                    "a transform ran past %.0fs (FERRY_TRANSFORM_TIMEOUT): its session is left"
                    " to idle out",
                    self.limit,
                )
                return
            try:
                self.conn.execute("SELECT 1")
            except psycopg.Error as exc:  # the chunk's next statement meets the same fault
                log.info("keepalive stopped: %s", type(exc).__name__)
                return
            self.pings += 1


def kept_alive(
    fn: Callable[P, R], conn: psycopg.Connection[Any], interval: float, limit: float
) -> Callable[P, R]:
    """``fn``, keeping ``conn``'s session alive while each call runs (see the module)."""

    @functools.wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        with SessionKeepalive(conn, interval, limit):
            return fn(*args, **kwargs)

    return call


def kept_alive_context(
    ctx: RunContext, conn: psycopg.Connection[Any], *, interval: float, limit: float
) -> RunContext:
    """The run's context with its transform and Python rules keeping ``conn``'s session
    alive while they run (the pandas path's slow parts: nothing else idles in a chunk)."""
    assert ctx.transform is not None
    return replace(
        ctx,
        transform=kept_alive(ctx.transform, conn, interval, limit),
        checks=tuple((i, kept_alive(check, conn, interval, limit)) for i, check in ctx.checks),
    )
