# mypy: disallow-untyped-decorators=False
"""Worker lifecycle hooks: the sweeper with the worker, telemetry with each pool process."""

# Celery's decorators are untyped: the file-level opt-out above says so.
from __future__ import annotations

import logging
import sys
import threading
from typing import Any

import sqlalchemy as sa
from celery.signals import (
    celeryd_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from migrations.errors import FerryError
from workers import telemetry
from workers.celery_app import startup_identity
from workers.identity import default_queue
from workers.runtime import Runtime, dispatcher, runtime
from workers.settings import Settings
from workers.sweeper import SweeperThread

log = logging.getLogger("ferry.worker")
_threads: list[SweeperThread] = []
# Seconds between attempts to read the ledger of a worker started while it could not.
BIND_RETRY_S = 5.0


@celeryd_init.connect
def bind_to_ledger(conf: Any = None, **_: Any) -> None:
    """Before the worker sets up its queues: read its ledger's identity and, without
    FERRY_QUEUE, make the ledger's own queue the one it consumes (no ``-Q`` needed).

    Raises SystemExit, the one exception Celery's signal dispatch lets through, when the
    queue cannot be known: one line on stderr, and the worker does not start.
    """
    settings = Settings.from_env()
    try:
        ledger = startup_identity(settings)
    except FerryError as exc:
        print(f"ferry worker: error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    if conf is None or ledger is None:
        return
    conf.ferry_ledger = ledger
    if settings.queue is None:
        conf.task_default_queue = default_queue(ledger)


@worker_ready.connect
def start_sweeper(sender: Any = None, **_: Any) -> None:
    """Bind the worker to its ledger: consume the ledger's own queue, start the sweeper.

    A worker started with FERRY_QUEUE while its database was down does this once it can
    read the ledger (tasks meanwhile are handed back, workers.tasks).
    """
    _bind(sender, in_loop=True)


def _bind(sender: Any, *, in_loop: bool) -> None:
    try:
        rt = runtime(getattr(sender, "hostname", None))
    except (sa.exc.DBAPIError, FerryError) as exc:
        why = str(exc) if isinstance(exc, FerryError) else type(exc.orig or exc).__name__
        log.warning("ledger not readable yet (%s): trying again in %.0fs", why, BIND_RETRY_S)
        retry = threading.Timer(BIND_RETRY_S, _bind, args=(sender,), kwargs={"in_loop": False})
        retry.daemon = True
        retry.start()
        return
    consume_own_queue(sender, rt, in_loop=in_loop)
    thread = SweeperThread(
        rt.ledger,
        dispatcher(rt),
        rt.progress,
        rt.worker,
        rt.settings.sweep_interval,
        stall_seconds=rt.settings.stall_seconds,
        queue_length=rt.progress.queue_length,
    )
    thread.start()
    _threads.append(thread)


def consume_own_queue(sender: Any, rt: Runtime, *, in_loop: bool) -> None:
    """Consume the ledger's own queue too when FERRY_QUEUE names a shared one: that is where
    a worker of another ledger forwards this ledger's tasks (workers.tasks._forward).

    ``sender``: the worker's consumer. In its own thread (``in_loop``) it is told directly;
    from another thread, through the worker's remote control, which runs it in that loop.
    """
    own = default_queue(rt.identity)
    if sender is None or rt.settings.queue in (None, own):
        return  # without FERRY_QUEUE the worker's default queue is its own already
    if in_loop:
        sender.add_task_queue(own)
    else:
        sender.app.control.add_consumer(own, destination=[sender.hostname], reply=False)
    log.info("consuming %s, this ledger's own queue, besides %s", own, rt.settings.queue)


@worker_shutdown.connect
def stop_sweeper(**_: Any) -> None:
    for thread in _threads:
        thread.stop()


@worker_process_init.connect
def start_telemetry(**_: Any) -> None:
    """Providers and exporter threads are made in each pool child: none survives a fork."""
    telemetry.setup("ferry-worker")


@worker_process_shutdown.connect
def stop_telemetry(**_: Any) -> None:
    telemetry.shutdown()


@worker_ready.connect
def start_telemetry_in_process(sender: Any = None, **_: Any) -> None:
    """Solo and thread pools run tasks in the main process, which forks no children."""
    pool = type(getattr(sender, "pool", None)).__module__  # sender: the worker's consumer
    if pool.endswith((".solo", ".thread")):
        telemetry.setup("ferry-worker")
