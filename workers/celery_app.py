"""The Celery app (``celery -A workers worker``) and its settings for long, precious tasks.

Acks late with reject-on-worker-lost: a message is acknowledged only after the
chunk's transaction ended, and comes back at once if a pool child dies. The
visibility timeout is set for broker, backend and app alike (otherwise the
1 h default wins). None of this is what keeps a chunk from being lost when a
whole worker dies: the ledger's lease sweeper is (see ``sweeper``).
"""

from __future__ import annotations

from celery import Celery

from workers.settings import Settings


def make_app(settings: Settings) -> Celery:
    app = Celery("ferry", broker=settings.redis_url, backend=settings.redis_url)
    transport = {"visibility_timeout": settings.visibility_timeout}
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.queue,
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
        _app.append(make_app(Settings.from_env()))
        import workers.signals  # noqa: F401  (connects worker lifecycle hooks)
    return _app[0]
