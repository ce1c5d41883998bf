# mypy: disallow-untyped-decorators=False
"""Worker lifecycle hooks: start the sweeper with the worker, stop it with the worker."""

# Celery's decorators are untyped: the file-level opt-out above says so.
from __future__ import annotations

from typing import Any

from celery.signals import worker_ready, worker_shutdown

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
