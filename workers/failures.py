"""Chunk failures: driver and user-code exceptions turned into Ferry's kinds, and reported.

Done once, at the boundary where a chunk transaction fails. The message kept
is safe to store and show: SQLSTATE, the error class, the primary message
with every quoted literal masked, and the names (never values) PostgreSQL
reports in its diagnostics. DETAIL is dropped: it is where values live.
``report`` gives the plan's MigrationError for a failure.
"""

from __future__ import annotations

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

__all__ = ["RuleFailure", "classify", "describe", "report"]

# Retrying can succeed: serialization, deadlock, lock timeout, statement timeout,
# operator intervention, connection exceptions, insufficient resources.
TRANSIENT_CLASSES = ("40", "08", "53", "57")
TRANSIENT_CODES = frozenset({"55P03", "55006"})


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
