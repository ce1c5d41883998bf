"""One set of services per worker process, built after the fork.

A prefork child must not share its parent's database sockets, so everything
here is keyed by pid and created on first use in each process.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from workers.db import Database
from workers.dispatch import Dispatcher
from workers.execution import ChunkExecutor
from workers.gate import Gate
from workers.ledger import Ledger
from workers.progress import RedisProgress
from workers.settings import Settings
from workers.throttle import RedisLimiter


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    db: Database
    ledger: Ledger
    progress: RedisProgress
    executor: ChunkExecutor
    gate: Gate
    worker: str
    identity: str  # the ledger's (workers.identity): names its Redis keys, tasks and queue


_RUNTIMES: dict[int, Runtime] = {}


def worker_name(hostname: str | None = None) -> str:
    return f"{hostname or socket.gethostname()}:{os.getpid()}"


def runtime(hostname: str | None = None) -> Runtime:
    pid = os.getpid()
    rt = _RUNTIMES.get(pid)
    if rt is None:
        settings = Settings.from_env()
        db = Database(settings)
        ledger = Ledger(db)
        identity = _known_identity() or ledger.identity()
        progress = RedisProgress(settings.redis_url, identity)
        name = worker_name(hostname)
        rt = Runtime(
            settings=settings,
            db=db,
            ledger=ledger,
            progress=progress,
            executor=ChunkExecutor(db, ledger, settings, progress, name, send=_send_chunks),
            gate=Gate(
                db,
                RedisLimiter(progress.client, identity),
                settings.lease_seconds,
                memory_mb=settings.worker_memory_mb,
            ),
            worker=name,
            identity=identity,
        )
        _RUNTIMES.clear()
        _RUNTIMES[pid] = rt
    return rt


def _send_chunks(run_id: int, chunk_nos: Sequence[int], queue: str | None) -> None:
    """Send the tasks of the chunks a settled chunk released, to the run's queue."""
    dispatcher(runtime()).send_chunks(run_id, chunk_nos, queue=queue)


def dispatcher(rt: Runtime) -> Dispatcher:
    from workers.celery_app import default_app

    return Dispatcher(default_app(), rt.settings.queue_for(rt.identity), rt.identity)


def _known_identity() -> str | None:
    """The identity the worker's app read at start-up (saves each pool process a query)."""
    from workers.celery_app import default_app

    known = default_app().conf.get("ferry_ledger")
    return str(known) if known else None
