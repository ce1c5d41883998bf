"""Every ``ferry`` verb as a library call (alembic's ``command.py``): the CLI only renders.

Each function takes a ``Context`` and returns plain data; errors are
``FerryError`` subclasses that carry their exit code.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import psycopg
import redis

from coordinator.purge import check_not_purged
from coordinator.resolve import resolve
from coordinator.roles import create_roles
from migrations.errors import BadInput, CheckFailed, FerryError
from migrations.loading import load_backfill, normalize_reference
from workers.catalog import average_row_bytes, data_directory, has_lz4, sample_size_bytes
from workers.db import Database
from workers.dispatch import Dispatcher, send_window
from workers.failures import describe
from workers.ledger import Ledger, q
from workers.limits import Limits
from workers.model import RunSpec
from workers.planner import Bounds, PostgresKeys, plan_bounds, walk_batches
from workers.progress import RedisProgress
from workers.settings import Settings
from workers.statements import ChunkArgs, KeyRange, Statements, pre_image_layout
from workers.sweeper import sweep
from workers.telemetry import launch_span
from workers.throttle import RedisLimiter
from workers.walk import walk_on, walk_run

SAMPLE_ROWS = 200


@dataclass
class Context:
    """The services one command uses, built from Settings once."""

    settings: Settings
    _closers: list[Callable[[], None]] = field(default_factory=list)

    @cached_property
    def db(self) -> Database:
        db = Database(self.settings, pool_size=2)
        self._closers.append(db.dispose)
        return db

    @cached_property
    def ledger(self) -> Ledger:
        return Ledger(self.db)

    @cached_property
    def identity(self) -> str:
        """The ledger's identity: it names the run's Redis keys, tasks and default queue."""
        return self.ledger.identity()

    @cached_property
    def queue(self) -> str:
        """Where this command sends a new run's tasks: FERRY_QUEUE, or the ledger's own."""
        return self.settings.queue_for(self.identity)

    @cached_property
    def progress(self) -> RedisProgress:
        return RedisProgress(self.settings.redis_url, self.identity)

    @cached_property
    def dispatcher(self) -> Dispatcher:
        # Celery is imported by the commands that send tasks only (a fifth of a second each)
        from workers.celery_app import make_app

        return Dispatcher(make_app(self.settings, self.identity), self.queue, self.identity)

    def clear_line(self, run_id: int) -> None:
        """Forget the run's line of waiting chunks (workers.throttle): its turns were spaced
        for the limits it had, and the chunks waiting in it come back within seconds."""
        with contextlib.suppress(redis.RedisError):  # stale turns only slow a restart down
            RedisLimiter(self.progress.client, self.identity).clear_line(f"run:{run_id}")

    def close(self) -> None:
        if "ledger" in self.__dict__ and self.ledger.appended:
            from coordinator.audit_seal import seal

            seal(self)
        for closer in self._closers:
            closer()


# -- init ----------------------------------------------------------------------------------
def init(ctx: Context, *, roles: bool = False) -> dict[str, Any]:
    """Create or upgrade the ledger; with ``roles``, also the least-privilege group roles."""
    applied = ctx.ledger.init(mask_key=ctx.settings.mask_key)
    rekeyed = ctx.ledger.rekeyed
    if 1 in applied:  # a new ledger: heads sealed at this address were another ledger's
        from coordinator.audit_seal import heads_path

        old = heads_path(ctx)
        if old.exists():
            old.rename(old.with_suffix(f".replaced-{int(time.time())}.jsonl"))
    made: dict[str, Any] | None = None
    with ctx.db.transaction() as conn:
        if roles:
            made = create_roles(conn)
        ctx.ledger.audit(
            conn,
            actor=ctx.settings.actor,
            action="init",
            params={"applied": applied, "roles": made, "rekeyed": rekeyed},
        )
    return {
        "applied": applied,
        "version": ctx.ledger.version(),
        "roles": made,
        "identity": ctx.ledger.identity(),
        # (old, new): this ledger was a copy of another (restored backup, clone) and got an
        # identity of its own, so it no longer shares the original's Redis keys and queue
        "rekeyed": list(rekeyed) if rekeyed else None,
    }


# -- plan and launch -------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    spec: RunSpec
    chunks: int
    rows: int
    estimated_seconds: float
    backup_bytes: float
    sample_ms: float
    sample: dict[str, float]
    disk_needed: float = 0.0
    disk_free: float | None = None
    run_id: int | None = None
    status: str | None = None
    walking: bool = False  # launched with the first batch of chunks; the rest are to come

    @property
    def fits(self) -> bool | None:
        """Whether pre-images and WAL fit the database's free disk (None: cannot tell)."""
        if self.disk_free is None:
            return None
        return self.disk_needed < 0.9 * self.disk_free

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "status": self.status,
            "table": f"{self.spec.schema}.{self.spec.table}",
            "key": self.spec.key,
            "mode": self.spec.mode,
            "writes": list(self.spec.writes),
            "chunk_size": self.spec.chunk_size,
            "chunks": self.chunks,
            "rows": self.rows,
            "estimated_seconds": round(self.estimated_seconds, 1),
            "backup_bytes": int(self.backup_bytes),
            "sample_ms": round(self.sample_ms, 1),
            "disk_needed_bytes": int(self.disk_needed),
            "disk_free_bytes": None if self.disk_free is None else int(self.disk_free),
            "fits": self.fits,
            "sample_rows": int(self.sample["sample_rows"]),
            "sample_would_write": int(self.sample["sample_written"]),
            "sample_would_quarantine": int(self.sample["sample_quarantined"]),
        }


def plan(
    ctx: Context, reference: str, *, where: str | None = None, chunk_size: int | None = None
) -> Plan:
    """Everything ``launch`` does up to dispatch, in a transaction that is rolled back."""
    return _prepare(ctx, reference, where=where, chunk_size=chunk_size, commit=False)


def launch(
    ctx: Context,
    reference: str,
    *,
    where: str | None = None,
    chunk_size: int | None = None,
    catch_up: int | None = None,
    limits: Limits | None = None,
    force: bool = False,
) -> Plan:
    """Plan a run, record it with its first chunks in one transaction, send the first window
    of them (Limits.window; each chunk that settles sends the next, one task per chunk in
    all), then record the rest of its chunks while the first ones run (workers.walk).

    With ``catch_up``, the run covers exactly the rows of that earlier run which the
    application changed after their chunk was applied (see ``ferry verify``).
    The ``ferry.launch`` span around planning and dispatch is the root of the run's trace.
    """
    with launch_span() as span:
        ctx.dispatcher.reachable()
        prepared = _prepare(
            ctx,
            reference,
            where=where,
            chunk_size=chunk_size,
            commit=True,
            catch_up=catch_up,
            limits=limits,
            force=force,
        )
        assert prepared.run_id is not None
        span.set_attribute("ferry.run_id", prepared.run_id)
        span.set_attribute("ferry.chunks", prepared.chunks)
        if prepared.chunks:
            send_window(ctx.ledger, ctx.dispatcher, prepared.run_id, limits or Limits())
        if prepared.walking:
            prepared = _walk_on(ctx, prepared, limits or Limits())
            span.set_attribute("ferry.chunks", prepared.chunks)
    return prepared


def _walk_on(ctx: Context, prepared: Plan, limits: Limits) -> Plan:
    """Record the rest of a launched run's chunks; the plan with the run's chunks and rows."""
    run_id = prepared.run_id
    assert run_id is not None
    statements = Statements(prepared.spec, run_id)
    with ctx.db.connect() as conn:
        try:
            walked = walk_on(conn, ctx.ledger, ctx.dispatcher, statements, limits)
            size = prepared.spec.chunk_size
            if walked.last is not None:  # every chunk but the last holds exactly chunk_size
                chunks = prepared.chunks + walked.chunks
                row = conn.execute(statements.count_range(KeyRange(*walked.last))).fetchone()
                rows = (chunks - 1) * size + int(row["n"] if row else 0)
            else:  # another walker ended it (ferry resume), or a rollback or cancel did
                chunks = ctx.ledger.get_run(run_id, conn).total_chunks or 0
                rows = chunks * size
            conn.commit()
        except psycopg.Error as exc:
            conn.rollback()
            raise CheckFailed(
                f"run {run_id} started, but recording its chunks stopped: {describe(exc)}; "
                f"`ferry resume {run_id}` records the rest"
            ) from None
    sample = prepared.sample
    per_chunk_ms = prepared.sample_ms * prepared.spec.chunk_size / max(sample["sample_rows"], 1)
    return replace(
        prepared,
        chunks=chunks,
        rows=rows,
        estimated_seconds=estimate_seconds(chunks, rows, per_chunk_ms, limits),
        walking=False,
    )


def _prepare(
    ctx: Context,
    reference: str,
    *,
    where: str | None,
    chunk_size: int | None,
    commit: bool,
    catch_up: int | None = None,
    limits: Limits | None = None,
    force: bool = False,
) -> Plan:
    ctx.ledger.require()
    reference = normalize_reference(reference)
    backfill = load_backfill(reference)
    settings = ctx.settings
    with ctx.db.connect() as conn:
        try:
            conn.execute("SELECT set_config('lock_timeout', '5s', true)")
            params: dict[str, Any] = {
                "where": where,
                "chunk_size": chunk_size,
                "actor": settings.actor,
                "queue": ctx.queue,
                "limits": (limits or Limits()).to_json(),
            }
            if catch_up is not None:
                from coordinator.verify import catch_up_filter

                if where is not None:
                    raise BadInput("--catch-up and --where cannot be combined")
                where, drifted = catch_up_filter(conn, ctx, catch_up, backfill.table)
                params.update(catch_up_of=catch_up, drifted_rows=drifted)
            spec = resolve(
                conn,
                backfill,
                reference,
                where=where,
                chunk_size=chunk_size,
                project_phi=settings.phi_columns,
                encryption_key=settings.encryption_key,
            )
            # One sample of the pre-images' width: their layout (stored with the run, so every
            # worker writes what the run began with) and the disk estimate below.
            # A backup row holds the key, the pre-images and, as wide again, what the chunk
            # wrote (post-images, for the rollback): twice the sampled width, a little over.
            per_row = 2 * sample_size_bytes(conn, spec.qualified, spec.key, spec.writes)
            saved = [spec.column_types[c] for c in (spec.key, *spec.writes)]
            layout = pre_image_layout(
                per_row, spec.chunk_size, arrays=any(t.endswith("]") for t in saved)
            )
            # post_images: what each chunk wrote is kept beside its pre-images, so a rollback
            # restores only rows the application has not changed since (workers.restore_sql).
            spec = replace(spec, extra={**spec.extra, "pre_images": layout, "post_images": True})
            run_id = ctx.ledger.create_run(
                conn, backfill=reference, spec=spec.to_dict(), params=params, actor=settings.actor
            )
            statements = Statements(spec, run_id)
            conn.execute(statements.create_backup(lz4=has_lz4(conn)))
            conn.execute(
                q("register_backup"),
                {"run_id": run_id, "table_name": f"backup_{run_id}", "columns": list(spec.writes)},
            )
            sample = _preflight(conn, spec, statements, run_id)
            # A launch records the first batch of chunks with the run and the rest once the
            # first ones run (workers.walk); a plan walks the whole index.
            keys = PostgresKeys(conn, statements)
            last = keys.last()
            bounds: Bounds = []
            walked = True
            for batch, walked in walk_batches(keys, spec.chunk_size, last=last):
                bounds += batch
                if commit and not walked:
                    break
            chunks = ctx.ledger.insert_chunks(conn, run_id, bounds)
            if walked:
                rows = _row_count(conn, statements, bounds, spec.chunk_size)
            else:  # until the walk is over: the planner's estimate, for the disk check
                rows = max(len(bounds) * spec.chunk_size, _estimated_rows(conn, statements))
            status = "running" if chunks else "completed"
            conn.execute(
                q("start_run"),
                {
                    "run_id": run_id,
                    "total": chunks,
                    "walk_after": None if walked else bounds[-1][1],
                    "walk_to": None if walked else last,
                },
            )
            if not chunks:
                conn.execute(q("end_run"), {"run_id": run_id, "status": "completed"})
            share = sample["sample_written"] / sample["sample_rows"] if sample["sample_rows"] else 1
            changed = rows * share
            # Pre-images, plus WAL for the new row versions and for the pre-image inserts.
            disk_needed = per_row * changed * 2 + average_row_bytes(conn, spec.qualified) * changed
            disk_free = _free_bytes(data_directory(conn))
            if commit and not force and disk_free is not None and disk_needed >= 0.9 * disk_free:
                raise CheckFailed(
                    f"the run needs about {disk_needed / 2**30:.1f} GiB for pre-images and WAL "
                    f"and the database's disk has {disk_free / 2**30:.1f} GiB free: free space, "
                    "narrow the run, or pass --force"
                )
            ctx.ledger.audit(
                conn,
                actor=settings.actor,
                action="launch",
                run_id=run_id,
                params={
                    "backfill": reference,
                    "spec_sha256": ctx.ledger.spec_digest(conn, run_id),
                    "chunks": chunks,
                    **({} if walked else {"more_chunks_follow": True}),
                    **params,
                },
            )
            if commit:
                conn.commit()
            else:
                conn.rollback()
        except psycopg.Error as exc:
            conn.rollback()
            raise CheckFailed(f"planning failed: {describe(exc)}") from None
        except BaseException:
            conn.rollback()
            raise
    sample_ms = sample["sample_ms"]
    per_chunk_ms = sample_ms * spec.chunk_size / max(sample["sample_rows"], 1)
    seconds = estimate_seconds(chunks, rows, per_chunk_ms, limits or Limits())
    return Plan(
        spec=spec,
        chunks=chunks,
        rows=rows,
        estimated_seconds=seconds,
        backup_bytes=per_row * changed,
        disk_needed=disk_needed,
        disk_free=disk_free,
        sample_ms=sample_ms,
        sample=sample,
        run_id=run_id if commit else None,
        status=status if commit else None,
        walking=not walked,
    )


def estimate_seconds(chunks: int, rows: int, per_chunk_ms: float, limits: Limits) -> float:
    """How long a run takes at ``limits``, from one chunk's sampled time.

    Celery adds ~4 ms a chunk (floors.md); chunks run ``in_flight`` at a time; a rows/s
    budget and the db-load bound (chunk seconds per second), when set, bound the whole run.
    """
    seconds = chunks * (per_chunk_ms + 4) / 1000 / limits.in_flight
    if limits.rows_per_second:
        seconds = max(seconds, rows / limits.rows_per_second)
    if limits.db_load:
        seconds = max(seconds, chunks * per_chunk_ms / 1000 / limits.db_load)
    return seconds


def _preflight(
    conn: psycopg.Connection[Any], spec: RunSpec, statements: Statements, run_id: int
) -> dict[str, float]:
    """Apply the first rows for real inside a savepoint, then undo them.

    Type errors, bad expressions, constraint violations, rule SQL, reference
    rules and transform bugs show up here, on real rows, before any chunk
    exists: the plan's pre-migration validation. Failures are exit 1; values Ferry
    could not convert (``ValueConversionError``) are exit 2, named by class, never shown.
    """
    bounds = next(plan_bounds(PostgresKeys(conn, statements), SAMPLE_ROWS), None)
    if bounds is None:
        return {"sample_ms": 0.0, "sample_rows": 0, "sample_written": 0, "sample_quarantined": 0}
    sample = KeyRange(*bounds)
    started = time.perf_counter()
    what = f"pre-flight on the first {SAMPLE_ROWS} rows failed"
    try:
        with conn.transaction(force_rollback=True):
            read = None
            if spec.mode == "pandas":
                from workers.staging import RunContext, stage_input  # pandas: this path only

                read = stage_input(conn, RunContext.build(run_id, spec), sample)
            args = ChunkArgs(run_id=run_id, chunk_no=-1, range=sample, rows_read=read)
            counts = conn.execute(statements.apply(args)).fetchone()
    except psycopg.Error as exc:
        raise CheckFailed(f"{what}: {describe(exc)}") from None
    except FerryError as exc:
        if spec.mode == "pandas":
            from workers.staging import ValueConversionError

            if isinstance(exc, ValueConversionError):  # values Ferry could not convert
                raise BadInput(f"{what}: {exc}") from None
        raise CheckFailed(f"{what}: {exc}") from None
    assert counts is not None
    if counts["rows_failed"]:
        rule = spec.rules[counts["failed_rule"]]
        raise CheckFailed(
            f"{what}: {counts['rows_failed']} rows fail the rule on {rule.field} "
            f"(action fail): {rule.error_message}"
        )
    return {
        "sample_ms": (time.perf_counter() - started) * 1000,
        "sample_rows": int(counts["rows_read"]),
        "sample_written": int(counts["rows_written"]),
        "sample_quarantined": int(counts["rows_quarantined"]),
    }


def _free_bytes(data_dir: str | None) -> float | None:
    """Free bytes on the database's disk, when its data directory is visible from here."""
    if not data_dir or not Path(data_dir).exists():
        return None
    try:
        return float(shutil.disk_usage(data_dir).free)
    except OSError:
        return None


def _estimated_rows(conn: psycopg.Connection[Any], statements: Statements) -> int:
    """The run's rows as PostgreSQL's planner estimates them (its statistics, no scan)."""
    row = conn.execute(statements.estimate_rows()).fetchone()
    return int(row["QUERY PLAN"][0]["Plan"]["Plan Rows"]) if row else 0


def _row_count(
    conn: psycopg.Connection[Any],
    statements: Statements,
    bounds: list[tuple[str | None, str]],
    chunk_size: int,
) -> int:
    """Rows in the run: every chunk but the last holds exactly chunk_size."""
    if not bounds:
        return 0
    row = conn.execute(statements.count_range(KeyRange(*bounds[-1]))).fetchone()
    return (len(bounds) - 1) * chunk_size + int(row["n"] if row else 0)


# -- control -------------------------------------------------------------------------------
def resume(ctx: Context, run_id: int) -> dict[str, Any]:
    """Continue a run from the ledger: after ``ferry pause``, a health pause, or losing the
    coordinator, Redis or workers. A window of the pending chunks is sent again (a duplicate
    is a no-op) and they release the rest; the chunks a lost coordinator had not recorded
    yet are recorded now (workers.walk)."""
    with ctx.db.transaction() as conn:
        run = ctx.ledger.get_run(run_id, conn)
        if run.status not in ("running", "paused"):
            raise CheckFailed(f"run {run_id} is {run.status}; only running or paused runs resume")
        conn.execute(q("reopen_run"), {"run_id": run_id, "from": ["paused"]})
    ctx.clear_line(run_id)
    requeued = sweep(ctx.ledger, ctx.dispatcher)
    pending = len(ctx.ledger.pending(run_id))
    sent = send_again(ctx, run_id, run.params)
    with ctx.db.transaction() as conn:
        ctx.ledger.audit(
            conn,
            actor=ctx.settings.actor,
            action="resume",
            run_id=run_id,
            params={
                "pending": pending,
                "dispatched": sent,
                "requeued": len(requeued),
                "was": run.status,
            },
        )
    recorded = walk_run(ctx.ledger, ctx.dispatcher, run).chunks if run.walking else 0
    ctx.ledger.finalize_run(run_id)
    return {"run_id": run_id, "dispatched": sent, "pending": pending, "recorded": recorded}


def send_again(ctx: Context, run_id: int, params: Mapping[str, Any]) -> int:
    """Send a window of the run's pending chunks, all counted as unsent first: how many."""
    limits = Limits.from_json(params.get("limits"))
    queue = params.get("queue")
    return len(send_window(ctx.ledger, ctx.dispatcher, run_id, limits, queue=queue, again=True))


def retry(ctx: Context, run_id: int) -> dict[str, Any]:
    """Send the failed chunks of a run again (after the cause was fixed), and the chunks a
    stopped run never reached."""
    with ctx.db.transaction() as conn:
        run = ctx.ledger.get_run(run_id, conn)
        if run.status not in ("running", "failed"):
            raise CheckFailed(f"run {run_id} is {run.status}; only failed runs can be retried")
        failed = [r["chunk_no"] for r in conn.execute(q("retry_failed"), {"run_id": run_id})]
        conn.execute(q("reopen_run"), {"run_id": run_id, "from": ["failed"]})
        ctx.ledger.audit(
            conn,
            actor=ctx.settings.actor,
            action="retry",
            run_id=run_id,
            params={"chunks": len(failed)},
        )
    pending = len(ctx.ledger.pending(run_id))
    return {"run_id": run_id, "dispatched": send_again(ctx, run_id, run.params), "pending": pending}


def rollback(
    ctx: Context, run_id: int, *, chunk_no: int | None = None, force: bool = False
) -> dict[str, Any]:
    """Restore pre-images, newest chunk first, as Celery tasks.

    Every chunk holding pre-images is restored, a quarantine re-run's included: pending
    re-runs are cancelled (their chunk done again) in the transaction that starts the
    rollback. Rows the application changed since their chunk are left as they are and
    recorded (``rollback_result``); ``force`` restores them too (and restores over a later
    run's writes), each chunk's overwrites audited by the worker that restores it.
    """
    with ctx.db.transaction() as conn:
        run = ctx.ledger.get_run(run_id, conn)
        again = run.status == "rolled_back" and force
        if run.status == "planning" or (run.status == "rolled_back" and not force):
            raise CheckFailed(f"run {run_id} is {run.status}; nothing to roll back")
        check_not_purged(conn, run_id)
        if not force:
            later = conn.execute(
                q("later_overlapping_runs"),
                {
                    "run_id": run_id,
                    "schema": run.spec.schema,
                    "table": run.spec.table,
                    "writes": list(run.spec.writes),
                },
            ).fetchone()
            if later is not None:
                raise CheckFailed(
                    f"run {later['id']} ran later over the same columns; roll it back first "
                    "(or pass --force)"
                )
        if again:  # rows left to the application by the rollback: restored now
            conn.execute(q("lock_run"), {"run_id": run_id})
            if not conn.execute(
                q("reopen_kept_chunks"), {"run_id": run_id, "chunk_no": chunk_no}
            ).fetchall():
                raise CheckFailed(f"run {run_id} is rolled_back and left no row to restore")
            ctx.ledger.set_run_status(conn, run_id, "rolling_back", [run.status])
        elif chunk_no is None:
            conn.execute(q("lock_run"), {"run_id": run_id})
            ctx.ledger.set_run_status(conn, run_id, "rolling_back", [run.status])
            conn.execute(q("cancel_pending_for_rollback"), {"run_id": run_id})
            ctx.ledger.record_walk(conn, run_id, 0, None, None)  # no chunk more to record
        conn.execute(q("reset_restore_failures"), {"run_id": run_id, "chunk_no": chunk_no})
        conn.execute(
            q("set_rollback_force"),
            {"run_id": run_id, "force": force, "actor": ctx.settings.actor},
        )
        order = [
            r["chunk_no"]
            for r in conn.execute(q("rollback_order"), {"run_id": run_id, "chunk_no": chunk_no})
        ]
        if chunk_no is not None and not order:
            raise CheckFailed(f"chunk {chunk_no} of run {run_id} is not done; nothing to restore")
        ctx.ledger.audit(
            conn,
            actor=ctx.settings.actor,
            action="rollback",
            run_id=run_id,
            params={"chunk": chunk_no, "chunks": len(order), "force": force},
        )
    ctx.dispatcher.send_rollbacks(run_id, order, queue=run.params.get("queue"))
    if chunk_no is None:
        ctx.ledger.finalize_run(run_id)
    return {"run_id": run_id, "chunks": len(order), "chunk": chunk_no}


def chunk_status(ctx: Context, run_id: int, chunk_no: int) -> str:
    """The chunk's status; ``rollback_failed`` for a done chunk whose restore failed for good."""
    with ctx.db.transaction() as conn:
        row = conn.execute(
            q("chunk_restore_state"), {"run_id": run_id, "chunk_no": chunk_no}
        ).fetchone()
    if row is None:
        raise BadInput(f"run {run_id} has no chunk {chunk_no}")
    return "rollback_failed" if row["restore_failed"] else str(row["status"])


def rollback_result(ctx: Context, run_id: int, chunk_no: int | None = None) -> dict[str, Any]:
    """What a rollback did, from the ledger (``Ledger.rollback_summary``)."""
    with ctx.db.transaction() as conn:
        return ctx.ledger.rollback_summary(conn, run_id, chunk_no)


# -- following a run -------------------------------------------------------------------------
def poller(
    ctx: Context, run_id: int, *, chunk_no: int | None = None
) -> Callable[[], tuple[int, int, str, bool]]:
    """A poll function for ``--wait``: reads the ledger, sweeps lost chunks, ends the run.

    The coordinator sweeps too, so a run whose workers all died still gets its
    chunks re-queued when workers come back.
    """
    last_sweep = [0.0]

    def poll() -> tuple[int, int, str, bool]:
        now = time.monotonic()
        if now - last_sweep[0] >= ctx.settings.sweep_interval:
            last_sweep[0] = now
            with contextlib.suppress(Exception):  # a missed sweep is retried on the next tick
                sweep(
                    ctx.ledger,
                    ctx.dispatcher,
                    stall_seconds=ctx.settings.stall_seconds,
                    queue_length=ctx.progress.queue_length,
                )
            ctx.ledger.finalize_run(run_id)
        if chunk_no is not None:
            status = chunk_status(ctx, run_id, chunk_no)
            return (int(status == "rolled_back"), 0, status, status != "done")
        with ctx.db.transaction() as conn:
            run = ctx.ledger.get_run(run_id, conn)
            rows = {r["status"]: r for r in conn.execute(q("status_counts"), {"run_id": run_id})}
        settled = sum(int(r["chunks"]) for s, r in rows.items() if s not in ("pending", "running"))
        processed = sum(int(r["rows_read"]) for r in rows.values())
        if run.status == "rolling_back" or run.status == "rolled_back":
            settled = int(rows["rolled_back"]["chunks"]) if "rolled_back" in rows else 0
        return settled, processed, run.status, run.is_final

    return poll
