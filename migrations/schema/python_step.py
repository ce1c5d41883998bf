"""Python migration files: a versioned Backfill step between an expand and a contract.

``20240316_backfill_weight_kg.py`` declares a module-level ``backfill = Backfill(...)``
(and optionally ``description = "..."``). The file is read with ``ast``, never executed,
here: ``status``, ``plan`` and ``lint`` must not run user code, and a file whose import
fails must still show up in ``status``. The Backfill itself is imported by the
coordinator when ``up`` launches it (as ``ferry launch path/file.py:backfill``), and by
every worker from the same absolute path.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from migrations.errors import BadInput
from migrations.loading import normalize_reference
from migrations.schema.source import MigrationFile, checksum

FILE_NAME = re.compile(r"(?P<version>\d+)_(?P<slug>[A-Za-z0-9_]+)\.py")
ATTRIBUTE = "backfill"


def _assigned(tree: ast.Module, name: str) -> ast.expr | None:
    """The value last assigned to ``name`` at module level (plain or annotated)."""
    found: ast.expr | None = None
    for node in tree.body:
        if isinstance(node, ast.Assign):
            if any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                found = node.value
        elif (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and node.target.id == name
            and node.value is not None
        ):
            found = node.value
    return found


def parse_python_step(path: Path, text: str | None = None) -> MigrationFile:
    """A Backfill step: no SQL, its reference is ``<absolute path>:backfill``."""
    match = FILE_NAME.fullmatch(path.name)
    if match is None:
        raise BadInput(f"{path.name}: a migration file is named VERSION_name.py (digits first)")
    if text is None:
        text = path.read_text(encoding="utf-8")
    try:
        tree = ast.parse(text, filename=path.name)
    except SyntaxError as exc:
        raise BadInput(f"{path.name}: line {exc.lineno}: {exc.msg}") from None
    if _assigned(tree, ATTRIBUTE) is None:
        raise BadInput(
            f"{path.name}: a Python migration declares its step as a module-level "
            f"`{ATTRIBUTE} = Backfill(...)`"
        )
    description = ""
    value = _assigned(tree, "description")
    if value is not None:
        if not (isinstance(value, ast.Constant) and isinstance(value.value, str)):
            raise BadInput(f"{path.name}: `description` must be a string literal")
        description = " ".join(value.value.split())
    return MigrationFile(
        version=int(match.group("version")),
        name=path.name[: -len(".py")],
        path=path,
        description=description,
        checksum=checksum(text),
        preconditions=(),
        forward=(),
        rollback=(),  # undone by rolling its runs back (pre-images), not by SQL
        backfill=normalize_reference(f"{path}:{ATTRIBUTE}"),
        kind="backfill",
    )
