"""The rest of a run's chunks, recorded while its first ones run.

``ferry launch`` records the run with the first batch of its chunks and sends their tasks;
the walk of the key index (``planner.walk_batches``) then goes on in the same command, one
batch a transaction, until it reaches the key that was last when it began (ledger version
9: ``walk_after``, ``walk_to``). On a table of hundreds of millions of rows the first chunk
no longer waits for a walk of the whole index, and no transaction of the coordinator stays
open for as long as that walk.

Each batch goes on from the boundary the ledger says was recorded last, not from one this
process remembers, and is recorded under the run's row lock only if that boundary is still
the last (the batch is walked before the lock is taken: workers update the run row too, and
must not wait for a walk). So two processes walking the same run (a ``ferry resume`` while
the launch still walks) record every chunk once. A rollback or cancel takes the same lock; a
walk that finds its run no longer running (or paused) records nothing more and ends. A walk
cut off with its coordinator is picked up by ``ferry resume``, or by a worker's sweeper once
no batch has been recorded for the stall interval (``walked_at``); until then the run stays
running: the ledger knows chunks are missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from migrations.errors import CheckFailed
from workers.dispatch import Dispatcher, send_window
from workers.ledger import Ledger
from workers.limits import Limits
from workers.model import Run
from workers.planner import FIRST_BATCH, LARGEST_BATCH, Bounds, PostgresKeys, walk_batches
from workers.statements import Statements

# While walking, chunks are recorded only where the run is one of these.
WALKS_ON = ("running", "paused")


@dataclass(frozen=True)
class Walked:
    """What a walk recorded: chunks, and the last of them (its rows are counted exactly)."""

    chunks: int
    last: tuple[str | None, str] | None


def walk_on(
    conn: psycopg.Connection[Any],
    ledger: Ledger,
    dispatcher: Dispatcher,
    statements: Statements,
    limits: Limits,
    *,
    queue: str | None = None,
) -> Walked:
    """Record the rest of the run's chunks, a batch a transaction; each batch recorded is
    offered to the broker at once (``send_window``: the workers may have run out of chunks),
    and the run is ended by the last batch if its chunks have all settled by then."""
    run_id = statements.run_id
    source = PostgresKeys(conn, statements)
    chunks, last, size = 0, None, FIRST_BATCH * 2
    while True:
        seen = ledger.walk_state(conn, run_id)
        if seen["walk_to"] is None:  # over: walked by someone else, or never needed
            conn.commit()
            break
        batch, done = _batch(source, statements, seen, size)
        state = ledger.walk_state(conn, run_id, lock=True)
        if (state["walk_after"], state["walk_to"]) != (seen["walk_after"], seen["walk_to"]):
            conn.rollback()  # another walker recorded that batch meanwhile
            continue
        if state["status"] not in WALKS_ON:  # rolled back or cancelled: no chunk more
            ledger.record_walk(conn, run_id, 0, None, None)
            conn.commit()
            break
        added = ledger.insert_chunks(conn, run_id, batch, first=state["next_no"])
        ledger.record_walk(
            conn,
            run_id,
            added,
            None if done else batch[-1][1],
            None if done else state["walk_to"],
        )
        conn.commit()
        chunks += added
        last = batch[-1] if done else None
        send_window(ledger, dispatcher, run_id, limits, queue=queue)
        if done:
            break
        size = min(size * 2, LARGEST_BATCH)
    ledger.finalize_run(run_id)
    return Walked(chunks, last)


def walk_run(ledger: Ledger, dispatcher: Dispatcher, run: Run) -> Walked:
    """``walk_on`` for a run as the ledger has it: its spec, limits and queue, on a
    connection of its own."""
    statements = Statements(run.spec, run.id)
    limits = Limits.from_json(run.params.get("limits"))
    with ledger.db.connect() as conn:
        return walk_on(conn, ledger, dispatcher, statements, limits, queue=run.params.get("queue"))


def _batch(
    source: PostgresKeys, statements: Statements, state: Any, size: int
) -> tuple[Bounds, bool]:
    after, last = state["walk_after"], state["walk_to"]
    if after is None:  # launch records a first batch before any walk goes on
        raise CheckFailed(f"run {statements.run_id} has chunks to record but no boundary")
    spec = statements.spec
    return next(walk_batches(source, spec.chunk_size, after=after, last=last, first=size))
