"""Identifier checks: the only gate between user-supplied names and SQL text.

Ferry never formats a name into SQL raw. Names are validated here against a
deliberately narrow grammar (plain, optionally schema-qualified identifiers)
and then quoted by psycopg's ``sql.Identifier`` where statements are built.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pglast import parser

from migrations.errors import BadInput, IdentifierError


class ExpressionError(BadInput):
    """A --where filter, rule condition or sql expression is not one plain SQL expression."""


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


# -- SQL expressions ---------------------------------------------------------------------------
# ``--where`` filters, custom rule conditions, fixes and ``sql=`` expressions are SQL on
# purpose, and are composed into statements inside parentheses. Each must therefore be
# exactly one expression: parsed alone (pglast, PostgreSQL's own parser) it must be a bare
# ``SELECT <expr>`` with nothing else, so it cannot stack a statement, close the
# parenthesis it is put in, or comment out the rest. Functions with side effects (sleeps,
# locks, settings, files, large objects, sequences, signals, queries run from strings)
# are refused by name: a condition that claims to test rows must only test them.

_SIDE_EFFECTS = re.compile(
    r"pg_sleep\w*|set_config|pg_(try_)?advisory_\w+|lo_\w+|lo(read|write|open|close|creat)"
    r"|pg_(terminate|cancel)_backend|pg_reload_conf|pg_rotate_logfile\w*|pg_switch_wal"
    r"|pg_promote|pg_(create|drop|copy)_\w+|pg_replication_\w+|pg_logical_\w+"
    r"|pg_stat_reset\w*|pg_read_\w+|pg_ls_\w+|pg_stat_file|pg_file_\w+|pg_notify"
    r"|nextval|setval|dblink\w*|\w+_to_xml\w*|query_to_xmlschema|pg_import_system_collations"
    r"|pg_(start|stop)_backup|pg_backup_\w+|pg_wal_replay_\w+|pg_log_backend_memory_contexts"
    r"|txid_current\w*|pg_current_xact_id\w*|pg_export_snapshot|pg_prewarm"
    r"|pg_(signal|reload)\w*|current_setting_set",
    re.IGNORECASE,
)
_WRITES = frozenset({"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt", "LockingClause"})
_BARE_SELECT = frozenset({"targetList", "limitOption", "op"})
_MAX_EXPRESSION = 16_000_000  # a catch-up filter lists up to 100,000 keys


def check_expression(
    text: str, what: str = "SQL expression", *, side_effects_ok: bool = False
) -> str:
    """Return ``text`` if it is one SQL expression (with no side effects unless allowed).

    ``side_effects_ok`` is for ``sql=`` expressions: they compute the new values and may
    call whatever function the user chose (a sequence, an extension's); they must still be
    exactly one expression.
    """
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError(f"{what} must be a non-empty string")
    if "\x00" in text or len(text) > _MAX_EXPRESSION:
        raise ExpressionError(f"{what} holds a NUL byte or is too long")
    try:
        tree = json.loads(parser.parse_sql_json(f"SELECT {text}"))
        tokens = parser.scan(text)
    except Exception:  # pglast raises ParseError, and ValueError/UnicodeError on odd input
        raise ExpressionError(f"{what} is not one SQL expression (it does not parse)") from None
    for token in tokens:
        if token.name in ("SQL_COMMENT", "C_COMMENT", "ASCII_59"):
            raise ExpressionError(f"{what} may not contain comments or ';'")
        literal = text[token.start : token.end + 1]
        if token.name == "SCONST" and literal.startswith("'") and "\\" in literal:
            # Read differently with standard_conforming_strings off: refuse the ambiguity.
            raise ExpressionError(f"{what}: write backslashes in E'...' strings (doubled)")
    statements = tree.get("stmts", [])
    select = statements[0]["stmt"].get("SelectStmt") if len(statements) == 1 else None
    if (
        select is None
        or set(select) - _BARE_SELECT
        or select.get("op") != "SETOP_NONE"
        or len(select.get("targetList", [])) != 1
        or "name" in select["targetList"][0]["ResTarget"]
        or _expands(select["targetList"][0]["ResTarget"].get("val", {}))
    ):
        raise ExpressionError(f"{what} is not exactly one SQL expression")
    _refuse_side_effects(select["targetList"][0], what, side_effects_ok)
    return text


def _expands(value: dict[str, Any]) -> bool:
    """``*``, ``t.*`` or ``(t).*``: one item of a select list, but many columns, and not an
    expression anywhere else (``WHERE (*)`` does not parse)."""
    ref = value.get("ColumnRef") or {}
    fields = ref.get("fields") or (value.get("A_Indirection") or {}).get("indirection") or []
    return bool(fields) and "A_Star" in fields[-1]


def _nodes(tree: object) -> Iterator[tuple[str, Any]]:
    """Every (key, value) of a parse tree, walked iteratively: a deeply nested expression
    must not overflow the stack."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            for key, value in node.items():
                yield key, value
                stack.append(value)


def _refuse_side_effects(tree: object, what: str, functions_ok: bool) -> None:
    for key, value in _nodes(tree):
        if key in _WRITES:
            raise ExpressionError(f"{what} may not write or lock rows")
        if key == "FuncCall" and not functions_ok:
            name = value["funcname"][-1]["String"]["sval"]
            if _SIDE_EFFECTS.fullmatch(name):
                shown = name if len(name) <= 63 else "<name>"
                raise ExpressionError(f"{what} calls {shown}(), which has side effects")


_OPERATOR_KINDS = ("AEXPR_OP", "AEXPR_OP_ANY", "AEXPR_OP_ALL")


def called_functions(text: str) -> set[tuple[str | None, str]]:
    """(schema or None, name) of every function and operator ``text`` calls (it has passed
    ``check_expression``): what the catalog must vouch for before it runs on patient rows."""
    found: set[tuple[str | None, str]] = set()
    for key, value in _nodes(json.loads(parser.parse_sql_json(f"SELECT {text}"))):
        names = None
        if key == "FuncCall":
            names = value.get("funcname")
        elif key == "A_Expr" and value.get("kind") in _OPERATOR_KINDS:
            names = value.get("name")
        parts = [n["String"]["sval"] for n in names or () if "String" in n]
        if parts:
            found.add((parts[-2] if len(parts) > 1 else None, parts[-1]))
    return found
