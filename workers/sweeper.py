"""The lease sweeper: re-queues chunks whose worker vanished, in seconds.

A SIGKILLed worker's message returns from Redis only after the visibility
timeout. Ferry does not wait for it: a claimed chunk carries a lease, and a
live chunk transaction holds the chunk's row lock, so ``SKIP LOCKED`` passes
over every chunk still being worked on. What remains, past its lease, is lost
work, and goes back to pending and onto the queue.

A run whose launch died before it recorded all of the run's chunks (``workers.walk``) is
found the same way, by the age of its last recorded batch, and its walk is finished here,
in a thread of its own: the sweeps go on meanwhile.
"""

from __future__ import annotations

import logging
import os
import resource
import threading
import time
from collections.abc import Callable

from workers.dispatch import Dispatcher, send_window
from workers.ledger import Ledger
from workers.progress import ProgressStore
from workers.walk import walk_run

log = logging.getLogger("ferry.sweeper")


def sweep(
    ledger: Ledger,
    dispatcher: Dispatcher,
    *,
    stall_seconds: float | None = None,
    queue_length: Callable[[str], int] | None = None,
) -> list[tuple[int, int, str | None]]:
    """Re-queue lost chunks of every run in this database, each on its run's own queue.

    Two kinds are lost: chunks whose lease expired (their worker died), and, when
    ``stall_seconds`` is given, the pending chunks of a run that has had no activity
    for that long while its queue is empty (the queue itself was lost, or a send after a
    release): a window of them is sent again, and they release the rest. Sending a chunk
    twice is harmless: the second delivery finds it done. Restores asked for that long ago
    and held by no worker are sent again too (a restore is as idempotent).
    """
    expired = ledger.requeue_expired()
    by_run: dict[tuple[int, str | None], list[int]] = {}
    for run_id, chunk_no, queue in expired:
        by_run.setdefault((run_id, queue), []).append(chunk_no)
    for (run_id, queue), chunks in by_run.items():
        log.warning("re-queueing %d chunk(s) of run %s whose lease expired", len(chunks), run_id)
        dispatcher.send_chunks(run_id, chunks, queue=queue)
    if stall_seconds is not None:
        for run_id, queue, limits in ledger.stalled_runs(stall_seconds):
            name = queue or dispatcher.queue
            if queue_length is not None and queue_length(name) > 0:
                continue  # its tasks are still waiting behind others
            sent = send_window(ledger, dispatcher, run_id, limits, queue=queue, again=True)
            log.warning("run %s stalled: %d of its pending chunks sent again", run_id, len(sent))
        restores: dict[tuple[int, str | None], list[int]] = {}
        for run_id, chunk_no, queue in ledger.requeue_stalled_restores(stall_seconds):
            restores.setdefault((run_id, queue), []).append(chunk_no)
        for (run_id, queue), chunks in restores.items():
            log.warning("rollback of run %s stalled: %d restore(s) sent again", run_id, len(chunks))
            dispatcher.send_rollbacks(run_id, chunks, queue=queue)
    return expired


def usage() -> dict[str, float]:
    """This process's cpu seconds and resident memory, for heartbeats."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        with open(f"/proc/{os.getpid()}/statm") as fh:
            rss_pages = int(fh.read().split()[1])
        rss_mb = rss_pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        rss_mb = ru.ru_maxrss / 1024
    return {
        "cpu_seconds": ru.ru_utime + ru.ru_stime + children.ru_utime + children.ru_stime,
        "rss_mb": round(rss_mb, 1),
    }


class SweeperThread(threading.Thread):
    """Runs in each worker's main process; sweeps and beats until stopped."""

    def __init__(
        self,
        ledger: Ledger,
        dispatcher: Dispatcher,
        progress: ProgressStore,
        worker: str,
        interval: float,
        stall_seconds: float | None = None,
        queue_length: Callable[[str], int] | None = None,
    ) -> None:
        super().__init__(name="ferry-sweeper", daemon=True)
        self.ledger = ledger
        self.dispatcher = dispatcher
        self.progress = progress
        self.worker = worker
        self.interval = interval
        self.stall_seconds = stall_seconds
        self.queue_length = queue_length
        self.stopped = threading.Event()
        self._walkers: dict[int, threading.Thread] = {}

    def run(self) -> None:
        last_cpu, last_t = usage()["cpu_seconds"], time.monotonic()
        while not self.stopped.wait(self.interval):
            try:
                sweep(
                    self.ledger,
                    self.dispatcher,
                    stall_seconds=self.stall_seconds,
                    queue_length=self.queue_length,
                )
                if self.stall_seconds is not None:
                    self._walk_abandoned(self.stall_seconds)
            except Exception as exc:
                log.warning("sweep failed: %s", type(exc).__name__)
            now = usage()
            t = time.monotonic()
            cpu = (now["cpu_seconds"] - last_cpu) / max(t - last_t, 1e-6)
            last_cpu, last_t = now["cpu_seconds"], t
            self.progress.heartbeat(
                self.worker,
                {
                    "worker": self.worker,
                    "cpu": round(cpu, 3),
                    "rss_mb": now["rss_mb"],
                    "at": time.time(),
                },
            )

    def stop(self) -> None:
        self.stopped.set()

    def _walk_abandoned(self, stall_seconds: float) -> None:
        for run_id in self.ledger.abandoned_walks(stall_seconds):
            walker = self._walkers.get(run_id)
            if walker is not None and walker.is_alive():
                continue
            log.warning("run %s: its launch stopped recording chunks; recording the rest", run_id)
            walker = threading.Thread(
                target=self._walk, args=(run_id,), name=f"ferry-walk-{run_id}", daemon=True
            )
            self._walkers[run_id] = walker
            walker.start()

    def _walk(self, run_id: int) -> None:
        """Record the rest of a run's chunks (another worker may be at it too: each batch is
        recorded once, see ``workers.walk``)."""
        try:
            walk_run(self.ledger, self.dispatcher, self.ledger.get_run(run_id))
        except Exception as exc:  # the next sweep past the stall interval tries again
            log.warning("run %s: recording its chunks failed: %s", run_id, type(exc).__name__)
