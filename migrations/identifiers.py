"""Identifier checks: the only gate between user-supplied names and SQL text.

Ferry never formats a name into SQL raw. Names are validated here against a
deliberately narrow grammar (plain, optionally schema-qualified identifiers)
and then quoted by psycopg's ``sql.Identifier`` where statements are built.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from migrations.errors import IdentifierError

_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")


def check_name(name: str, what: str = "identifier") -> str:
    """Return ``name`` if it is one plain identifier, else raise IdentifierError."""
    if not isinstance(name, str) or not _PLAIN.fullmatch(name):
        shown = name if isinstance(name, str) and len(name) <= 80 else "<value>"
        raise IdentifierError(f"{what} {shown!r} is not a plain SQL identifier")
    return name


@dataclass(frozen=True, slots=True)
class QualifiedName:
    """A table name with an optional schema, both checked."""

    schema: str | None
    name: str

    @classmethod
    def parse(cls, text: str, what: str = "table") -> QualifiedName:
        if not isinstance(text, str):
            raise IdentifierError(f"{what} must be a string")
        parts = text.split(".")
        if len(parts) == 1:
            return cls(None, check_name(parts[0], what))
        if len(parts) == 2:
            return cls(check_name(parts[0], f"{what} schema"), check_name(parts[1], what))
        raise IdentifierError(f"{what} {text!r} has too many dots")

    @property
    def parts(self) -> tuple[str, ...]:
        return (self.name,) if self.schema is None else (self.schema, self.name)

    def __str__(self) -> str:
        return ".".join(self.parts)
