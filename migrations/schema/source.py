"""Reading migration files: metadata, pre-conditions, forward and rollback statements.

A file follows the plan's structure (section 4.1): an optional
``comment on migration 'ID' is 'description';`` line, ``do $$ ... $$`` pre-condition
blocks, the forward statements, and a final ``-- Rollback script`` section whose
commented-out statements undo the forward ones. The metadata line is not SQL, so it is
cut out (replaced by blanks, keeping every line number) before pglast, the real
PostgreSQL parser, splits the rest; statements keep the text they were written as.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from pglast import parse_sql
from pglast.parser import ParseError

from migrations.errors import BadInput
from migrations.loading import normalize_reference
from migrations.schema.classify import Category, classify, needs_own_transaction

FILE_NAME = re.compile(r"(?P<version>\d+)_(?P<slug>[A-Za-z0-9_]+)\.sql")
_METADATA = re.compile(
    r"^[ \t]*comment\s+on\s+migration\s+'(?P<id>(?:[^']|'')*)'\s+is\s+"
    r"'(?P<description>(?:[^']|'')*)'\s*;",
    re.IGNORECASE | re.MULTILINE,
)
_ROLLBACK_MARKER = re.compile(r"^[ \t]*--[ \t]*rollback script\b.*$", re.IGNORECASE | re.MULTILINE)
_BACKFILL = re.compile(r"^[ \t]*--[ \t]*ferry:backfill[ \t]+(?P<ref>\S+)[ \t]*$", re.MULTILINE)
_COMMENTED = re.compile(r"^[ \t]*--[ \t]?(?P<sql>.*)$")


class Phase(Enum):
    PRECONDITION = "precondition"
    FORWARD = "forward"
    ROLLBACK = "rollback"


@dataclass(frozen=True, kw_only=True)
class Statement:
    """One SQL statement of a file, where it was written and what it does."""

    sql: str
    line: int  # 1-based line in the file where the statement starts
    phase: Phase
    category: Category
    own_transaction: bool  # cannot run inside a transaction block (CONCURRENTLY, VACUUM...)
    node: Any = field(compare=False, repr=False)  # the pglast AST node

    @property
    def first_line(self) -> str:
        return " ".join(self.sql.split())[:100]


@dataclass(frozen=True, kw_only=True)
class MigrationFile:
    """A parsed migration: everything the runner, the linter and ``plan`` need."""

    version: int
    name: str  # the file name without ``.sql``; also the migration's id
    path: Path
    description: str
    checksum: str
    preconditions: tuple[Statement, ...]
    forward: tuple[Statement, ...]
    rollback: tuple[Statement, ...] | None  # None: the file has no rollback section
    backfill: str | None = None  # expand/contract: the Backfill whose verified run completes it
    kind: str = "sql"  # "sql", or "backfill": a Python file whose step is a Backfill run

    @property
    def is_backfill_step(self) -> bool:
        return self.kind == "backfill"

    @property
    def category(self) -> Category:
        """The strongest kind of change among the forward statements; a backfill transforms."""
        if self.is_backfill_step:
            return Category.TRANSFORMATIVE
        return max((s.category for s in self.forward), default=Category.SESSION)

    @property
    def transactional(self) -> bool:
        return not any(s.own_transaction for s in self.forward)


def checksum(text: str) -> str:
    """sha256 of the file with line endings normalised, so a checkout on Windows is no edit."""
    return hashlib.sha256(text.replace("\r\n", "\n").encode()).hexdigest()


def _blank(text: str, start: int, end: int) -> str:
    """Replace text[start:end] by spaces, keeping newlines so line numbers stay right."""
    cut = "".join("\n" if ch == "\n" else " " for ch in text[start:end])
    return text[:start] + cut + text[end:]


def _statements(text: str, *, offset_line: int, phase: Phase, where: str) -> list[Statement]:
    try:
        parsed = parse_sql(text)
    except ParseError as exc:
        location = exc.args[1] if len(exc.args) > 1 else None  # a character offset
        line = offset_line + (text[:location].count("\n") if isinstance(location, int) else 0)
        raise BadInput(f"{where}: line {line}: {exc.args[0] if exc.args else exc}") from exc
    found = []
    for raw in parsed:
        start = raw.stmt_location or 0
        length = raw.stmt_len or len(text) - start
        sql = text[start : start + length].strip()
        lead = len(text[start : start + length]) - len(text[start : start + length].lstrip())
        line = offset_line + text[: start + lead].count("\n")
        node = raw.stmt
        if type(node).__name__ == "TransactionStmt":
            raise BadInput(
                f"{where}: line {line}: BEGIN/COMMIT/ROLLBACK are not allowed in a migration; "
                "ferry runs each one in a transaction of its own"
            )
        found.append(
            Statement(
                sql=sql,
                line=line,
                phase=phase,
                category=classify(node),
                own_transaction=needs_own_transaction(node),
                node=node,
            )
        )
    return found


def _rollback_sql(section: str, *, where: str, first_line: int) -> str:
    """The commented-out statements of the rollback section, uncommented."""
    lines = []
    for number, line in enumerate(section.splitlines(), start=first_line):
        if not line.strip():
            lines.append("")
            continue
        match = _COMMENTED.match(line)
        if match is None:
            raise BadInput(
                f"{where}: line {number}: the '-- Rollback script' section must be the last one "
                "and hold only commented-out statements"
            )
        lines.append(match.group("sql"))
    return "\n".join(lines)


def parse_migration(path: Path, text: str | None = None) -> MigrationFile:
    """Parse one migration file; a malformed file is ``BadInput`` naming file and line."""
    match = FILE_NAME.fullmatch(path.name)
    if match is None:
        raise BadInput(f"{path.name}: a migration file is named VERSION_name.sql (digits first)")
    if text is None:
        text = path.read_text(encoding="utf-8")
    name = path.name[: -len(".sql")]
    where = path.name
    body = text
    description = ""
    meta = _METADATA.search(body)
    if meta is not None:
        declared = meta.group("id").replace("''", "'")
        if declared != name:
            raise BadInput(
                f"{where}: 'comment on migration' names {declared!r}, the file is {name!r}"
            )
        description = " ".join(meta.group("description").replace("''", "'").split())
        body = _blank(body, meta.start(), meta.end())

    rollback: tuple[Statement, ...] | None = None
    marker = _ROLLBACK_MARKER.search(body)
    if marker is not None:
        first_line = body[: marker.end()].count("\n") + 2
        section = body[marker.end() + 1 :]
        rollback_text = _rollback_sql(section, where=where, first_line=first_line)
        statements = _statements(
            rollback_text, offset_line=first_line, phase=Phase.ROLLBACK, where=where
        )
        rollback = tuple(statements) or None
        body = body[: marker.start()]

    backfills = [m.group("ref") for m in _BACKFILL.finditer(body)]
    if len(backfills) > 1:
        raise BadInput(f"{where}: one '-- ferry:backfill REF' line per migration")

    preconditions: list[Statement] = []
    forward: list[Statement] = []
    for statement in _statements(body, offset_line=1, phase=Phase.FORWARD, where=where):
        leading = all(s.category is Category.SESSION for s in forward)
        if leading and type(statement.node).__name__ == "DoStmt":
            preconditions.append(
                Statement(
                    sql=statement.sql,
                    line=statement.line,
                    phase=Phase.PRECONDITION,
                    category=Category.SESSION,
                    own_transaction=False,
                    node=statement.node,
                )
            )
        else:
            forward.append(statement)
    return MigrationFile(
        version=int(match.group("version")),
        name=name,
        path=path,
        description=description,
        checksum=checksum(text),
        preconditions=tuple(preconditions),
        forward=tuple(forward),
        rollback=rollback,
        backfill=normalize_reference(backfills[0]) if backfills else None,
    )


def load_directory(directory: Path) -> list[MigrationFile]:
    """Every ``*.sql`` and ``VERSION_*.py`` migration of a folder, in version order.

    Two files of one version fail. Python files not named for a version (``__init__.py``,
    helpers the steps import) are not migrations and are skipped.
    """
    # python_step builds MigrationFile from this module: imported here, not at the top.
    from migrations.schema.python_step import FILE_NAME as PYTHON_FILE
    from migrations.schema.python_step import parse_python_step

    if not directory.is_dir():
        raise BadInput(f"migrations folder {str(directory)!r} does not exist")
    found: dict[int, MigrationFile] = {}
    for path in sorted(directory.iterdir()):
        if not path.is_file():
            continue
        if path.suffix == ".sql":
            migration = parse_migration(path)
        elif PYTHON_FILE.fullmatch(path.name):
            migration = parse_python_step(path)
        else:
            continue
        other = found.get(migration.version)
        if other is not None:
            raise BadInput(f"{path.name} and {other.path.name} share version {migration.version}")
        found[migration.version] = migration
    return [found[v] for v in sorted(found)]
