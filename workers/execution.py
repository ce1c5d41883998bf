"""Applying one chunk, exactly once, independent of Celery.

The chunk's data change and its "done" mark commit in one transaction. The
ledger row is locked first, so a redelivered or duplicated task waits for the
live one and then finds the chunk done. No application write may slip between
our read of a row and our update of it (waits are bounded by lock_timeout):
rows are locked before they are read where the statement judges or was given
what it writes (rules, pandas), and on the plain SQL path the rows the
application changed under the statement are written again, locked, by a
second one over their keys (``workers.statements``). Either way no lost
update, and, unlike REPEATABLE READ, no serialization failure each time the
application touches some other column of a row in the range (a storm under a
real OLTP load).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import psycopg

from migrations.errors import (
    ChunkError,
    FerryError,
    PermanentChunkError,
    TransientChunkError,
)
from workers.db import Database
from workers.failures import RuleFailure, classify, describe
from workers.keepalive import kept_alive_context
from workers.ledger import Ledger, q
from workers.limits import Limits
from workers.model import ChunkResult
from workers.progress import ProgressStore
from workers.settings import Settings
from workers.sizing import Sizing
from workers.staging import RunContext, stage_input
from workers.statements import ChunkArgs, KeyRange
from workers.telemetry import chunk_span, mark_range, step
from workers.testhooks import kill_point

log = logging.getLogger("ferry.chunk")
Conn = psycopg.Connection[Any]
# statement_timeout (or an operator's cancel): the chunk is too big for its time budget.
QUERY_CANCELED = "57014"
# Sends the tasks of the chunks a settled chunk released: (run, chunks, the run's queue).
Send = Callable[[int, Sequence[int], str | None], None]


class ChunkExecutor:
    def __init__(
        self,
        db: Database,
        ledger: Ledger,
        settings: Settings,
        progress: ProgressStore,
        worker: str,
        send: Send | None = None,
    ) -> None:
        self.db = db
        self.ledger = ledger
        self.settings = settings
        self.progress = progress
        self.worker = worker
        self.send = send  # None: released chunks wait for the stall sweep to send them
        self._contexts: OrderedDict[int, RunContext] = OrderedDict()

    def context(self, run_id: int) -> RunContext:
        ctx = self._contexts.get(run_id)
        if ctx is None:
            self.ledger.check_spec(run_id)  # once per process and run: the context is kept
            ctx = RunContext.build(run_id, self.ledger.get_run(run_id).spec)
            self._contexts[run_id] = ctx
            while len(self._contexts) > 16:
                self._contexts.popitem(last=False)
        return ctx

    def apply(self, run_id: int, chunk_no: int) -> ChunkResult:
        """Apply the chunk inside its span, counted by the chunk metrics (workers.telemetry)."""
        with chunk_span(run_id, chunk_no) as observe:
            result = self._apply(run_id, chunk_no)
            observe(result)
            return result

    def _apply(self, run_id: int, chunk_no: int) -> ChunkResult:
        # One connection for the claim and the chunk transaction: one checkout, one ping.
        with self.db.connect() as conn:
            try:
                claim = self.ledger.claim(
                    conn,
                    run_id,
                    chunk_no,
                    self.worker,
                    self.settings.lease_seconds,
                    self.settings.idle_in_transaction_timeout_ms,
                    self.settings.lock_timeout_ms,
                )
            except psycopg.Error as exc:
                with contextlib.suppress(psycopg.Error):
                    conn.rollback()
                raise classify(exc) from exc
            if claim is None:
                return ChunkResult(run_id=run_id, chunk_no=chunk_no, outcome="noop")
            return self._claimed(conn, run_id, chunk_no, claim)

    def _claimed(
        self, conn: Conn, run_id: int, chunk_no: int, claim: Mapping[str, Any]
    ) -> ChunkResult:
        attempt = int(claim["attempts"])
        if attempt > self.settings.max_attempts:
            raise PermanentChunkError(f"gave up after {attempt - 1} attempts")
        ctx = self.context(run_id)
        limits = Limits.from_json(claim["limits"])
        sizing = Sizing(ceiling=ctx.spec.chunk_size, chunk_time=limits.chunk_time)
        planned: int | None = claim["planned_rows"]
        rerun = claim["retry_keys"] is not None
        if not rerun:
            keep = sizing.cut(planned, claim["target_rows"])
            if keep is not None and self._split(ctx, chunk_no, keep, planned or sizing.ceiling):
                planned = keep
        try:
            result = self._apply_in_transaction(conn, ctx, chunk_no, limits.window)
        except BaseException as exc:
            # On a lost connection the rollback fails too: keep the real error, which
            # says the chunk is worth retrying.
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
            if not isinstance(exc, FerryError | psycopg.Error):
                raise
            err = classify(exc)
            if err.sqlstate == QUERY_CANCELED and not rerun:
                self._halve(ctx, chunk_no, sizing, planned, claim["target_rows"])
            raise _last_try(err, attempt, self.settings.max_attempts) from exc
        self.send_released(run_id, result.released, claim["queue"])
        if result.outcome == "done":
            self.progress.chunk_done(
                run_id,
                {
                    "chunks_done": 1,
                    "rows_read": result.rows_read,
                    "rows_written": result.rows_written,
                    "rows_quarantined": result.rows_quarantined,
                },
            )
            if not rerun:
                target = sizing.next_target(
                    claim["target_rows"], result.rows_read, result.duration_ms / 1000
                )
                self._set_target(run_id, claim["target_rows"], target)
        return replace(result, attempt=attempt)

    def _write_missed(
        self, conn: Conn, ctx: RunContext, args: ChunkArgs, keys: Sequence[str]
    ) -> Mapping[str, Any]:
        """The rows the application changed after the chunk read them: the update skipped
        them. On the SQL path it holds their locks, so one statement reads and writes the
        version that stays; on the pandas path they are read again, locked this time, and
        transformed and staged afresh (the temp table emptied first)."""
        log.debug("run %s chunk %s: %d rows moved under it", args.run_id, args.chunk_no, len(keys))
        r = args.range
        again = replace(args, range=KeyRange(r.lo, r.hi, tuple(keys)), rows_read=None)
        with step("ferry.write_missed"):
            if ctx.transform is not None:
                conn.execute(ctx.statements.clear_input())
                read = stage_input(conn, ctx, again.range, lock=True)
                again = replace(again, rows_read=read)
            counts: Mapping[str, Any] | None = conn.execute(ctx.statements.apply(again)).fetchone()
        assert counts is not None
        return counts

    # -- sizing ----------------------------------------------------------------------------
    def _split(self, ctx: RunContext, chunk_no: int, keep: int, planned: int) -> int | None:
        """Cut the claimed chunk after its first ``keep`` rows; the rest becomes a new chunk.

        Best effort in a short transaction of its own: if anything is in the way (a lock, the
        run stopping, no rows past the cut) the chunk simply runs whole.
        """
        ids = {"run_id": ctx.run_id, "chunk_no": chunk_no}
        try:
            with self.db.transaction() as conn:
                conn.execute(
                    "SELECT set_config('lock_timeout', %s, true)",
                    (f"{self.settings.lock_timeout_ms}ms",),
                )
                row = conn.execute(q("lock_for_split"), ids).fetchone()
                if row is None or row["status"] != "running" or row["retry_keys"] is not None:
                    return None
                point = conn.execute(
                    ctx.statements.split_point(KeyRange(row["lo"], row["hi"]), keep)
                ).fetchone()
                if point is None or point["b"] is None:
                    return None
                born = conn.execute(
                    q("split_chunk"),
                    {
                        **ids,
                        "mid": point["b"],
                        "hi": row["hi"],
                        "keep": keep,
                        "rest": max(planned - keep, 1),
                    },
                ).fetchone()
        except psycopg.Error as exc:
            log.info("chunk %s/%s not split: %s", ctx.run_id, chunk_no, describe(exc))
            return None
        if born is None:
            return None
        log.info(
            "chunk %s/%s cut at %s rows; the rest is chunk %s, held back until released",
            ctx.run_id,
            chunk_no,
            keep,
            born["chunk_no"],
        )
        return int(born["chunk_no"])

    def send_released(self, run_id: int, chunks: Sequence[int], queue: str | None) -> None:
        if not chunks or self.send is None:
            return
        try:
            self.send(run_id, chunks, queue)
        except Exception as exc:  # marked sent: the stall sweep sends a stalled run's chunks
            # the class only: a broker error's text may carry its URL
            log.warning(
                "run %s: %d released chunk(s) not sent: %s", run_id, len(chunks), type(exc).__name__
            )

    def _halve(
        self,
        ctx: RunContext,
        chunk_no: int,
        sizing: Sizing,
        planned: int | None,
        target: int | None,
    ) -> None:
        """A chunk that hit statement_timeout is cut in half and the run's target with it."""
        size = planned or sizing.ceiling
        keep = sizing.halve(size)
        if keep is None:
            return
        self._split(ctx, chunk_no, keep, size)
        self._set_target(ctx.run_id, target, min(keep, target or keep))

    def _set_target(self, run_id: int, current: int | None, target: int | None) -> None:
        # Smoothing moves the target a little after every chunk: save it only when it moved
        # by a tenth or more, not one ledger transaction per chunk.
        if target is None or (current is not None and abs(target - current) < 0.1 * current):
            return
        try:
            with self.db.transaction() as conn:
                conn.execute("SET LOCAL synchronous_commit = off")
                conn.execute(q("set_target_rows"), {"run_id": run_id, "target": target})
        except psycopg.Error as exc:  # a lost estimate only means the next chunk re-measures
            log.info("run %s target not saved: %s", run_id, describe(exc))

    def _begin(self, conn: Conn, ids: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """Open the chunk transaction and lock its ledger row: the chunk's state, or None.

        Not pipelined (see Ledger.claim): the idle-in-transaction timeout that frees a cut-off
        worker's locks is armed only when the server has answered a Sync.
        """
        conn.rollback()
        conn.execute(
            "SELECT set_config('lock_timeout', %s, true),"
            " set_config('statement_timeout', %s, true),"
            " set_config('idle_in_transaction_session_timeout', %s, true),"
            # A chunk is a key-range index scan, written back by TID: never let a row
            # estimate on a CTE turn the write into a scan of the whole table. JIT would
            # compile for longer than a chunk runs (the disabled scan inflates the cost).
            " set_config('enable_seqscan', 'off', true), set_config('jit', 'off', true),"
            # see Settings.synchronous_commit: off, a crash costs a re-run of a chunk, no more
            " set_config('synchronous_commit', %s, true)",
            (
                f"{self.settings.lock_timeout_ms}ms",
                f"{self.settings.statement_timeout_ms}ms",
                f"{self.settings.idle_in_transaction_timeout_ms}ms",
                self.settings.synchronous_commit,
            ),
        )
        return conn.execute(q("lock_chunk"), ids).fetchone()

    def _apply_in_transaction(
        self, conn: Conn, ctx: RunContext, chunk_no: int, window: int
    ) -> ChunkResult:
        run_id = ctx.run_id
        ids = {"run_id": run_id, "chunk_no": chunk_no}
        state = self._begin(conn, ids)
        if state is None or state["status"] not in ("pending", "running"):
            conn.rollback()
            return ChunkResult(run_id=run_id, chunk_no=chunk_no, outcome="noop")
        if state["run_status"] != "running":
            # Paused, stopped or rolled back since the claim: hand the chunk back, untouched.
            conn.execute(q("release_chunk"), {**ids, "error": None, "info": None})
            conn.commit()
            return ChunkResult(run_id=run_id, chunk_no=chunk_no, outcome="noop")
        keys = tuple(state["retry_keys"]) if state["retry_keys"] is not None else None
        key_range = KeyRange(state["lo"], state["hi"], keys)
        mark_range(key_range.lo, key_range.hi, phi=ctx.spec.key in ctx.spec.extra.get("phi", ()))
        started = time.perf_counter()
        cleared = 0
        if key_range.keys is not None:  # a re-run of quarantined rows: judge them afresh
            gone = conn.execute(q("clear_quarantine"), {**ids, "keys": list(key_range.keys)})
            cleared = gone.rowcount
        rows_read = None
        if ctx.transform is None:
            if ctx.statements.locks_first:
                with step("ferry.lock"):
                    conn.execute(ctx.statements.lock_rows(key_range))
        else:  # the COPY that reads the chunk takes its row locks, or the versions it read
            alive = kept_alive_context(
                ctx,
                conn,
                interval=self.settings.idle_in_transaction_timeout_ms / 3000,
                limit=self.settings.transform_timeout,
            )
            rows_read = stage_input(conn, alive, key_range, lock=not ctx.statements.reads_unlocked)
        args = ChunkArgs(
            run_id=run_id,
            chunk_no=chunk_no,
            range=key_range,
            rows_read=rows_read,
        )
        with step("ferry.write"):  # on the SQL path this one statement also reads and checks
            counts = conn.execute(ctx.statements.apply(args)).fetchone()
        assert counts is not None
        if counts["missed"]:
            counts = _add(counts, self._write_missed(conn, ctx, args, counts["missed"]))
        if counts["rows_changed"] != counts["rows_written"]:
            # Values computed (by pandas) from a version the application has since changed, or
            # a row the second pass still missed: the whole chunk again, from fresh reads.
            raise TransientChunkError("rows changed while the chunk ran; retrying it")
        if counts["rows_failed"]:
            rule = ctx.spec.rules[counts["failed_rule"]]
            raise RuleFailure(
                f"{counts['rows_failed']} rows failed rule on {rule.field!r} "
                f"with action fail: {rule.error_message}"
            )
        duration_ms = (time.perf_counter() - started) * 1000
        with step("ferry.commit"):
            released = conn.execute(
                q("finish_chunk"),
                {
                    **ids,
                    **_tally(counts, cleared, key_range),
                    "duration_ms": duration_ms,
                    "worker": self.worker,
                    "window": window,
                },
            ).fetchall()
            kill_point(self.settings.test_kill_once)  # TEST ONLY, off unless configured
            conn.commit()
        return ChunkResult(
            run_id=run_id,
            chunk_no=chunk_no,
            outcome="done",
            rows_read=counts["rows_read"],
            rows_written=counts["rows_written"],
            rows_quarantined=counts["rows_quarantined"],
            rows_warned=counts["rows_warned"],
            duration_ms=duration_ms,
            released=tuple(sorted(r["chunk_no"] for r in released)),
        )


def _add(first: Mapping[str, Any], again: Mapping[str, Any]) -> dict[str, Any]:
    """The counts of a chunk's statement and of its second pass over the rows it missed:
    what was read is what the first read, and the missed rows count once, as the second
    pass found them (a row the application deleted meanwhile is neither changed nor written)."""
    summed = ("rows_written", "rows_quarantined", "rows_failed", "rows_warned", "rows_fixed")
    return {
        **first,
        **{name: first[name] + again[name] for name in summed},
        "rows_changed": first["rows_written"] + again["rows_changed"],
        "failed_rule": (
            first["failed_rule"] if first["failed_rule"] is not None else again["failed_rule"]
        ),
        "missed": again["missed"],
    }


def _last_try(err: ChunkError, attempt: int, limit: int) -> ChunkError:
    """A transient failure on the last allowed attempt fails the chunk with its real cause."""
    if isinstance(err, TransientChunkError) and attempt >= limit:
        final = PermanentChunkError(f"{err} (gave up after {attempt} attempts)")
        final.sqlstate = err.sqlstate
        err = final
    err.attempt = attempt
    return err


def _tally(counts: Mapping[str, Any], cleared: int, key_range: KeyRange) -> dict[str, Any]:
    """Ledger counts: a re-run of quarantined rows adds to what the chunk already did."""
    return {
        "rerun": key_range.keys is not None,
        "rows_read": counts["rows_read"],
        "rows_written": counts["rows_written"],
        "rows_quarantined": counts["rows_quarantined"],
        "cleared": cleared,
        "rows_warned": counts["rows_warned"],
        "rows_fixed": counts["rows_fixed"],
    }
