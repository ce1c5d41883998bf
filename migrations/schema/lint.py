"""Safety lint of migration files: long or strong locks, each with its safe alternative.

The rules follow Squawk and strong_migrations. Work on a table the same file creates is
never flagged (nobody else can see it yet). A file is read in order, so a NOT NULL is
accepted once the file has validated a ``CHECK (col IS NOT NULL)`` for that column, and
``SET lock_timeout`` only counts for the statements after it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from pglast import ast

from migrations.schema.classify import command_kind, table_commands
from migrations.schema.source import MigrationFile, Statement

ERROR = "error"
WARNING = "warning"

# Functions whose value differs per row: a default calling one makes ADD COLUMN rewrite the
# table under an ACCESS EXCLUSIVE lock (a stable default such as now() does not, PG 11+).
VOLATILE = {
    "random",
    "gen_random_uuid",
    "uuid_generate_v1",
    "uuid_generate_v1mc",
    "uuid_generate_v4",
    "clock_timestamp",
    "timeofday",
    "nextval",
    "txid_current",
    "random_normal",
}
NOT_VOLATILE = {"now", "statement_timestamp", "transaction_timestamp", "lower", "upper", "abs"}
SERIAL_TYPES = {"serial", "serial4", "bigserial", "serial8", "smallserial", "serial2"}
NO_REWRITE_TYPES = {"text", "varchar"}  # from varchar/text, without a length limit

SAFE = {
    "index-not-concurrent": "CREATE INDEX CONCURRENTLY (ferry runs it outside a transaction)",
    "drop-index-not-concurrent": "DROP INDEX CONCURRENTLY",
    "column-type-rewrite": (
        "add a new column of the new type, backfill it with a ferry Backfill, move readers, "
        "then drop the old column in a contract migration"
    ),
    "set-not-null": (
        "ADD CONSTRAINT c CHECK (col IS NOT NULL) NOT VALID; VALIDATE CONSTRAINT c; then "
        "SET NOT NULL (no scan once a valid check proves it) and DROP CONSTRAINT c"
    ),
    "constraint-not-valid": (
        "ADD CONSTRAINT ... NOT VALID, then ALTER TABLE ... VALIDATE CONSTRAINT in a later "
        "statement (it does not block reads or writes)"
    ),
    "unique-without-index": (
        "CREATE UNIQUE INDEX CONCURRENTLY, then ADD CONSTRAINT ... UNIQUE USING INDEX"
    ),
    "volatile-default": (
        "add the column without a default (or a constant one), backfill it with a ferry "
        "Backfill, then SET DEFAULT for new rows"
    ),
    "drop-column": (
        "deploy code that no longer reads the column first; drop it in a contract migration"
    ),
    "rename": (
        "add the new column, backfill and keep both in sync until every reader moved, then "
        "drop the old one (expand/contract); for a table, leave a view under the old name"
    ),
    "drop-table": "make sure nothing reads it any more; keep a backup or rename it first",
    "missing-lock-timeout": (
        "SET lock_timeout = '2s'; at the top of the file, so a blocked lock fails fast "
        "instead of queueing every query behind it"
    ),
}


@dataclass(frozen=True, kw_only=True)
class Finding:
    rule: str
    level: str  # error | warning
    file: str
    line: int
    statement: str
    message: str
    safe: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _table(relation: Any) -> str:
    if relation is None:
        return ""
    schema = getattr(relation, "schemaname", None)
    return f"{schema}.{relation.relname}" if schema else str(relation.relname)


def _walk(node: Any) -> Iterator[Any]:
    if isinstance(node, tuple | list):
        for item in node:
            yield from _walk(item)
    elif isinstance(node, ast.Node):
        yield node
        for attr in node:
            yield from _walk(getattr(node, attr))


def _function_names(node: Any) -> list[str]:
    return [
        str(call.funcname[-1].sval).lower()
        for call in _walk(node)
        if isinstance(call, ast.FuncCall) and call.funcname
    ]


def _type_name(type_name: Any) -> tuple[str, bool]:
    """(last part of the type name, whether it has a length/precision)."""
    names = [str(n.sval).lower() for n in (type_name.names or ())]
    return (names[-1] if names else ""), bool(type_name.typmods)


class _Linter:
    def __init__(self, migration: MigrationFile) -> None:
        self.migration = migration
        self.findings: list[Finding] = []
        self.created: set[str] = set()
        self.checks: dict[tuple[str, str], str] = {}  # (table, constraint) -> column
        self.not_null_proven: set[tuple[str, str]] = set()
        self.lock_timeout = False
        self.timeout_reported = False

    def add(self, rule: str, level: str, statement: Statement, message: str) -> None:
        self.findings.append(
            Finding(
                rule=rule,
                level=level,
                file=self.migration.path.name,
                line=statement.line,
                statement=statement.first_line,
                message=message,
                safe=SAFE[rule],
            )
        )

    def strong_lock(self, statement: Statement, level: str, what: str) -> None:
        if not self.lock_timeout and not self.timeout_reported:
            self.timeout_reported = True
            self.add(
                "missing-lock-timeout",
                level,
                statement,
                f"{what} waits for its lock with no lock_timeout set before it",
            )

    def run(self) -> list[Finding]:
        for statement in self.migration.forward:
            handler = getattr(self, f"on_{type(statement.node).__name__}", None)
            if handler is not None:
                handler(statement, statement.node)
        return self.findings

    # -- one handler per statement kind ------------------------------------------------------
    def on_VariableSetStmt(self, statement: Statement, node: Any) -> None:  # noqa: N802
        if str(node.name).lower() == "lock_timeout":
            self.lock_timeout = True

    def on_CreateStmt(self, statement: Statement, node: Any) -> None:  # noqa: N802
        self.created.add(_table(node.relation))
        referenced = [
            c
            for c in _walk(node.tableElts)
            if isinstance(c, ast.Constraint)
            and c.pktable is not None
            and _table(c.pktable) not in self.created
        ]
        if referenced:
            self.strong_lock(
                statement, WARNING, f"a foreign key to {_table(referenced[0].pktable)}"
            )

    def on_IndexStmt(self, statement: Statement, node: Any) -> None:  # noqa: N802
        table = _table(node.relation)
        if table in self.created or node.concurrent:
            return
        self.add(
            "index-not-concurrent",
            ERROR,
            statement,
            f"building an index on {table} blocks every write to it until it is done",
        )
        self.strong_lock(statement, WARNING, "CREATE INDEX")

    def on_DropStmt(self, statement: Statement, node: Any) -> None:  # noqa: N802
        kind = getattr(node.removeType, "name", "")
        if kind == "OBJECT_INDEX" and not node.concurrent:
            self.add(
                "drop-index-not-concurrent",
                WARNING,
                statement,
                "DROP INDEX takes an ACCESS EXCLUSIVE lock on its table",
            )
        if kind == "OBJECT_TABLE":
            self.add("drop-table", WARNING, statement, "dropping a table the application may read")
        if not node.concurrent:
            self.strong_lock(statement, ERROR, "DROP")

    def on_RenameStmt(self, statement: Statement, node: Any) -> None:  # noqa: N802
        kind = getattr(node.renameType, "name", "")
        if _table(node.relation) in self.created:
            return
        if kind in ("OBJECT_COLUMN", "OBJECT_TABLE"):
            what = "column" if kind == "OBJECT_COLUMN" else "table"
            self.add(
                "rename",
                ERROR,
                statement,
                f"renaming a {what} breaks every running reader of the old name",
            )
        self.strong_lock(statement, ERROR, "RENAME")

    def on_TruncateStmt(self, statement: Statement, node: Any) -> None:  # noqa: N802
        self.strong_lock(statement, ERROR, "TRUNCATE")

    def on_AlterTableStmt(self, statement: Statement, node: Any) -> None:  # noqa: N802
        table = _table(node.relation)
        if table in self.created:
            return
        for cmd in table_commands(node):
            handler = getattr(self, f"at_{command_kind(cmd)}", None)
            if handler is not None:
                handler(statement, table, cmd)
        kinds = {command_kind(cmd) for cmd in table_commands(node)}
        weak = {"AT_ValidateConstraint", "AT_SetStatistics"}
        if not kinds <= weak:
            self.strong_lock(statement, ERROR, f"ALTER TABLE {table}")

    # -- one handler per ALTER TABLE command ---------------------------------------------------
    def at_AT_AlterColumnType(self, statement: Statement, table: str, cmd: Any) -> None:  # noqa: N802
        name, sized = _type_name(cmd.def_.typeName)
        if name in NO_REWRITE_TYPES and not sized:
            self.add(
                "column-type-rewrite",
                WARNING,
                statement,
                f"{table}.{cmd.name} to {name}: no rewrite only if it is varchar or text now",
            )
            return
        self.add(
            "column-type-rewrite",
            ERROR,
            statement,
            f"changing the type of {table}.{cmd.name} rewrites the table under an ACCESS "
            "EXCLUSIVE lock",
        )

    def at_AT_SetNotNull(self, statement: Statement, table: str, cmd: Any) -> None:  # noqa: N802
        if (table, str(cmd.name)) in self.not_null_proven:
            return
        self.add(
            "set-not-null",
            ERROR,
            statement,
            f"SET NOT NULL on {table}.{cmd.name} scans the table under an ACCESS EXCLUSIVE lock "
            "(no validated CHECK (col IS NOT NULL) before it in this file)",
        )

    def at_AT_AddConstraint(self, statement: Statement, table: str, cmd: Any) -> None:  # noqa: N802
        constraint = cmd.def_
        kind = getattr(constraint.contype, "name", "")
        column = _not_null_column(constraint)
        if kind == "CONSTR_CHECK" and column and constraint.conname:
            self.checks[(table, str(constraint.conname))] = column
            if not constraint.skip_validation:
                self.not_null_proven.add((table, column))
        if kind in ("CONSTR_FOREIGN", "CONSTR_CHECK") and not constraint.skip_validation:
            what = "foreign key" if kind == "CONSTR_FOREIGN" else "check constraint"
            self.add(
                "constraint-not-valid",
                ERROR,
                statement,
                f"adding a {what} on {table} without NOT VALID scans the table while holding "
                "its lock",
            )
        if kind in ("CONSTR_UNIQUE", "CONSTR_PRIMARY") and not constraint.indexname:
            self.add(
                "unique-without-index",
                ERROR,
                statement,
                f"adding a unique/primary key constraint on {table} builds its index while "
                "blocking writes",
            )

    def at_AT_ValidateConstraint(self, statement: Statement, table: str, cmd: Any) -> None:  # noqa: N802
        column = self.checks.get((table, str(cmd.name)))
        if column:
            self.not_null_proven.add((table, column))

    def at_AT_AddColumn(self, statement: Statement, table: str, cmd: Any) -> None:  # noqa: N802
        column = cmd.def_
        type_name, _ = _type_name(column.typeName)
        if type_name in SERIAL_TYPES:
            self.add(
                "volatile-default",
                ERROR,
                statement,
                f"a {type_name} column on {table} fills every row from a sequence (table rewrite)",
            )
        for constraint in column.constraints or ():
            kind = getattr(constraint.contype, "name", "")
            if kind == "CONSTR_DEFAULT":
                self._default(statement, table, column.colname, constraint.raw_expr)
            if kind == "CONSTR_FOREIGN":
                self.add(
                    "constraint-not-valid",
                    ERROR,
                    statement,
                    f"a REFERENCES on new column {table}.{column.colname} is validated at once "
                    "while locking both tables",
                )

    def _default(self, statement: Statement, table: str, column: str, expr: Any) -> None:
        names = _function_names(expr)
        volatile = [n for n in names if n in VOLATILE]
        unknown = [n for n in names if n not in VOLATILE and n not in NOT_VOLATILE]
        if volatile:
            self.add(
                "volatile-default",
                ERROR,
                statement,
                f"the default {volatile[0]}() of new column {table}.{column} is volatile: "
                "the whole table is rewritten under an ACCESS EXCLUSIVE lock",
            )
        elif unknown:
            self.add(
                "volatile-default",
                WARNING,
                statement,
                f"if {unknown[0]}() is volatile, adding {table}.{column} rewrites the table",
            )

    def at_AT_DropColumn(self, statement: Statement, table: str, cmd: Any) -> None:  # noqa: N802
        self.add(
            "drop-column",
            WARNING,
            statement,
            f"dropping {table}.{cmd.name} breaks any running code that still reads it",
        )


def _not_null_column(constraint: Any) -> str | None:
    """The column of a ``CHECK (col IS NOT NULL)``, else None."""
    expr = constraint.raw_expr
    if not isinstance(expr, ast.NullTest) or getattr(expr.nulltesttype, "name", "") != (
        "IS_NOT_NULL"
    ):
        return None
    ref = expr.arg
    fields = ref.fields if isinstance(ref, ast.ColumnRef) else None
    if fields and len(fields) == 1:
        return str(getattr(fields[0], "sval", "")) or None
    return None


def lint(migration: MigrationFile) -> list[Finding]:
    """Findings of one file, in file order."""
    return sorted(_Linter(migration).run(), key=lambda f: f.line)
