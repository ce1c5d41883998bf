"""Sending chunk tasks: deterministic ids, readable names and arguments for Flower.

Every task carries its ledger's identity (workers.identity): in its id
(``ferry:<ledger>:<run>:<chunk>``), its name as Flower shows it, and its ``ledger``
argument, which a worker checks before it looks the run up (workers.tasks).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from workers.identity import check
from workers.ledger import Ledger
from workers.limits import Limits

CHUNK_TASK = "ferry.chunk"
ROLLBACK_TASK = "ferry.rollback_chunk"


def chunk_task_id(ledger: str, run_id: int, chunk_no: int) -> str:
    return f"ferry:{check(ledger)}:{int(run_id)}:{int(chunk_no)}"


def rollback_task_id(ledger: str, run_id: int, chunk_no: int) -> str:
    return f"ferry:{check(ledger)}:{int(run_id)}:{int(chunk_no)}:rollback"


class Dispatcher:
    """Sends ledger ``ledger``'s tasks; a run's chunks always go to the queue the run was
    launched on (``queue``: where runs that name none go)."""

    def __init__(self, app: Any, queue: str, ledger: str) -> None:
        self.app = app
        self.queue = queue
        self.ledger = check(ledger)

    def reachable(self) -> None:
        """Connect to the broker now (raises its error): a launch asks before it records a run,
        so a broker it cannot reach leaves nothing behind for the workers' stall sweep to run."""
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)

    def send_chunks(
        self, run_id: int, chunk_nos: Iterable[int], *, queue: str | None = None
    ) -> int:
        return self._send(CHUNK_TASK, chunk_task_id, run_id, chunk_nos, queue)

    def send_rollbacks(
        self, run_id: int, chunk_nos: Iterable[int], *, queue: str | None = None
    ) -> int:
        return self._send(ROLLBACK_TASK, rollback_task_id, run_id, chunk_nos, queue)

    def _send(
        self, name: str, make_id: Any, run_id: int, chunk_nos: Iterable[int], queue: str | None
    ) -> int:
        sent = 0
        with self.app.producer_or_acquire() as producer:
            for chunk_no in chunk_nos:
                self.app.send_task(
                    name,
                    args=[int(run_id), int(chunk_no)],
                    kwargs={"ledger": self.ledger},
                    task_id=make_id(self.ledger, run_id, chunk_no),
                    queue=queue or self.queue,
                    producer=producer,
                    shadow=f"{name}[{self.ledger} run {run_id} chunk {chunk_no}]",
                    # the ledger is the outcome: no result channel per task
                    ignore_result=True,
                )
                sent += 1
        return sent


def send_window(
    ledger: Ledger,
    dispatcher: Dispatcher,
    run_id: int,
    limits: Limits,
    *,
    queue: str | None = None,
    again: bool = False,
) -> list[int]:
    """Send the next window of the run's chunks (see Ledger.release_window); their numbers.

    The rest stay held back in the ledger: each chunk that settles releases the next, so the
    broker holds about ``limits.window`` tasks of a run however many chunks it has.
    """
    released = ledger.release_window(run_id, limits.window, again=again)
    dispatcher.send_chunks(run_id, released, queue=queue)
    return released
