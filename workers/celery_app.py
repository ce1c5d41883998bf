"""The Celery app (``celery -A workers worker``) and its settings for long, precious tasks.

Acks late with reject-on-worker-lost: a message is acknowledged only after the
chunk's transaction ended, and comes back at once if a pool child dies. The
visibility timeout is set for broker, backend and app alike (otherwise the
1 h default wins). None of this is what keeps a chunk from being lost when a
whole worker dies: the ledger's lease sweeper is (see ``sweeper``).
"""

from __future__ import annotations

import logging
import time

import sqlalchemy as sa
from celery import Celery

from migrations.errors import BadInput, CheckFailed, NotFound
from workers.identity import default_queue
from workers.settings import Settings

log = logging.getLogger("ferry.app")
# How long a worker started without FERRY_QUEUE waits for its ledger (database down, or
# `ferry init` not run yet: `docker compose up` starts workers first) before it gives up:
# it cannot know its queue without it. It says why every STARTUP_SAY_S meanwhile.
STARTUP_WAIT_S = 300.0
STARTUP_SAY_S = 15.0
# The queue of an app that knows neither FERRY_QUEUE nor its ledger (Flower without a
# database URL): nothing is sent or consumed there by a worker of a ledger.
UNBOUND_QUEUE = "ferry"


def make_app(settings: Settings, ledger: str | None = None) -> Celery:
    """The Celery app; its default queue is FERRY_QUEUE, else ledger ``ledger``'s own queue
    (what a ``celery -A workers worker`` without ``-Q`` consumes)."""
    app = Celery("ferry", broker=settings.redis_url, backend=settings.redis_url)
    transport = {"visibility_timeout": settings.visibility_timeout}
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.queue or (default_queue(ledger) if ledger else UNBOUND_QUEUE),
        ferry_ledger=ledger,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        visibility_timeout=settings.visibility_timeout,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=3600,
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    if settings.worker_memory_mb:
        # Celery replaces a pool child that grew past this after its current task.
        app.conf.worker_max_memory_per_child = settings.worker_memory_mb * 1024
    app.conf.imports = ("workers.tasks",)
    return app


_app: list[Celery] = []


def default_app() -> Celery:
    """The worker's app, built from the environment the first time it is asked for."""
    if not _app:
        # No database here: Flower and other tools build this app too. A worker reads its
        # ledger's identity as it starts (workers.signals.bind_to_ledger).
        _app.append(make_app(Settings.from_env()))
        import workers.signals  # noqa: F401  (connects worker lifecycle hooks)
    return _app[0]


def startup_identity(settings: Settings) -> str | None:
    """The identity of the worker's ledger, read as the worker starts.

    Without FERRY_QUEUE the queue is derived from it, so the worker waits for its ledger
    (up to STARTUP_WAIT_S) and then fails with one clear message; with FERRY_QUEUE one
    attempt is made, and a worker that could not read it reads it when its first task
    arrives (workers.runtime).
    """
    if not settings.database_url and settings.queue is not None:
        return None  # tasks are handed back until the worker can read a ledger
    from workers.db import Database
    from workers.ledger import Ledger

    db = Database(settings, pool_size=1)  # BadInput: no or a malformed FERRY_DATABASE_URL
    began = time.monotonic()
    deadline = began + (STARTUP_WAIT_S if settings.queue is None else 0.0)
    said = began - STARTUP_SAY_S
    try:
        while True:
            try:
                return Ledger(db).identity()
            except CheckFailed:
                raise
            except (NotFound, sa.exc.DBAPIError) as exc:
                why = str(exc) if isinstance(exc, NotFound) else type(exc.orig or exc).__name__
                now = time.monotonic()
                if now < deadline and now - said >= STARTUP_SAY_S:
                    said = now
                    log.warning("waiting for the ledger, whose identity names the queue: %s", why)
                if now >= deadline:
                    if settings.queue is not None:
                        log.warning("ledger identity not read at start-up: %s", why)
                        return None
                    raise BadInput(
                        f"the ledger's identity names this worker's queue and cannot be read "
                        f"({why}); or set FERRY_QUEUE"
                    ) from None
                time.sleep(1.0)
    finally:
        db.dispose()
