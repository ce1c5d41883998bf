"""Ferry workers: the Celery app and the engine that applies chunks.

``celery -A workers worker`` finds the app through ``workers.app``, built
lazily so that importing this package (as the coordinator does) reads no
environment and connects to nothing.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from workers.celery_app import default_app

        return default_app()
    raise AttributeError(name)
