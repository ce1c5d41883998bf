"""The example's backfill, as the module the workers import, and its SQL twin.

The twin is the SQL expression equal to what the backfill writes into a column (the same
expression on the SQL path; on the pandas path, what the generated transform computes),
which PostgreSQL evaluates on every recorded row version for the oracle.
"""

from __future__ import annotations

from psycopg import sql

from tests.properties.strategies import Example, Write

SCHEMA = "props"
SUFFIX_SQL = "E'\\u00fc\\t\\\\'"  # ü, a tab and a backslash
SUFFIX_PY = "\u00fc\t\\"


# -- the backfill and its SQL twin ----------------------------------------------------------
def _sql_expression(w: Write) -> str:
    src, dst = (sql.Identifier(w.src).as_string(None), sql.Identifier(w.dst).as_string(None))
    return {
        "copy": src,
        "identity": dst,
        "partial": f"CASE WHEN flag THEN {src} ELSE {dst} END",
        "suffix": f"{src} || {SUFFIX_SQL}",
    }[w.how]


def twin(example: Example, w: Write) -> str:
    """The SQL expression equal to what the backfill writes into ``w.dst``."""
    expression = _sql_expression(w)
    if example.mode == "pandas" and example.drop_rows:
        return f"CASE WHEN flag THEN {expression} ELSE {w.dst} END"
    return expression


RULE = "substr(md5(k::text), 1, 1) <> '0'"


def backfill_source(example: Example, table: str) -> str:
    """The module the workers import: the example's Backfill (and its pandas transform)."""
    writes = [w.dst for w in example.writes]
    rules = (
        f"[ValidationRule(field={writes[0]!r}, type='custom', condition={RULE!r}, "
        "error_message='key hashes to 0', action='skip')]"
        if example.rule
        else "[]"
    )
    common = (
        f"table={SCHEMA + '.' + table!r}, key='k', reads={example.reads!r}, writes={writes!r}, "
        f"rules={rules}, chunk_size={example.chunk_size}"
    )
    head = "from migrations import Backfill, ValidationRule\nimport pandas as pd\n\n"
    if example.mode == "sql":
        exprs = {w.dst: _sql_expression(w) for w in example.writes}
        return head + f"b = Backfill({common}, sql={exprs!r})\n"
    lines = [
        "def fn(df):",
        "    out = pd.DataFrame({'k': df['k']})",
        "    keep = df['flag'].fillna(False).astype(bool)",
    ]
    for w in example.writes:
        value = {
            "copy": f"df[{w.src!r}]",
            "identity": f"df[{w.dst!r}]",
            "partial": f"df[{w.src!r}].where(keep, df[{w.dst!r}])",
            "suffix": f"df[{w.src!r}] + {SUFFIX_PY!r}",
        }[w.how]
        lines.append(f"    out[{w.dst!r}] = {value}")
    lines.append("    return out[keep] if DROP else out")
    lines.append("")
    lines.append(f"DROP = {example.drop_rows!r}")
    return head + "\n".join(lines) + f"\nb = Backfill({common}, transform=fn)\n"
