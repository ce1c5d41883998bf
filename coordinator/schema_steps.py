"""The coordinator's side of backfill steps in ``ferry schema up`` and ``down``.

The schema runner (``migrations.schema``) decides when a version waiting on a backfill
is complete; launching, following, verifying and rolling back runs are coordinator
verbs, so they are done here with exactly the calls ``ferry launch --wait``,
``ferry verify`` and ``ferry rollback --wait`` make. Each of those writes its own
audit row.
"""

from __future__ import annotations

from coordinator import commands, render
from coordinator.verify import verify as verify_run
from migrations.loading import load_backfill
from workers.limits import Limits


class CoordinatorBackfills:
    """``migrations.schema.backfills.BackfillHooks`` on a coordinator ``Context``."""

    def __init__(self, ctx: commands.Context, *, limits: Limits | None = None) -> None:
        self.ctx = ctx
        self.limits = limits

    def check(self, reference: str) -> None:
        load_backfill(reference)  # BadInput / SpecError (exit 2) before anything changes

    def launch(self, reference: str) -> int:
        result = commands.launch(self.ctx, reference, limits=self.limits)
        assert result.run_id is not None
        render.err.print(f"backfill {reference}: run {result.run_id} launched", markup=False)
        return result.run_id

    def wait(self, run_id: int) -> None:
        run = self.ctx.ledger.get_run(run_id)
        render.follow(run.total_chunks or 0, commands.poller(self.ctx, run_id), f"run {run_id}")

    def verify(self, run_id: int) -> None:
        report = verify_run(self.ctx, run_id)
        render.err.print(f"run {run_id}: verification {'ok' if report['ok'] else 'FAILED'}")

    def rollback(self, run_id: int) -> None:
        result = commands.rollback(self.ctx, run_id)
        render.follow(result["chunks"], commands.poller(self.ctx, run_id), f"rollback {run_id}")
