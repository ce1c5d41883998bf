# mypy: disallow-untyped-decorators=False
"""Worker lifecycle hooks: the sweeper with the worker, telemetry with each pool process."""

# Celery's decorators are untyped: the file-level opt-out above says so.
from __future__ import annotations

from typing import Any

from celery.signals import (
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from workers import telemetry
from workers.runtime import dispatcher, runtime
from workers.sweeper import SweeperThread

_threads: list[SweeperThread] = []


@worker_ready.connect
def start_sweeper(sender: Any = None, **_: Any) -> None:
    rt = runtime(getattr(sender, "hostname", None))
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
