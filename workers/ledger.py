"""The ledger: every read and write of Ferry's own tables, by named query.

The ledger (schema ``ferry`` in the migrated database) is the source of
truth. Functions that are one step of a bigger transaction take the
connection; the rest open their own short transaction.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from migrations.errors import CheckFailed, ChunkError, NotFound, PermanentChunkError, RuleFailure
from migrations.masking import MASK
from workers import identity
from workers.db import Database
from workers.failures import Breaker, report, stop_reason
from workers.limits import Limits
from workers.model import Run
from workers.queries import ledger_migrations, queries

LEDGER_LOCK = 0x66657272  # "ferr": advisory lock key for ledger migrations
Conn = psycopg.Connection[Any]
log = logging.getLogger("ferry.ledger")


def q(name: str) -> str:
    return queries()[name]


class Ledger:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._identity: str | None = None
        # (old, new) identity when the last init() found a copied ledger and re-keyed it
        self.rekeyed: tuple[str, str] | None = None
        self.appended = False  # an audit row was written: coordinator.audit_seal seals it

    # -- schema ------------------------------------------------------------------------------
    def init(self, *, wait_seconds: float = 30.0, mask_key: str | None = None) -> list[int]:
        """Create or upgrade the ledger; returns the versions applied now.

        ``mask_key`` (FERRY_MASK_KEY) replaces the masking key the ledger made for itself,
        for masked values that correlate across ledgers: it travels once, as a bind
        parameter, never in statement text.

        Polls ``pg_try_advisory_lock`` on a connection of its own rather than blocking
        in ``pg_advisory_lock``, so two concurrent ``ferry init`` never deadlock.
        """
        with self.db.connect() as conn:
            conn.autocommit = True
            try:
                deadline = time.monotonic() + wait_seconds
                while not conn.execute(
                    "SELECT pg_try_advisory_lock(%s) AS ok", (LEDGER_LOCK,)
                ).fetchone()["ok"]:  # type: ignore[index]
                    if time.monotonic() > deadline:
                        raise CheckFailed("another ferry init holds the ledger lock")
                    time.sleep(0.2)
                try:
                    applied = self._migrate(conn)
                    if mask_key:
                        conn.execute(
                            "SELECT ferry.set_mask_key(convert_to(%s, 'UTF8'))", (mask_key,)
                        )
                    return applied
                finally:
                    conn.execute("SELECT pg_advisory_unlock(%s)", (LEDGER_LOCK,))
            finally:
                conn.autocommit = False

    def _migrate(self, conn: Conn) -> list[int]:
        conn.execute("CREATE SCHEMA IF NOT EXISTS ferry")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS ferry.ledger_version (version integer PRIMARY KEY, "
            "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
        done = {r["version"] for r in conn.execute("SELECT version FROM ferry.ledger_version")}
        applied = []
        for version, name, text in ledger_migrations():
            if version in done:
                continue
            with conn.transaction():
                conn.execute(text)
                conn.execute(
                    "INSERT INTO ferry.ledger_version (version, name) VALUES (%s, %s)",
                    (version, name),
                )
            applied.append(version)
        with conn.transaction():
            self.rekeyed = identity.rekey_if_copied(conn)
        self._identity = None
        return applied

    def identity(self) -> str:
        """This ledger's identity (workers.identity), read once: it names every Redis key,
        task id and the default queue. CheckFailed on a copy that ``ferry init`` has not
        re-keyed, NotFound before ``ferry init``."""
        if self._identity is None:
            with self.db.connect() as conn:
                self._identity = identity.read(conn)
                conn.commit()
        return self._identity

    def version(self) -> int | None:
        with self.db.transaction() as conn:
            exists = conn.execute("SELECT to_regclass('ferry.ledger_version') AS t").fetchone()
            if not exists or exists["t"] is None:
                return None
            row = conn.execute("SELECT max(version) AS v FROM ferry.ledger_version").fetchone()
            return None if row is None else row["v"]

    def require(self) -> None:
        expected = max(v for v, _, _ in ledger_migrations())
        found = self.version()
        if found is None:
            raise NotFound("the ledger does not exist here: run `ferry init` first")
        if found < expected:
            raise CheckFailed(
                f"the ledger is at version {found}, {expected} needed: run `ferry init`"
            )

    def mask(self, values: Sequence[object]) -> list[str]:
        """Each value masked by ``ferry.mask`` (the key never leaves the database); NULL
        stays visible. A role without EXECUTE on it (``ferry_monitor``) gets bare ``***``."""
        texts = [None if v is None else str(v) for v in values]
        try:
            with self.db.transaction() as conn:
                rows = conn.execute(q("mask_values"), {"values": texts}).fetchall()
        except psycopg.errors.InsufficientPrivilege:
            return ["NULL" if v is None else MASK for v in texts]
        return [r["masked"] or "NULL" for r in rows]

    # -- runs ----------------------------------------------------------------------------------
    def create_run(
        self,
        conn: Conn,
        *,
        backfill: str,
        spec: Mapping[str, Any],
        params: Mapping[str, Any],
        actor: str,
    ) -> int:
        row = conn.execute(
            q("insert_run"),
            {"backfill": backfill, "spec": Jsonb(spec), "params": Jsonb(params), "actor": actor},
        ).fetchone()
        assert row is not None
        return int(row["id"])

    def insert_chunks(
        self, conn: Conn, run_id: int, bounds: Iterable[tuple[str | None, str]], first: int = 0
    ) -> int:
        """Record chunks numbered from ``first``, held back (not sent); how many."""
        count = 0
        with conn.cursor().copy("COPY ferry.chunks (run_id, chunk_no, lo, hi) FROM STDIN") as copy:
            for chunk_no, (lo, hi) in enumerate(bounds, start=first):
                copy.write_row((run_id, chunk_no, lo, hi))
                count += 1
        return count

    def walk_state(self, conn: Conn, run_id: int, *, lock: bool = False) -> Mapping[str, Any]:
        """The run's walk (workers.walk); with ``lock``, its row locked until ``conn``
        commits, waiting at most 5 s (see ``record_walk``)."""
        if lock:
            conn.execute("SELECT set_config('lock_timeout', '5s', true)")
        row: Mapping[str, Any] | None = conn.execute(
            q("lock_walk" if lock else "walk_state"), {"run_id": run_id}
        ).fetchone()
        if row is None:
            raise NotFound(f"no run {run_id}")
        return row

    def record_walk(
        self, conn: Conn, run_id: int, added: int, after: str | None, walk_to: str | None
    ) -> None:
        """Count ``added`` chunks more; the walk goes on after ``after`` up to ``walk_to``, or
        (both None) it is over."""
        conn.execute(
            q("record_walk"),
            {"run_id": run_id, "added": added, "walk_after": after, "walk_to": walk_to},
        )

    def get_run(self, run_id: int, conn: Conn | None = None) -> Run:
        if conn is None:
            with self.db.transaction() as own:
                return self.get_run(run_id, own)
        row = conn.execute(q("get_run"), {"run_id": run_id}).fetchone()
        if row is None:
            raise NotFound(f"no run {run_id}")
        return Run.from_row(row)

    @staticmethod
    def rollback_summary(conn: Conn, run_id: int, chunk_no: int | None = None) -> dict[str, Any]:
        """A rollback's counts: chunks restored, rows restored, rows left to the application
        (changed: ``kept``; deleted: ``gone``), rows ``overwritten`` (--force), chunks whose
        restore failed and the first of their (masked) errors."""
        row = conn.execute(
            q("rollback_summary"), {"run_id": run_id, "chunk_no": chunk_no}
        ).fetchone()
        assert row is not None
        return {
            "chunks": int(row["chunks"]),
            "restored": int(row["restored"]),
            "kept": int(row["kept"]),
            "gone": int(row["gone"]),
            "overwritten": int(row["overwritten"]),
            "failed_chunks": int(row["failed"]),
            "error": row["error"],
        }

    def spec_digest(self, conn: Conn, run_id: int) -> str:
        row = conn.execute(q("spec_digest"), {"run_id": run_id}).fetchone()
        if row is None:
            raise NotFound(f"no run {run_id}")
        return str(row["stored"])

    def check_spec(self, run_id: int) -> None:
        """Refuse a run whose stored spec is not the one its launch recorded: what runs is
        what was planned. Runs launched before the digest was recorded are not checked."""
        with self.db.transaction() as conn:
            row = conn.execute(q("spec_digest"), {"run_id": run_id}).fetchone()
        if row is None:
            raise NotFound(f"no run {run_id}")
        if row["launched"] is not None and row["launched"] != row["stored"]:
            raise PermanentChunkError(
                f"run {run_id}'s stored spec was changed after launch: refusing to run it"
            )

    def set_run_status(self, conn: Conn, run_id: int, status: str, from_: Sequence[str]) -> bool:
        row = conn.execute(
            q("set_run_status"), {"run_id": run_id, "status": status, "from": list(from_)}
        ).fetchone()
        return row is not None

    def finalize_run(self, run_id: int) -> str | None:
        """End a run whose chunks are all settled; safe to call from any number of workers.

        The run row is locked before counting, so of two workers finishing the last
        chunks at once, the later one sees both and ends the run.
        """
        with self.db.connect() as conn:
            # Asked after every chunk: one round trip (BEGIN, query and COMMIT pipelined; it
            # takes no lock, so a client cut off mid-pipeline leaves nothing held).
            with conn.pipeline():
                cur = conn.execute(q("run_active"), {"run_id": run_id})
                conn.commit()
            quick = cur.fetchone()
        if quick is None or (
            (quick["active"] or quick["walking"]) and quick["status"] == "running"
        ):
            # the worker finishing the last chunk will end the run, or the planner recording
            # the last of them (workers.walk)
            return None
        with self.db.transaction() as conn:
            row = conn.execute(q("lock_run"), {"run_id": run_id}).fetchone()
            if row is None or row["status"] not in ("running", "rolling_back"):
                return None
            if row["status"] == "rolling_back":
                status = self._rollback_outcome(conn, run_id)
                if status is None:
                    return None
                conn.execute(q("end_run"), {"run_id": run_id, "status": status})
                return status
            tally = conn.execute(q("chunk_tally"), {"run_id": run_id}).fetchone()
            assert tally is not None
            if tally["active"] or row["walking"]:
                return None
            if tally["failed"]:
                status = "failed"
            elif tally["quarantined"]:
                status = "completed_with_errors"
            else:
                status = "completed"
            conn.execute(q("end_run"), {"run_id": run_id, "status": status})
            return status

    @staticmethod
    def _rollback_outcome(conn: Conn, run_id: int) -> str | None:
        """How a rollback ends once no chunk is left to restore: rolled_back, or
        rollback_failed (with an alert) when some chunk's restore failed for good."""
        tally = conn.execute(q("rollback_tally"), {"run_id": run_id}).fetchone()
        assert tally is not None
        if tally["active"] or tally["to_restore"]:
            return None
        if not tally["failed"]:
            return "rolled_back"
        conn.execute(
            q("add_alert"),
            {
                "run_id": run_id,
                "type": "rollback_failed",
                "message": f"{tally['failed']} chunk(s) could not be restored; their writes "
                "stay in the table: see the chunks' restore_error, fix, and roll back again",
            },
        )
        return "rollback_failed"

    # -- chunks --------------------------------------------------------------------------------
    def claim(
        self,
        conn: Conn,
        run_id: int,
        chunk_no: int,
        worker: str,
        lease: float,
        idle_timeout_ms: int,
        lock_timeout_ms: int,
    ) -> Mapping[str, Any] | None:
        """Mark the chunk running under a lease, committed on ``conn`` before its work starts
        (the sweeper must see the lease while the chunk transaction runs).

        The claim waits for a live transaction on the chunk's row (a duplicate delivery, a
        rollback), but no longer than ``lock_timeout_ms``: past it the claim fails with 55P03,
        a transient error, and the task retries later instead of holding a worker process."""
        conn.rollback()
        # Not pipelined: a client cut off between a pipeline's statements and its Sync leaves
        # its backend holding the locks taken so far, waiting with no idle timeout armed (seen
        # in tests/cluster). The idle timeout also ends a claim cut off before its COMMIT,
        # which would hold the chunk's row. A lost claim only leaves the chunk pending, so it
        # need not wait for a WAL flush.
        conn.execute(
            "SELECT set_config('synchronous_commit', 'off', true),"
            " set_config('idle_in_transaction_session_timeout', %s, true),"
            " set_config('lock_timeout', %s, true)",
            (f"{idle_timeout_ms}ms", f"{lock_timeout_ms}ms"),
        )
        row = conn.execute(
            q("claim_chunk"),
            {"run_id": run_id, "chunk_no": chunk_no, "worker": worker, "lease": lease},
        ).fetchone()
        conn.commit()
        return row

    def release(
        self, run_id: int, chunk_no: int, err: ChunkError, lock_timeout_ms: int | None = None
    ) -> None:
        """Hand a chunk that failed transiently back to pending, for its retry.

        With ``lock_timeout_ms``, waiting no longer than that for the chunk's row: when a live
        transaction holds it (the failure was this delivery's claim, timed out behind another
        worker at the chunk) the release is not this worker's to make, and a worker process
        must not wait on it; the chunk stays with its holder, or its lease, for the sweeper.
        """
        with self.db.transaction() as conn:
            if lock_timeout_ms is not None:
                conn.execute(
                    "SELECT set_config('lock_timeout', %s, true)", (f"{lock_timeout_ms}ms",)
                )
            conn.execute(q("release_chunk"), self._failure(run_id, chunk_no, err))

    def fail(
        self,
        run_id: int,
        chunk_no: int,
        err: ChunkError,
        window: int,
        breaker: Breaker | None = None,
    ) -> list[int]:
        """Mark the chunk failed; the chunks it releases (to send once this returns).

        A rule with action ``fail``, an error no retry can fix, or the breaker tripping
        stops the run instead (status ``failed``, with an alert that says why): nothing more
        is released, chunks in flight hand themselves back, and every chunk not run stays
        pending for ``ferry retry`` once the cause is fixed (see ``failures.stop_reason``).
        """
        with self.db.transaction() as conn:
            conn.execute(q("fail_chunk"), self._failure(run_id, chunk_no, err))
            if isinstance(err, RuleFailure):
                conn.execute(q("stop_run"), {"run_id": run_id, "error": str(err)})
                return []
            tally = conn.execute(q("chunk_tally"), {"run_id": run_id}).fetchone()
            assert tally is not None
            stop = stop_reason(err, chunk_no, tally["done"], tally["failed"], breaker)
            if stop is None:
                return self._release(conn, run_id, window)
            kind, message = stop
            stopped = conn.execute(
                q("stop_run_alerting"),
                {"run_id": run_id, "error": message, "type": kind, "message": message},
            ).fetchone()
            if stopped is not None:
                log.warning("run %s stopped (%s) after chunk %s failed", run_id, kind, chunk_no)
            return []

    def release_window(self, run_id: int, window: int, *, again: bool = False) -> list[int]:
        """Mark the run's next held-back chunks sent, up to ``window`` sent and unsettled;
        their numbers, to send once this returns (a send lost after it is a stalled run's,
        which the sweeper sends again). ``again``: first count every pending chunk as not
        sent, for a run whose tasks may be lost (resumed, stalled, retried)."""
        with self.db.transaction() as conn:
            if again:
                conn.execute(q("hold_back_pending"), {"run_id": run_id})
            return self._release(conn, run_id, window)

    @staticmethod
    def _release(conn: Conn, run_id: int, window: int) -> list[int]:
        rows = conn.execute(q("release_chunks"), {"run_id": run_id, "window": window})
        return sorted(r["chunk_no"] for r in rows)

    @staticmethod
    def _failure(run_id: int, chunk_no: int, err: ChunkError) -> dict[str, Any]:
        return {
            "run_id": run_id,
            "chunk_no": chunk_no,
            "error": str(err),
            "info": Jsonb(report(err)),
        }

    def requeue_expired(self) -> list[tuple[int, int, str | None]]:
        """(run, chunk, the run's queue) of every chunk whose lease expired, now pending."""
        with self.db.transaction() as conn:
            rows = conn.execute(q("requeue_expired")).fetchall()
        return [(r["run_id"], r["chunk_no"], r["queue"]) for r in rows]

    def requeue_stalled_restores(self, stall_seconds: float) -> list[tuple[int, int, str | None]]:
        """(run, chunk, the run's queue) of restores asked for ``stall_seconds`` ago that no
        worker holds: their task was lost; asked for again now."""
        with self.db.transaction() as conn:
            rows = conn.execute(q("requeue_stalled_restores"), {"stall": stall_seconds})
            return [(r["run_id"], r["chunk_no"], r["queue"]) for r in rows]

    def abandoned_walks(self, stall_seconds: float) -> list[int]:
        """Runs whose launch stopped recording their chunks ``stall_seconds`` ago or more."""
        with self.db.transaction() as conn:
            rows = conn.execute(q("abandoned_walks"), {"stall": stall_seconds}).fetchall()
        return [int(r["id"]) for r in rows]

    def stalled_runs(self, stall_seconds: float) -> list[tuple[int, str | None, Limits]]:
        with self.db.transaction() as conn:
            rows = conn.execute(q("stalled_runs"), {"stall": stall_seconds}).fetchall()
        return [(r["id"], r["queue"], Limits.from_json(r["limits"])) for r in rows]

    def settled(self, run_id: int, chunk_no: int) -> bool:
        """True when the chunk is done, failed, cancelled or rolled back (or never existed)."""
        with self.db.transaction() as conn:
            row = conn.execute(q("chunk_settled"), {"run_id": run_id, "chunk_no": chunk_no})
            found = row.fetchone()
        return bool(found and found["settled"])

    def pending(self, run_id: int) -> list[int]:
        with self.db.transaction() as conn:
            return [r["chunk_no"] for r in conn.execute(q("pending_chunks"), {"run_id": run_id})]

    # -- audit ---------------------------------------------------------------------------------
    def audit(
        self,
        conn: Conn,
        *,
        actor: str,
        action: str,
        run_id: int | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        conn.execute(
            q("audit"),
            {
                "actor": actor,
                "host": socket.gethostname(),
                "action": action,
                "run_id": run_id,
                "params": Jsonb(json.loads(json.dumps(params or {}, default=str))),
            },
        )
        self.appended = True
