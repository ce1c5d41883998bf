"""One exception root for Ferry, grouped by what the user must do about it.

Each class carries the CLI exit code it maps to, so the command layer never
guesses: bad input is 2 (nothing was changed), a failed run or check is 1.
Messages are written for a terminal and must never contain a row value or a
password: callers mask before they raise.
"""

from __future__ import annotations


class FerryError(Exception):
    """Root of every error Ferry raises on purpose."""

    exit_code = 1


class BadInput(FerryError):
    """The user's spec, reference or flags cannot work; nothing was written."""

    exit_code = 2


class SpecError(BadInput):
    """A Backfill or ValidationRule is malformed."""


class IdentifierError(BadInput):
    """A name is not a plain (optionally schema-qualified) SQL identifier."""


class CheckFailed(FerryError):
    """A run, a verification or a pre-flight check did not hold."""


class NotFound(BadInput):
    """A run, chunk or object the user named does not exist."""


class ChunkError(FerryError):
    """Raised while applying one chunk; the worker decides what follows.

    ``sqlstate`` is kept when the cause was a database error: it is what the
    plan's MigrationError classification is derived from.
    """

    sqlstate: str | None = None
    attempt: int = 0  # the ledger's attempt count when it happened (drives the backoff)


class TransientChunkError(ChunkError):
    """Worth retrying later (lock timeout, deadlock, serialization, lost connection).

    Like dramatiq's ``Retry(delay=)``, it may carry the delay the gate wants.
    """

    def __init__(self, message: str, *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentChunkError(ChunkError):
    """Retrying cannot help (data or schema error); the chunk is failed."""


class RuleFailure(PermanentChunkError):
    """Rows failed a rule whose action is ``fail``: the chunk fails and the run stops."""
