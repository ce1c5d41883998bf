"""Applying and rolling back versioned schema migrations on one connection.

Like Flyway, the ledger row of a version is the truth: an applied file whose checksum
changed is refused until ``repair``; only one migrator works at a time (a session-level
advisory lock, because non-transactional statements outlive any one transaction). Each
migration runs in one transaction where PostgreSQL allows it, so a failure leaves status
``failed`` and nothing applied; statements that refuse a transaction block (CREATE INDEX
CONCURRENTLY...) run alone, and the version is marked non-transactional.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from migrations.errors import BadInput, CheckFailed, FerryError
from migrations.masking import mask_text
from migrations.schema import store
from migrations.schema.backfills import BackfillHooks, BackfillSteps
from migrations.schema.classify import Category
from migrations.schema.source import MigrationFile, Statement

SCHEMA_LOCK = 0x66657273  # "fers": advisory lock key of schema migrators
HELPERS_SCHEMA = "ferry_helpers"
Conn = psycopg.Connection[Any]
RETRYABLE = ("pending", "rolled_back")
_CATALOG_CLASSES = ("42", "0A", "3F", "55", "57", "25")  # syntax, object state, locks...
_SETTING = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")


@dataclass(frozen=True, kw_only=True)
class Step:
    """What happened to one version in an ``up`` or ``down``."""

    version: int
    name: str
    status: str
    seconds: float
    run_id: int | None = None  # the backfill run that completed (or undid) the version
    message: str = ""  # why a version is still in_progress
    blocked: bool = False  # its run ended without completing it: the user must act


class SchemaRunner:
    """Runs migration files against the database of ``conn`` (left as it was found)."""

    def __init__(
        self,
        conn: Conn,
        migrations: Sequence[MigrationFile],
        *,
        actor: str,
        wait: bool = True,
        wait_seconds: float = 60.0,
        on_wait: Callable[[], None] | None = None,
        backfills: BackfillHooks | None = None,
        wait_backfill: bool = True,
        accept_quarantine: bool = False,
    ) -> None:
        self.conn = conn
        self.migrations = {m.version: m for m in migrations}
        self.actor = actor
        self.wait = wait
        self.wait_seconds = wait_seconds
        self.on_wait = on_wait
        self.backfills = BackfillSteps(
            conn, backfills, wait=wait_backfill, accept_quarantine=accept_quarantine
        )

    # -- locking -------------------------------------------------------------------------------
    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the migrator lock, autocommit on; waits up to ``wait_seconds`` if asked to."""
        if self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            raise CheckFailed("the schema runner needs a connection outside any transaction")
        was = self.conn.autocommit
        self.conn.autocommit = True
        try:
            deadline = time.monotonic() + self.wait_seconds
            told = False
            while not self._try_lock():
                if not self.wait:
                    raise CheckFailed(
                        "another ferry schema migrator is running here (use --wait to wait)"
                    )
                if time.monotonic() > deadline:
                    raise CheckFailed(
                        f"another ferry schema migrator held the lock for {self.wait_seconds:g}s"
                    )
                if not told and self.on_wait is not None:
                    self.on_wait()
                    told = True
                time.sleep(0.1)
            try:
                store.require_ledger(self.conn)
                yield
            finally:
                self.conn.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK,))
        finally:
            self.conn.autocommit = was

    def _try_lock(self) -> bool:
        return bool(_scalar(self.conn, "SELECT pg_try_advisory_lock(%s)", (SCHEMA_LOCK,)))

    # -- checks --------------------------------------------------------------------------------
    def _check_ledger(self, rows: dict[int, store.VersionRow]) -> None:
        """Refuse edited applied files and versions a crash or failure left half done."""
        for row in rows.values():
            migration = self.migrations.get(row.version)
            if row.applied and migration and migration.checksum != row.checksum:
                raise BadInput(
                    f"{migration.path.name} changed after it was applied (checksum differs): "
                    "restore it, or run `ferry schema repair` to accept the edit"
                )
            if row.non_transactional and _interrupted(row):
                raise CheckFailed(
                    f"migration {row.name} is {row.status} and ran outside a transaction, so "
                    "part of it may be applied: check the database (invalid indexes...), then "
                    "run `ferry schema repair`"
                )

    def _target(self, to: int | None, *, allow_zero: bool) -> None:
        if to is None or (allow_zero and to == 0) or to in self.migrations:
            return
        raise BadInput(f"no migration file has version {to}")

    # -- up ------------------------------------------------------------------------------------
    def pending(self, rows: dict[int, store.VersionRow], to: int | None = None) -> list[int]:
        """Versions ``up`` would apply, in order (failed transactional ones are retried)."""
        found = []
        for version in sorted(self.migrations):
            row = rows.get(version)
            if to is not None and version > to:
                break
            # A transactional version that failed or was interrupted left nothing behind.
            if (
                row is None
                or row.status in RETRYABLE
                or (_interrupted(row) and not row.non_transactional)
            ):
                found.append(version)
        return found

    def up(self, *, to: int | None = None, allow_destructive: bool = False) -> list[Step]:
        """Complete versions whose backfill is done, then apply pending ones in order.

        Stops at the first version that stays in_progress (an expand, or a backfill step
        whose run is not complete and verified): what follows is built on it.
        """
        self._target(to, allow_zero=False)
        with self.locked():
            rows = store.load(self.conn)
            self._check_ledger(rows)
            todo = self.pending(rows, to)
            newest = max((r.version for r in rows.values() if r.applied), default=0)
            for version in todo:
                migration = self.migrations[version]
                if version < newest:
                    raise BadInput(
                        f"{migration.path.name} is older than the applied version {newest}: "
                        "give it a newer version (out-of-order migrations are refused)"
                    )
                if not allow_destructive:
                    _refuse_destructive(migration)
            self.backfills.require_hooks([self.migrations[v] for v in todo])
            steps: list[Step] = []
            for row in sorted(rows.values(), key=lambda r: r.version):
                if not row.awaiting or row.backfill is None:
                    continue
                step = self._settle(row)
                if step.status == "in_progress":
                    if todo:
                        raise CheckFailed(
                            f"version {row.version} ({row.name}) {step.message}; later "
                            "versions (the contract) are refused until then"
                        )
                    return [*steps, step]
                steps.append(step)
            for version in todo:
                previous = max(
                    (r.version for r in store.load(self.conn).values() if r.applied),
                    default=None,
                )
                steps.append(self._apply(self.migrations[version], previous))
                if steps[-1].status == "in_progress":
                    break  # what follows waits for its backfill to be verified
            return steps

    def _settle(self, row: store.VersionRow) -> Step:
        began = time.monotonic()
        outcome = self.backfills.settle(row, self.migrations.get(row.version))
        return Step(
            version=row.version,
            name=row.name,
            status="completed" if outcome.completed else "in_progress",
            seconds=round(time.monotonic() - began, 3),
            run_id=outcome.run_id,
            message=outcome.message,
            blocked=outcome.blocked,
        )

    def _apply(self, migration: MigrationFile, previous: int | None) -> Step:
        began = time.monotonic()
        store.start(
            self.conn,
            migration,
            actor=self.actor,
            rollback_point=str(previous) if previous is not None else "base",
        )
        if migration.is_backfill_step:
            return self._launch_step(migration)
        statements = [*migration.preconditions, *migration.forward]
        try:
            self._execute(migration, statements)
        except _StatementFailed as failure:
            store.set_status(self.conn, migration.version, "failed", error=failure.message)
            raise CheckFailed(f"migration {migration.name} failed: {failure.message}") from None
        if migration.backfill is not None:
            store.await_backfill(self.conn, migration.version)
        else:
            store.set_status(self.conn, migration.version, "completed", actor=self.actor)
        return Step(
            version=migration.version,
            name=migration.name,
            status="in_progress" if migration.backfill else "completed",
            seconds=round(time.monotonic() - began, 3),
        )

    def _launch_step(self, migration: MigrationFile) -> Step:
        """A Python step: applied_at first (its runs are those created after it), then run."""
        store.await_backfill(self.conn, migration.version)
        row = store.load(self.conn)[migration.version]
        try:
            return self._settle(row)
        except FerryError as exc:
            if store.load(self.conn)[migration.version].run_id is None:
                # Nothing was launched: failed, and retried by the next ``up``.
                store.set_status(self.conn, migration.version, "failed", error=str(exc))
            raise

    # -- down ----------------------------------------------------------------------------------
    def down(self, *, to: int | None = None, rollback_backfills: bool = True) -> list[Step]:
        """Roll back the newest applied version, or every one newer than ``to``.

        A version with a backfill has its runs rolled back first (pre-images, newest run
        first), then its rollback section runs; ``rollback_backfills=False`` stops there
        instead and tells the user which run to roll back.
        """
        self._target(to, allow_zero=True)
        with self.locked():
            rows = store.load(self.conn)
            self._check_ledger(rows)
            applied = sorted((v for v, r in rows.items() if r.applied), reverse=True)
            targets = applied[:1] if to is None else [v for v in applied if v > to]
            for version in targets:
                migration = self.migrations.get(version)
                if migration is None:
                    raise BadInput(
                        f"version {version} ({rows[version].name}) is applied but its file is "
                        "not in the migrations folder"
                    )
                if migration.rollback is None:
                    raise BadInput(
                        f"{migration.path.name} has no '-- Rollback script' section: it cannot "
                        "be rolled back"
                    )
            steps: list[Step] = []
            for version in targets:
                began = time.monotonic()
                done = "".join(f"rolled back {s.version} {s.name}; " for s in steps)
                runs = self.backfills.undo(rows[version], rollback=rollback_backfills, done=done)
                step = self._revert(self.migrations[version], rows[version].status)
                steps.append(
                    Step(
                        version=step.version,
                        name=step.name,
                        status=step.status,
                        seconds=round(time.monotonic() - began, 3),
                        run_id=runs[0] if runs else None,
                    )
                )
            return steps

    def _revert(self, migration: MigrationFile, status: str) -> Step:
        assert migration.rollback is not None
        began = time.monotonic()
        store.set_status(self.conn, migration.version, "in_progress")
        try:
            self._execute(migration, list(migration.rollback))
        except _StatementFailed as failure:
            partial = failure.committed
            store.set_status(
                self.conn,
                migration.version,
                "failed" if partial else status,
                error=f"rollback failed: {failure.message}",
            )
            raise CheckFailed(
                f"rollback of {migration.name} failed: {failure.message}"
                + ("" if partial else " (nothing was changed; it is still applied)")
            ) from None
        store.set_status(self.conn, migration.version, "rolled_back", actor=self.actor)
        return Step(
            version=migration.version,
            name=migration.name,
            status="rolled_back",
            seconds=round(time.monotonic() - began, 3),
        )

    # -- repair --------------------------------------------------------------------------------
    def repair(self) -> dict[str, list[int]]:
        """Accept edited files' checksums; forget failed and interrupted versions."""
        with self.locked():
            realigned, forgotten = [], []
            for row in store.load(self.conn).values():
                migration = self.migrations.get(row.version)
                if _interrupted(row):
                    store.forget(self.conn, row.version)
                    forgotten.append(row.version)
                elif migration is not None and migration.checksum != row.checksum:
                    store.set_checksum(self.conn, row.version, migration.checksum)
                    realigned.append(row.version)
            return {"realigned": realigned, "forgotten": forgotten}

    # -- execution -----------------------------------------------------------------------------
    def _execute(self, migration: MigrationFile, statements: Sequence[Statement]) -> None:
        """Run statements, in one transaction per run of transactional ones.

        Helpers are reachable by appending their schema to search_path: locally inside
        each transaction, for the session around a statement that runs alone.
        """
        original = str(_scalar(self.conn, "SELECT current_setting('search_path')") or "")
        with_helpers = f"{original}, {HELPERS_SCHEMA}" if original.strip() else HELPERS_SCHEMA
        settings = {
            str(s.node.name).lower()
            for s in statements
            if type(s.node).__name__ == "VariableSetStmt" and _SETTING.fullmatch(s.node.name or "")
        }
        committed = False
        try:
            for group in _groups(statements):
                current = group[0]
                try:
                    if current.own_transaction:
                        self.conn.execute(
                            "SELECT set_config('search_path', %s, false)", (with_helpers,)
                        )
                        self.conn.execute(current.sql)
                    else:
                        with self.conn.transaction():
                            self.conn.execute(
                                "SELECT set_config('search_path', %s, true)", (with_helpers,)
                            )
                            for current in group:
                                self.conn.execute(current.sql)
                except psycopg.Error as exc:
                    raise _StatementFailed(migration, current, exc, committed) from exc
                committed = True
        finally:
            self.conn.execute("SELECT set_config('search_path', %s, false)", (original,))
            for name in sorted(settings - {"search_path", "transaction"}):
                self.conn.execute(
                    sql.SQL("RESET {}").format(
                        sql.SQL(".").join(sql.Identifier(part) for part in name.split("."))
                    )
                )


def _interrupted(row: store.VersionRow) -> bool:
    """Failed, or in_progress without its SQL committed (a crash, not a wait for a backfill)."""
    return row.status == "failed" or (row.status == "in_progress" and not row.awaiting)


def _scalar(conn: Conn, query: str, params: tuple[Any, ...] = ()) -> Any:
    """First column of the first row, whatever row factory the caller's connection uses."""
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(query, params).fetchone()
    return None if row is None else row[0]


def _groups(statements: Sequence[Statement]) -> list[list[Statement]]:
    """Consecutive transactional statements together; each one that cannot be, alone."""
    groups: list[list[Statement]] = []
    for statement in statements:
        if statement.own_transaction or not groups or groups[-1][0].own_transaction:
            groups.append([statement])
        else:
            groups[-1].append(statement)
    return groups


def _refuse_destructive(migration: MigrationFile) -> None:
    for statement in migration.forward:
        if statement.category is Category.DESTRUCTIVE:
            raise BadInput(
                f"{migration.path.name}: line {statement.line}: destructive step "
                f"({statement.first_line[:60]}): pass --allow-destructive to apply it"
            )


class _StatementFailed(Exception):
    """A statement failed; the message names file and line and masks any value."""

    def __init__(
        self, migration: MigrationFile, statement: Statement, exc: psycopg.Error, committed: bool
    ) -> None:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        what = "pre-condition" if statement.phase.value == "precondition" else "statement"
        message = f"{migration.path.name}: line {statement.line}: {what} failed: {first}"
        if committed:
            message += " (statements before it were committed: the version is partly applied)"
        # Catalog errors name objects, not rows: keep them readable. Anything else may quote
        # a row value (data and constraint errors, user RAISE messages) and is masked.
        state = exc.sqlstate or ""
        self.message = message if state[:2] in _CATALOG_CLASSES else mask_text(message)
        self.committed = committed
        super().__init__(self.message)
