"""ValidationRule -> SQL predicate over a chunk's new values.

Rules run inside the chunk's statement on both paths (for the pandas path,
over the frame COPYed into a temp table), so a reference rule is one
semi-join per chunk, never a query per row. A predicate is true when the row
passes; NULL passes, as in a CHECK constraint.
"""

from __future__ import annotations

from psycopg import sql

from migrations.errors import SpecError
from migrations.identifiers import QualifiedName
from migrations.spec import ValidationRule

_SPECIAL_BOUNDS = {"today": sql.SQL("CURRENT_DATE"), "now": sql.SQL("clock_timestamp()")}


def passes(rule: ValidationRule, column: sql.Composable) -> sql.Composable:
    """A boolean SQL expression, true when ``column`` satisfies ``rule`` (NULL passes)."""
    if rule.type == "format":
        pattern = sql.Literal(f"^(?:{rule.condition})$")
        test: sql.Composable = sql.SQL("({col})::text ~ {p}").format(col=column, p=pattern)
    elif rule.type == "range":
        test = _range(rule, column)
    elif rule.type == "reference":
        test = _reference(rule, column)
    else:
        test = sql.SQL("({expr})").format(expr=sql.SQL(rule.condition))
    return sql.SQL("({col} IS NULL OR coalesce({test}, true))").format(col=column, test=test)


def _range(rule: ValidationRule, column: sql.Composable) -> sql.Composable:
    lo, _, hi = (part.strip() for part in rule.condition.partition(".."))
    if not lo and not hi:
        raise SpecError(f"range rule on {rule.field!r} needs at least one bound")
    parts = []
    if lo:
        parts.append(sql.SQL("{col} >= {b}").format(col=column, b=_bound(lo)))
    if hi:
        parts.append(sql.SQL("{col} <= {b}").format(col=column, b=_bound(hi)))
    return sql.SQL("(") + sql.SQL(" AND ").join(parts) + sql.SQL(")")


def _bound(text: str) -> sql.Composable:
    # An untyped literal takes the column's type, so one syntax serves numbers and dates.
    return _SPECIAL_BOUNDS.get(text.lower(), sql.Literal(text))


def _reference(rule: ValidationRule, column: sql.Composable) -> sql.Composable:
    *table_parts, ref_col = rule.condition.split(".")
    table = QualifiedName.parse(".".join(table_parts), "reference table")
    return sql.SQL("EXISTS (SELECT 1 FROM {t} AS ferry_ref WHERE ferry_ref.{c} = {col})").format(
        t=sql.Identifier(*table.parts), c=sql.Identifier(ref_col), col=column
    )


def fixed_value(rule: ValidationRule, column: sql.Composable) -> sql.Composable:
    """For action 'transform': the rule's fix where the row fails, else the value."""
    assert rule.fix is not None
    return sql.SQL("CASE WHEN {ok} THEN {col} ELSE ({fix}) END").format(
        ok=passes(rule, column),
        col=column,
        fix=sql.SQL(rule.fix),
    )
