"""Chunk failures: driver and user-code exceptions turned into Ferry's kinds, and reported.

Done once, at the boundary where a chunk transaction fails. The message kept
is safe to store and show: SQLSTATE, the error class, the primary message
with every quoted literal masked, and the names (never values) PostgreSQL
reports in its diagnostics. DETAIL is dropped: it is where values live.
``report`` gives the plan's MigrationError for a failure; ``stop_reason`` says when one
failure (or the run's failures together) should stop the whole run at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from migrations.errors import (
    ChunkError,
    FerryError,
    PermanentChunkError,
    RuleFailure,
    TransientChunkError,
)
from migrations.masking import mask_free_text, mask_text, names_are_safe

__all__ = ["Breaker", "RuleFailure", "classify", "describe", "report", "stop_reason"]

# Retrying can succeed: serialization, deadlock, lock timeout, statement timeout,
# operator intervention, connection exceptions, insufficient resources.
TRANSIENT_CLASSES = ("40", "08", "53", "57")
TRANSIENT_CODES = frozenset({"55P03", "55006"})
# Errors no retry can fix and every other chunk of the run will meet as well: the chunk's
# statement no longer fits the database (42: undefined table 42P01, column 42703, function
# 42883, datatype mismatch 42804, insufficient privilege 42501, ...), its schema or database
# is gone (3F, 3D), a feature is not supported (0A), the role may not log in (28). A data
# error (22, 23) depends on the chunk's rows: it fails that chunk only, and the breaker
# (``Breaker``) judges how many such chunks a run may lose.
SYSTEMIC_CLASSES = ("0A", "28", "3D", "3F", "42")


@dataclass(frozen=True, slots=True)
class Breaker:
    """The failure-ratio breaker: a run stops once at least ``min_chunks`` of its chunks have
    settled (done or failed) and more than ``ratio`` of them failed (GitLab's batched
    migrations: more than half of at least 50 jobs). ``min_chunks`` 0 turns it off.

    Chunks fail only after their retries (or at once for a permanent error), so a failed
    chunk is a real loss; past half of them, the rest are far likelier to fail the same way
    than to succeed, and each costs a worker and a transaction for nothing.
    """

    min_chunks: int = 10
    ratio: float = 0.5

    def trips(self, done: int, failed: int) -> bool:
        settled = done + failed
        return 0 < self.min_chunks <= settled and failed > self.ratio * settled


def stop_reason(
    err: ChunkError, chunk_no: int, done: int, failed: int, breaker: Breaker | None
) -> tuple[str, str] | None:
    """(alert type, message) when chunk ``chunk_no`` failing with ``err`` must stop its run
    now, ``done`` and ``failed`` being the run's chunks counted with this one failed; None
    when the run goes on. Messages carry SQLSTATEs and masked text only (see ``describe``)."""
    code = err.sqlstate or ""
    after = "the chunks not run are left pending: fix the cause, then `ferry retry RUN`"
    if code[:2] in SYSTEMIC_CLASSES:
        return (
            "run_stopped",
            f"run stopped: chunk {chunk_no} failed with an error no retry can fix ({err}); "
            + after,
        )
    if breaker is not None and breaker.trips(done, failed):
        return (
            "failure_breaker",
            f"run stopped: {failed} of {done + failed} settled chunks failed, more than "
            f"{breaker.ratio:.0%} of at least {breaker.min_chunks} (FERRY_BREAKER_RATIO, "
            f"FERRY_BREAKER_MIN_CHUNKS); last: chunk {chunk_no}: {err}; " + after,
        )
    return None


def describe(exc: BaseException) -> str:
    """A one-line, value-free description of an exception."""
    if isinstance(exc, psycopg.Error):
        diag = exc.diag
        code = diag.sqlstate or "-----"
        # Client-side errors (psycopg's own) carry no diagnostics: their text is ours, not data.
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        primary = mask_text(diag.message_primary or first, names=names_are_safe(diag.sqlstate))
        names = [
            f"{label} {value}"
            for label, value in (
                ("table", diag.table_name),
                ("column", diag.column_name),
                ("constraint", diag.constraint_name),
            )
            if value
        ]
        where = f" ({', '.join(names)})" if names else ""
        return f"{code} {type(exc).__name__}: {primary}{where}"
    first = str(exc).splitlines()[0] if str(exc) else ""
    # Ferry's own messages hold no values; anything else (pandas, the user's transform or
    # rule) may put one unquoted into its text.
    text = mask_text(first) if isinstance(exc, FerryError) else mask_free_text(first)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _is_transient_code(code: str) -> bool:
    return bool(code) and (code[:2] in TRANSIENT_CLASSES or code in TRANSIENT_CODES)


def classify(exc: BaseException) -> ChunkError:
    if isinstance(exc, ChunkError):
        return exc
    message = describe(exc)
    code = exc.diag.sqlstate if isinstance(exc, psycopg.Error) else None
    err: ChunkError
    if isinstance(exc, psycopg.Error) and (
        (code is None and isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError))
        or _is_transient_code(code or "")
    ):
        err = TransientChunkError(message)
    else:
        err = PermanentChunkError(message)
    err.sqlstate = code
    return err


def report(err: ChunkError) -> dict[str, Any]:
    """The plan's MigrationError: type, severity, description, impact, resolution, rollback."""
    code = err.sqlstate or ""
    nothing = "nothing of the chunk was written (its transaction rolled back)"
    if isinstance(err, RuleFailure):
        kind, severity = "data", "high"
        impact = [nothing, "the run stopped after its in-flight chunks"]
        resolution = "fix the data or the rule, then `ferry retry RUN`"
    elif isinstance(err, TransientChunkError) or _is_transient_code(code):
        kind = "performance"
        severity = "high" if code[:2] in ("08", "53", "57") and code != "57014" else "medium"
        retried = isinstance(err, TransientChunkError)
        impact = ["the chunk is retried with backoff" if retried else "the chunk failed", nothing]
        resolution = (
            "the database ran out of a resource (disk, memory, connections): free it, then "
            "`ferry retry RUN`"
            if code[:2] == "53"
            else "the application holds locks or the database is loaded: lower concurrency or "
            "chunk size, or raise FERRY_LOCK_TIMEOUT_MS"
        )
    elif code == "42501":
        kind, severity = "security", "critical"
        impact = [nothing]
        resolution = "grant the worker role the privileges it needs (see `ferry init --roles`)"
    elif code[:2] == "42" or "changed since the run started" in str(err):
        kind, severity = "schema", "critical"
        impact = [nothing, "every chunk of the run is likely to fail the same way"]
        resolution = "the table or the code changed since launch: fix it or start a new run"
    elif "gave up after" in str(err):  # a worker died on it every time
        kind, severity = "performance", "high"
        impact = [nothing]
        resolution = "find why the chunk keeps failing (ferry status), then `ferry retry RUN`"
    else:
        kind, severity = "data", "high"
        impact = [nothing]
        resolution = "fix the source data or the transform, then `ferry retry RUN`"
    return {
        "type": kind,
        "severity": severity,
        "description": str(err),
        "impact": impact,
        "resolution": resolution,
        "rollbackRequired": False,
    }
