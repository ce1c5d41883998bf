"""The plan's migration types (section 1.3) for one parsed statement.

Additive changes can ship before the code that uses them; transformative ones change
what is there (types, data, definitions); destructive ones remove something the running
application may still read, so ``ferry schema up`` refuses them unless asked. Statements
are recognised by their pglast node, never by matching text.
"""

from __future__ import annotations

from enum import Enum
from functools import total_ordering
from typing import Any


@total_ordering
class Category(Enum):
    SESSION = "session"  # SET and friends: change no object
    ADDITIVE = "additive"
    TRANSFORMATIVE = "transformative"
    DESTRUCTIVE = "destructive"

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Category):
            return NotImplemented
        return _ORDER.index(self) < _ORDER.index(other)


_ORDER = [Category.SESSION, Category.ADDITIVE, Category.TRANSFORMATIVE, Category.DESTRUCTIVE]

_SESSION = {"VariableSetStmt", "VariableShowStmt", "DiscardStmt"}
_ADDITIVE = {
    "CreateStmt",
    "CreateTableAsStmt",
    "IndexStmt",
    "CreateSeqStmt",
    "CreateSchemaStmt",
    "CreateExtensionStmt",
    "CompositeTypeStmt",
    "CreateEnumStmt",
    "CreateDomainStmt",
    "CreateRangeStmt",
    "CreateTrigStmt",
    "CommentStmt",
    "GrantStmt",
    "CreateStatsStmt",
    "CreatePolicyStmt",
    "CreateRoleStmt",
}
_DESTRUCTIVE = {"DropStmt", "TruncateStmt", "DeleteStmt", "DropRoleStmt", "DropOwnedStmt"}
_ADDITIVE_TABLE_CMDS = {
    "AT_AddColumn",
    "AT_AddConstraint",
    "AT_ValidateConstraint",
    "AT_AddIndex",
    "AT_AddIndexConstraint",
    "AT_ColumnDefault",  # a default changes only future inserts
    "AT_SetStatistics",
    "AT_AddIdentity",
    "AT_EnableRowSecurity",
    "AT_AttachPartition",
}
_DESTRUCTIVE_TABLE_CMDS = {"AT_DropColumn", "AT_DropConstraint", "AT_DetachPartition"}


def _name(node: Any) -> str:
    return type(node).__name__


def table_commands(node: Any) -> list[Any]:
    """The AlterTableCmd nodes of an ALTER TABLE (empty for any other statement)."""
    if _name(node) != "AlterTableStmt":
        return []
    return list(node.cmds or ())


def command_kind(cmd: Any) -> str:
    return str(getattr(cmd.subtype, "name", cmd.subtype))


def classify(node: Any) -> Category:
    """Additive, transformative or destructive (SESSION for settings)."""
    kind = _name(node)
    if kind in _SESSION:
        return Category.SESSION
    if kind in _DESTRUCTIVE:
        return Category.DESTRUCTIVE
    if kind == "RenameStmt":
        # Renaming breaks every reader still using the old name: as bad as a drop.
        return Category.DESTRUCTIVE
    if kind in ("ViewStmt", "CreateFunctionStmt"):
        return Category.TRANSFORMATIVE if node.replace else Category.ADDITIVE
    if kind == "AlterEnumStmt":
        return Category.ADDITIVE if node.oldVal is None else Category.TRANSFORMATIVE
    if kind == "AlterTableStmt":
        kinds = {command_kind(cmd) for cmd in table_commands(node)}
        if kinds & _DESTRUCTIVE_TABLE_CMDS:
            return Category.DESTRUCTIVE
        if kinds <= _ADDITIVE_TABLE_CMDS:
            return Category.ADDITIVE
        return Category.TRANSFORMATIVE
    if kind in _ADDITIVE:
        return Category.ADDITIVE
    return Category.TRANSFORMATIVE  # data changes, type changes, DO blocks, anything else


def _concurrently(params: Any) -> bool:
    return any(getattr(p, "defname", None) == "concurrently" for p in params or ())


def needs_own_transaction(node: Any) -> bool:
    """Whether PostgreSQL refuses the statement inside a transaction block."""
    kind = _name(node)
    if kind == "IndexStmt":
        return bool(node.concurrent)
    if kind == "DropStmt":
        return bool(node.concurrent)
    if kind == "ReindexStmt":
        return _concurrently(node.params) or _name_of(node.kind) in (
            "REINDEX_OBJECT_SYSTEM",
            "REINDEX_OBJECT_DATABASE",
        )
    if kind == "VacuumStmt":
        return bool(node.is_vacuumcmd)  # ANALYZE alone may run in a transaction
    if kind == "AlterTableStmt":
        return any(
            command_kind(cmd) == "AT_DetachPartition" and bool(getattr(cmd.def_, "concurrent", 0))
            for cmd in table_commands(node)
        )
    if kind == "CreateSubscriptionStmt":
        return True  # creates a replication slot unless told not to
    return kind in (
        "CreatedbStmt",
        "DropdbStmt",
        "AlterSystemStmt",
        "CreateTableSpaceStmt",
        "DropTableSpaceStmt",
        "DropSubscriptionStmt",
    )


def _name_of(value: Any) -> str:
    return str(getattr(value, "name", value))
