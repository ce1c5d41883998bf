"""The command line of a Ferry worker process: one definition for the demo, benches and tests.

Gossip and mingle are off: Ferry's workers share nothing through Celery's cluster
protocol (limits live in Redis, state in the ledger), and without them a worker is
ready in about a second and its broker traffic does not grow with the fleet.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def worker_command(
    name: str,
    queue: str | None = None,
    *,
    concurrency: int = 1,
    loglevel: str = "WARNING",
    extra: Sequence[str] = (),
) -> list[str]:
    """``celery -A workers worker`` named ``name@host``, consuming ``queue`` when given."""
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers",
        "worker",
        "-n",
        f"{name}@%h",
        "--concurrency",
        str(concurrency),
        "--loglevel",
        loglevel,
        "--without-gossip",
        "--without-mingle",
    ]
    if queue:
        argv += ["-Q", queue]
    return [*argv, *extra]
