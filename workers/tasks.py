# mypy: disallow-untyped-decorators=False
"""Celery tasks: thin wrappers that turn chunk outcomes into acks, retries and ledger marks."""

# Celery's decorators are untyped: the file-level opt-out above says so.
from __future__ import annotations

import logging
import random
import time
from typing import Any

import psycopg
import sqlalchemy as sa
from celery import shared_task
from celery.exceptions import Reject

from migrations.errors import FerryError, PermanentChunkError, TransientChunkError
from workers.identity import default_queue
from workers.limits import Limits
from workers.restore import restore_chunk
from workers.runtime import Runtime, runtime
from workers.telemetry import chunk_outcome, throttled

log = logging.getLogger("ferry.tasks")
# How long a worker that cannot reach PostgreSQL takes no new chunk (see _step_aside).
UNREACHABLE_PAUSE_S = 5.0


def backoff(retries: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter around its mean, as pgroll and AWS advise."""
    return float(min(cap, base * (2.0**retries))) * random.uniform(0.5, 1.5)


def _transient(
    task: Any, rt: Runtime, run_id: int, chunk_no: int, exc: TransientChunkError, *, release: bool
) -> Any:
    if release:
        try:
            rt.ledger.release(run_id, chunk_no, exc, rt.settings.lock_timeout_ms)
        except Exception as err:  # the database may be the thing that is down
            log.warning("could not release chunk %s/%s: %s", run_id, chunk_no, type(err).__name__)
    rt.progress.error(run_id, chunk_no, "retry", str(exc))
    delay = (
        exc.delay
        if exc.delay is not None
        else backoff(max(exc.attempt - 1, 0), rt.settings.backoff_base, rt.settings.backoff_max)
    )
    log.info("chunk %s/%s will retry in %.1fs: %s", run_id, chunk_no, delay, exc)
    return task.retry(countdown=delay)


def _step_aside(task: Any, run_id: int, chunk_no: int, why: str) -> dict[str, Any]:
    """This worker cannot open a connection to PostgreSQL (or read its ledger's identity):
    hand the chunk back at once, then take no task for a few seconds.

    A worker cut off from the database but not from the broker fails every chunk at once, so
    it is the idle worker that wins every message, the retries included: the run stalls on
    the one host that cannot do it. Resting while the re-sent chunk waits in the queue lets a
    worker that can reach the database take it. Not a throttle wait: this process has no
    work it could do anyway.
    """
    log.warning("chunk %s/%s handed back: %s", run_id, chunk_no, why)
    chunk_outcome(run_id, "retried")
    task.retry(countdown=0.5, throw=False)
    time.sleep(UNREACHABLE_PAUSE_S * random.uniform(0.8, 1.2))
    return {"run": run_id, "chunk": chunk_no, "outcome": "unreachable"}


def _failed(
    rt: Runtime, run_id: int, chunk_no: int, exc: PermanentChunkError
) -> dict[str, Any]:
    """A chunk that failed for good: recorded, reported, and the run ended if it was the last."""
    chunk_outcome(run_id, "failed")
    _fail(rt, run_id, chunk_no, exc)
    rt.progress.error(run_id, chunk_no, "failed", str(exc))
    log.warning("chunk %s/%s failed: %s", run_id, chunk_no, exc)
    rt.ledger.finalize_run(run_id)
    return {"run": run_id, "chunk": chunk_no, "outcome": "failed"}


def _fail(rt: Runtime, run_id: int, chunk_no: int, exc: PermanentChunkError) -> None:
    """Fail the chunk; like a done one, it releases the run's next chunk to the broker."""
    run = rt.ledger.get_run(run_id)
    window = Limits.from_json(run.params.get("limits")).window
    released = rt.ledger.fail(run_id, chunk_no, exc, window, rt.settings.breaker)
    rt.executor.send_released(run_id, released, run.params.get("queue"))


def _settled(rt: Runtime, run_id: int, chunk_no: int) -> bool:
    try:
        return rt.ledger.settled(run_id, chunk_no)
    except psycopg.Error:  # the claim will meet the same database and say what is wrong
        return False


# Results are not stored: the ledger is the outcome, and Flower reads results from events.
# max_retries=None: Celery's default of 3 would drop a throttled chunk's task; the ledger's
# attempt count (FERRY_MAX_ATTEMPTS) is what bounds retries of failures.
@shared_task(
    bind=True,
    name="ferry.chunk",
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    max_retries=None,
)
def chunk(self: Any, run_id: int, chunk_no: int, ledger: str | None = None) -> dict[str, Any]:
    """Apply chunk ``chunk_no`` of run ``run_id`` of ledger ``ledger`` (a no-op when it is
    already done; ``ledger`` None: a task sent before ledgers had identities)."""
    rt = _serving(self, run_id, chunk_no, ledger)
    if not isinstance(rt, Runtime):
        return rt
    try:
        return _chunk(self, rt, run_id, chunk_no)
    except sa.exc.DBAPIError as exc:  # the pool could not connect (a done chunk sent again: no-op)
        return _step_aside(self, run_id, chunk_no, _unreachable(exc))


def _serving(task: Any, run_id: int, chunk_no: int, ledger: str | None) -> Runtime | dict[str, Any]:
    """This process's runtime when the task is its ledger's; else what became of the task
    (forwarded to its own ledger's queue, or handed back while this worker cannot read its
    ledger: database unreachable, ledger not made yet, or a copy not re-keyed)."""
    try:
        rt = runtime(task.request.hostname)
    except sa.exc.DBAPIError as exc:
        return _step_aside(task, run_id, chunk_no, _unreachable(exc))
    except FerryError as exc:  # no ledger yet, a copy not re-keyed, no database URL
        return _step_aside(task, run_id, chunk_no, str(exc))
    if ledger is not None and ledger != rt.identity:
        return _forward(task, rt, ledger, run_id, chunk_no)
    return rt


def _unreachable(exc: sa.exc.DBAPIError) -> str:
    return f"no connection to PostgreSQL ({type(exc.orig or exc).__name__})"


def _forward(task: Any, rt: Runtime, ledger: str, run_id: int, chunk_no: int) -> dict[str, Any]:
    """A task of another ledger reached this worker (several ledgers' workers on one shared
    FERRY_QUEUE): send it on to that ledger's own queue, which only its workers consume
    (workers.signals), and take it off this one. Never dropped, and never looked up here:
    run ``run_id`` of this ledger is another run, or none.

    Sent before this task returns (acks late: the message is acknowledged after it); a send
    that fails rejects the message back onto its queue instead of failing the task, which
    Celery would acknowledge: either way it is not lost.
    """
    try:
        target = default_queue(ledger)
    except ValueError:  # no ledger Ferry made: not a task of a Ferry ledger at all
        log.error("task %s names no valid ledger: not run, not forwarded", task.request.id)
        return {"run": run_id, "chunk": chunk_no, "outcome": "rejected"}
    try:
        task.app.send_task(
            task.name,
            args=[int(run_id), int(chunk_no)],
            kwargs={"ledger": ledger},
            task_id=task.request.id,
            queue=target,
            shadow=f"{task.name}[{ledger} run {run_id} chunk {chunk_no}]",
            ignore_result=True,
        )
    except Exception as exc:  # the broker: put the message back where it came from
        log.warning(
            "task %s of ledger %s not forwarded: %s", task.request.id, ledger, type(exc).__name__
        )
        raise Reject(f"not forwarded: {type(exc).__name__}", requeue=True) from None
    log.warning(
        "task %s belongs to ledger %s, not this worker's (%s): forwarded to queue %s",
        task.request.id,
        ledger,
        rt.identity,
        target,
    )
    return {"run": run_id, "chunk": chunk_no, "outcome": "forwarded", "to": target}


def _chunk(self: Any, rt: Runtime, run_id: int, chunk_no: int) -> dict[str, Any]:
    try:
        spec = rt.executor.context(run_id).spec
    except PermanentChunkError as exc:  # the stored spec refused, the transform changed...
        return _failed(rt, run_id, chunk_no, exc)
    holder = f"{rt.worker}:{chunk_no}"
    decision = rt.gate.check(
        run_id,
        spec,
        holder,
        spec.chunk_size,
        member=str(chunk_no),
        queued=bool(self.request.retries),
    )
    if decision.kind == "wait" and _settled(rt, run_id, chunk_no):
        # A redelivery or duplicate of a finished chunk must not wait out the throttle; asked
        # only here, so a chunk that may go pays no extra query (its claim finds it done).
        chunk_outcome(run_id, "noop")
        return {"run": run_id, "chunk": chunk_no, "outcome": "noop"}
    if decision.kind in ("wait", "defer"):
        throttled(run_id, decision.kind, decision.reason)
    if decision.kind == "wait":
        raise self.retry(countdown=decision.delay)
    if decision.kind != "go":
        # paused: the chunk stays pending and `ferry resume` sends it again; stopped: nothing
        return {
            "run": run_id,
            "chunk": chunk_no,
            "outcome": decision.kind,
            "reason": decision.reason,
        }
    started = time.monotonic()
    try:
        result = rt.executor.apply(run_id, chunk_no)
    except TransientChunkError as exc:
        chunk_outcome(run_id, "retried")
        raise _transient(self, rt, run_id, chunk_no, exc, release=True) from None
    except PermanentChunkError as exc:
        return _failed(rt, run_id, chunk_no, exc)
    finally:
        rt.gate.done(run_id, holder, time.monotonic() - started)
    chunk_outcome(run_id, result.outcome)
    if result.outcome == "done" and not result.released:
        # A chunk that released others left them pending: the run cannot be over, and the
        # worker that finishes the last one asks. Most chunks skip the query (~0.6 ms).
        rt.ledger.finalize_run(run_id)
    return {
        "run": run_id,
        "chunk": chunk_no,
        "outcome": result.outcome,
        "rows_read": result.rows_read,
        "rows_written": result.rows_written,
        "rows_quarantined": result.rows_quarantined,
        "ms": round(result.duration_ms, 1),
    }


@shared_task(
    bind=True,
    name="ferry.rollback_chunk",
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=None,
)
def rollback_chunk(
    self: Any, run_id: int, chunk_no: int, ledger: str | None = None
) -> dict[str, Any]:
    """Restore the pre-images of one chunk (a no-op when it is not done)."""
    rt = _serving(self, run_id, chunk_no, ledger)
    if not isinstance(rt, Runtime):
        return rt
    try:
        result = restore_chunk(rt.db, rt.ledger, rt.settings, run_id, chunk_no)
    except TransientChunkError as exc:
        raise _transient(self, rt, run_id, chunk_no, exc, release=False) from None
    except PermanentChunkError as exc:  # recorded on the chunk; the run may end rollback_failed
        rt.progress.error(run_id, chunk_no, "rollback_failed", str(exc))
        log.error("rollback of chunk %s/%s failed: %s", run_id, chunk_no, exc)
        rt.ledger.finalize_run(run_id)
        return {"run": run_id, "chunk": chunk_no, "outcome": "failed"}
    rt.ledger.finalize_run(run_id)
    return {
        "run": run_id,
        "chunk": chunk_no,
        "outcome": result.outcome,
        "rows_restored": result.rows_written,
    }
