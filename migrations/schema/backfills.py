"""Backfill steps of the schema workflow: when an expand or a Python step is complete.

``migrations`` imports neither ``workers`` nor ``coordinator``, so launching, following,
verifying and rolling back runs are a callback interface (``BackfillHooks``) the
coordinator implements (``coordinator/schema_steps.py``); the decisions (which run
counts, when a version completes, what the user must do otherwise) stay here, next to
the ledger they read.

A run that ended ``completed_with_errors`` left some rows unchanged (quarantined by a
skip rule). Completing the expand would let the contract build on a column that is
not filled everywhere, so it completes only when its latest verify passed *and* the
user said so with ``accept_quarantine``; otherwise the version stays in_progress with
a message naming the run and how many rows it quarantined.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from migrations.errors import BadInput, CheckFailed
from migrations.schema import store
from migrations.schema.source import MigrationFile

Conn = store.Conn


class BackfillHooks(Protocol):
    """What the coordinator does for the runner; each call may raise a ``FerryError``."""

    def check(self, reference: str) -> None:
        """Refuse (``BadInput``) a reference that does not name a Backfill, before any change."""

    def launch(self, reference: str) -> int:
        """Plan and dispatch a run of ``reference``; returns its id."""

    def wait(self, run_id: int) -> None:
        """Follow the run until it ends (as ``ferry launch --wait`` does)."""

    def verify(self, run_id: int) -> None:
        """Verify a finished run; its report is recorded in ``ferry.verifications``."""

    def rollback(self, run_id: int) -> None:
        """Restore the run's pre-images and wait until it is rolled back."""


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """Whether a version waiting on a backfill could be completed, and if not, why."""

    completed: bool
    run_id: int | None = None
    message: str = ""
    blocked: bool = False  # the run ended and cannot complete it: the user must act


class BackfillSteps:
    """Completes and undoes the versions whose step is a backfill run."""

    def __init__(
        self,
        conn: Conn,
        hooks: BackfillHooks | None,
        *,
        wait: bool = True,
        accept_quarantine: bool = False,
    ) -> None:
        self.conn = conn
        self.hooks = hooks
        self.wait = wait
        self.accept_quarantine = accept_quarantine

    def require_hooks(self, migrations: list[MigrationFile]) -> None:
        """Python steps launch runs: refuse them, before any change, without a coordinator."""
        steps = [m for m in migrations if m.is_backfill_step]
        if steps and self.hooks is None:
            raise BadInput(
                f"{steps[0].path.name} is a backfill step: run it with `ferry schema up`"
            )
        for migration in steps:
            assert self.hooks is not None and migration.backfill is not None
            self.hooks.check(migration.backfill)

    # -- up --------------------------------------------------------------------------------
    def settle(self, row: store.VersionRow, migration: MigrationFile | None) -> Outcome:
        """Complete ``row`` if its backfill is done and verified; the ledger says why not."""
        assert row.backfill is not None and row.applied_at is not None
        if migration is not None and migration.is_backfill_step:
            self.require_hooks([migration])
            outcome = self._settle_step(row)
        else:
            outcome = self._settle_expand(row)
        if outcome.completed:
            assert outcome.run_id is not None
            store.complete_with_run(self.conn, row.version, outcome.run_id)
        elif outcome.blocked:
            store.note(self.conn, row.version, outcome.message)  # shown by `ferry schema status`
        return outcome

    def _settle_expand(self, row: store.VersionRow) -> Outcome:
        """A SQL expand: the user launches and verifies the run (``ferry launch``, ``verify``)."""
        assert row.backfill is not None and row.applied_at is not None
        since = row.applied_at
        run_id = store.verified_run(
            self.conn, row.backfill, since, accept_quarantine=self.accept_quarantine
        )
        if run_id is not None:
            return Outcome(completed=True, run_id=run_id)
        latest = store.latest_run(self.conn, row.backfill, since)
        state = None if latest is None else store.run_state(self.conn, latest)
        if state is not None and state.status == "completed_with_errors" and state.verified:
            return self._quarantined(state)
        waiting = f"waits for its backfill {row.backfill}: "
        if state is None:
            return Outcome(
                completed=False, message=waiting + "`ferry launch` it, then `ferry verify` the run"
            )
        return Outcome(
            completed=False,
            run_id=state.id,
            message=waiting + f"run {state.id} is {state.status}; it completes this version "
            f"once it is completed and `ferry verify {state.id}` passed",
        )

    def _settle_step(self, row: store.VersionRow) -> Outcome:
        """A Python step: launch its run if none is alive, wait, verify, then judge."""
        assert self.hooks is not None and row.backfill is not None and row.applied_at is not None
        run_id = row.run_id or store.latest_run(self.conn, row.backfill, row.applied_at)
        state = None if run_id is None else store.run_state(self.conn, run_id)
        if state is None or state.status in ("cancelled", "rolled_back"):
            run_id = self.hooks.launch(row.backfill)
            store.set_run(self.conn, row.version, run_id)
            state = store.run_state(self.conn, run_id)
            assert state is not None
        if not state.final and self.wait:
            self.hooks.wait(state.id)
            state = self._state(state.id)
        if not state.final:
            return Outcome(
                completed=False,
                run_id=state.id,
                message=f"backfill run {state.id} is {state.status}: `ferry schema up` again "
                f"once it ends (`ferry status {state.id} --watch` follows it)",
            )
        if state.status not in ("completed", "completed_with_errors"):
            return Outcome(
                completed=False,
                run_id=state.id,
                blocked=True,
                message=f"backfill run {state.id} ended {state.status}: fix the cause, "
                f"`ferry retry {state.id}`, then `ferry schema up` again",
            )
        if not state.verified:
            self.hooks.verify(state.id)
            state = self._state(state.id)
        if not state.verified:
            return Outcome(
                completed=False,
                run_id=state.id,
                blocked=True,
                message=f"backfill run {state.id} did not pass verification "
                f"(`ferry verify {state.id}` shows why)",
            )
        if state.status == "completed_with_errors" and not self.accept_quarantine:
            return self._quarantined(state)
        return Outcome(completed=True, run_id=state.id)

    def _quarantined(self, state: store.RunState) -> Outcome:
        return Outcome(
            completed=False,
            run_id=state.id,
            blocked=True,
            message=f"backfill run {state.id} ended completed_with_errors with "
            f"{state.quarantined} row(s) quarantined (`ferry quarantine {state.id}`): fix them "
            f"and `ferry retry {state.id} --quarantined`, or pass --accept-quarantine to "
            "complete the version with those rows left unchanged",
        )

    def _state(self, run_id: int) -> store.RunState:
        state = store.run_state(self.conn, run_id)
        if state is None:
            raise CheckFailed(f"backfill run {run_id} is no longer in the ledger")
        return state

    # -- down ------------------------------------------------------------------------------
    def undo(self, row: store.VersionRow, *, rollback: bool, done: str = "") -> list[int]:
        """Roll back every run of the version's backfill that left data, newest first.

        ``done`` names what this ``down`` already rolled back, for the refusal message.
        """
        if row.backfill is None or row.applied_at is None:
            return []
        runs = store.runs_with_writes(self.conn, row.backfill, row.applied_at)
        if not runs:
            return []
        if not rollback or self.hooks is None:
            raise CheckFailed(
                f"{done}version {row.version} ({row.name}) has backfill run(s) "
                f"{', '.join(map(str, runs))} still applied: undo them first "
                f"(`ferry rollback {runs[0]} --wait`), then run `ferry schema down` again"
            )
        for run_id in runs:
            self.hooks.rollback(run_id)
            state = self._state(run_id)
            if state.status != "rolled_back":
                raise CheckFailed(
                    f"{done}rolling back backfill run {run_id} of version {row.version} "
                    f"ended {state.status}: `ferry status {run_id}` shows why; the version "
                    "is still applied"
                )
        return runs
