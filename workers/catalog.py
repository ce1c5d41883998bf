"""What the database says about the user's table: existence, key, column types.

Type names come from ``format_type()``, which emits valid SQL type syntax;
they are still checked against a narrow pattern before they are ever used
in a statement.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from migrations.errors import BadInput
from migrations.identifiers import QualifiedName, called_functions, check_expression

_TYPE_TEXT = re.compile(r'[A-Za-z0-9_ ,()\[\]".]+')

KEY_TYPES = frozenset(
    {
        "smallint",
        "integer",
        "bigint",
        "uuid",
        "text",
        "character varying",
        "numeric",
        "date",
        "timestamp without time zone",
        "timestamp with time zone",
    }
)


@dataclass(frozen=True, kw_only=True)
class TableInfo:
    schema: str
    name: str
    columns: dict[str, str]
    unique_columns: frozenset[str]
    estimated_rows: int


def type_sql(type_text: str) -> sql.SQL:
    """A catalog type name as SQL, refusing anything that does not look like one."""
    if not _TYPE_TEXT.fullmatch(type_text):
        raise BadInput("unexpected type name in catalog")
    return sql.SQL(type_text)


def describe_table(conn: psycopg.Connection[Any], name: QualifiedName) -> TableInfo:
    oid_row = conn.execute(
        "SELECT to_regclass(%s)::oid AS oid", (sql.Identifier(*name.parts).as_string(conn),)
    ).fetchone()
    oid = oid_row["oid"] if oid_row else None
    if oid is None:
        raise BadInput(f"table {name} does not exist")
    meta = conn.execute(
        """SELECT n.nspname AS schema, c.relname AS name, c.relkind AS kind,
                  greatest(c.reltuples, 0)::bigint AS estimate
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s""",
        (oid,),
    ).fetchone()
    assert meta is not None
    if meta["kind"] not in ("r", "p"):
        raise BadInput(f"{name} is not a table")
    cols = conn.execute(
        """SELECT attname, format_type(atttypid, atttypmod) AS type, attgenerated
             FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped
            ORDER BY attnum""",
        (oid,),
    ).fetchall()
    unique = conn.execute(
        """SELECT a.attname FROM pg_index i
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
            WHERE i.indrelid = %s AND i.indisunique AND i.indnkeyatts = 1
              AND i.indpred IS NULL AND i.indisvalid""",
        (oid,),
    ).fetchall()
    return TableInfo(
        schema=meta["schema"],
        name=meta["name"],
        columns={c["attname"]: c["type"] for c in cols if not c["attgenerated"]},
        unique_columns=frozenset(u["attname"] for u in unique),
        estimated_rows=int(meta["estimate"]),
    )


def base_type(type_text: str) -> str:
    """``character varying(20)`` -> ``character varying``; ``numeric(8,2)`` -> ``numeric``."""
    return re.sub(r"\(.*\)", "", type_text).strip()


def expression_types(
    conn: psycopg.Connection[Any],
    name: QualifiedName,
    expressions: dict[str, str],
    where: str | None,
) -> dict[str, int]:
    """The type OID each SQL expression yields over the table, without reading a row."""
    cols = sql.SQL(", ").join(
        sql.SQL("({e}) AS {c}").format(e=sql.SQL(e), c=sql.Identifier(c))
        for c, e in expressions.items()
    )
    filt = sql.SQL("({})").format(sql.SQL(where)) if where else sql.SQL("TRUE")
    cur = conn.execute(
        sql.SQL("SELECT {cols} FROM {t} AS t WHERE FALSE AND {w}").format(
            cols=cols, t=sql.Identifier(*name.parts), w=filt
        )
    )
    assert cur.description is not None
    return {d.name: d.type_code for d in cur.description}


def assignable(conn: psycopg.Connection[Any], source_oid: int, target: str) -> bool:
    """Can a value of type ``source_oid`` be stored in a column of type ``target``?

    The same rule as an UPDATE's assignment: the same type, an implicit or
    assignment cast, a binary-coercible domain base, unknown literals, or any
    type into a string type (I/O conversion).
    """
    row = conn.execute(
        """SELECT t.oid AS target_oid, t.typcategory AS cat,
                  (SELECT typbasetype FROM pg_type WHERE oid = t.oid) AS base
             FROM pg_type t WHERE t.oid = to_regtype(%s)""",
        (target,),
    ).fetchone()
    if row is None:
        return False
    target_oid = row["base"] or row["target_oid"]
    if source_oid in (target_oid, 705):  # 705: unknown (a bare literal)
        return True
    if row["cat"] == "S":
        return True
    cast = conn.execute(
        """SELECT 1 FROM pg_cast WHERE castsource = %s AND casttarget = %s
              AND castcontext IN ('a', 'i')""",
        (source_oid, target_oid),
    ).fetchone()
    return cast is not None


def check_where(conn: psycopg.Connection[Any], name: QualifiedName, where: str) -> None:
    """Parse and plan the filter once (no rows read), so a typo fails before a run exists.

    It is first checked to be one expression: executed as text, a stacked statement
    (``TRUE); DROP TABLE t; SELECT (1``) would otherwise run right here.
    """
    check_expression(where, "--where filter")
    conn.execute(
        sql.SQL("SELECT 1 FROM {t} AS t WHERE FALSE AND ({w})").format(
            t=sql.Identifier(*name.parts),
            w=sql.SQL(where),
        )
    )


def sample_size_bytes(
    conn: psycopg.Connection[Any],
    name: QualifiedName,
    key: str,
    writes: tuple[str, ...],
    rows: int = 1000,
) -> float:
    """Average bytes a pre-image row takes, from a small sample (for the disk estimate)."""
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in (key, *writes))
    row = conn.execute(
        sql.SQL(
            "SELECT coalesce(avg(pg_column_size(s.*)), 0) AS b FROM "
            "(SELECT {cols} FROM {t} LIMIT {n}) AS s"
        ).format(cols=cols, t=sql.Identifier(*name.parts), n=sql.Literal(int(rows))),
    ).fetchone()
    return float(row["b"]) if row else 0.0


def average_row_bytes(conn: psycopg.Connection[Any], name: QualifiedName) -> float:
    """Bytes per live row on disk (heap only), for the WAL estimate of a rewrite."""
    row = conn.execute(
        "SELECT pg_relation_size(to_regclass(%s)) AS bytes, "
        "greatest(reltuples, 1) AS n FROM pg_class WHERE oid = to_regclass(%s)",
        (sql.Identifier(*name.parts).as_string(conn),) * 2,
    ).fetchone()
    return float(row["bytes"]) / float(row["n"]) if row and row["bytes"] else 0.0


def data_directory(conn: psycopg.Connection[Any]) -> str | None:
    """The server's data directory, when this role may read it (else None)."""
    try:
        with conn.transaction():
            row = conn.execute("SELECT current_setting('data_directory') AS d").fetchone()
    except psycopg.Error:
        return None
    return str(row["d"]) if row else None


def has_lz4(conn: psycopg.Connection[Any]) -> bool:
    """Whether the server can compress values with lz4 (PostgreSQL 14+ built with it).

    A chunk's packed pre-images are one large value: pglz took twice as long as lz4 to
    compress one here, for about the same size.
    """
    row = conn.execute(
        "SELECT coalesce('lz4' = ANY(enumvals), false) AS lz4 FROM pg_settings "
        "WHERE name = 'default_toast_compression'"
    ).fetchone()
    return bool(row and row["lz4"])


# Types whose equality is identity: two values equal exactly when they are the same value, so
# comparing them typed is comparing them exactly (and costs no text conversion).
_IDENTITY_EQUALITY = frozenset(
    {
        "smallint",
        "integer",
        "bigint",
        "boolean",
        "uuid",
        "date",
        "bytea",
        "timestamp without time zone",
        "timestamp with time zone",
    }
)
_STRINGS = frozenset({"text", "character varying", "character"})


def exact_form(value: sql.Composable, type_text: str) -> sql.Composable:
    """``value`` (of type ``type_text``) in a form whose equality is identity: one or two
    expressions, to be placed in a row constructor ``( ... )``.

    ``IS DISTINCT FROM`` on typed values says 0 = -0 (float), 1.0 = 1.00 (numeric),
    '1 day' = '24 hours' (interval), 'A' = 'a' (citext, nondeterministic collations), and
    json has no equality at all. Compared as their PostgreSQL text in the "C" collation
    (byte for byte), two values are equal only when they are the same value, which is
    what "the transform returned it unchanged" means. Types whose typed equality already is
    identity are compared typed, and strings typed in "C": no conversion for the common
    columns.
    """
    kind = base_type(type_text)
    if kind in _IDENTITY_EQUALITY:
        return value
    if kind in _STRINGS:
        return sql.SQL('{} COLLATE "C"').format(value)
    # Cheaper than text where a chunk writes numbers (the row form goes into a row
    # constructor): a numeric is its value and its scale (NaN and the infinities have
    # none); a float its value, and its text only where it is a zero that may be -0
    # (PostgreSQL's float equality already holds NaN equal to NaN).
    if kind == "numeric":
        return sql.SQL("{v}, scale({v})").format(v=value)
    if kind in ("double precision", "real"):
        return sql.SQL("{v}, CASE WHEN {v} = 0 THEN ({v})::text END").format(v=value)
    return sql.SQL('({})::text COLLATE "C"').format(value)


def length_limited(type_text: str) -> bool:
    """``varchar(n)`` or ``char(n)``: an explicit cast truncates where assignment refuses."""
    return base_type(type_text) in _STRINGS and "(" in type_text


# Volatile built-ins a backfill legitimately needs (timestamps, new ids, sampling).
ALLOWED_VOLATILE = frozenset({"now", "clock_timestamp", "gen_random_uuid", "random"})
_VOLATILE_FUNCTION = """
SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE p.proname = %(name)s AND p.provolatile = 'v'
   AND CASE WHEN %(schema)s::text IS NULL THEN pg_function_is_visible(p.oid)
            ELSE n.nspname = %(schema)s END
 LIMIT 1
"""
_VOLATILE_OPERATOR = """
SELECT 1 FROM pg_operator o JOIN pg_proc p ON p.oid = o.oprcode
  JOIN pg_namespace n ON n.oid = o.oprnamespace
 WHERE o.oprname = %(name)s AND p.provolatile = 'v'
   AND CASE WHEN %(schema)s::text IS NULL THEN pg_operator_is_visible(o.oid)
            ELSE n.nspname = %(schema)s END
 LIMIT 1
"""


def check_functions(
    conn: psycopg.Connection[Any], text: str, what: str, allowed: Collection[str] = ()
) -> None:
    """Refuse an expression that calls a volatile function or operator the Backfill did not
    name in ``allow_functions`` (the few built-ins in ALLOWED_VOLATILE aside).

    An allow-list by the catalog, not a list of names known to be dangerous: whatever an
    extension or the application defines (``cron.schedule``, a function that writes) is
    volatile unless declared otherwise, and so refused by default. An overloaded name is
    refused when any of its visible overloads is volatile.
    """
    for schema, name in sorted(called_functions(text), key=lambda p: (p[0] or "", p[1])):
        qualified = f"{schema}.{name}" if schema else name
        if name in ALLOWED_VOLATILE and schema in (None, "pg_catalog"):
            continue
        if qualified in allowed or name in allowed:
            continue
        operator = not (name[0].isalpha() or name[0] == "_")
        row = conn.execute(
            _VOLATILE_OPERATOR if operator else _VOLATILE_FUNCTION,
            {"name": name, "schema": schema},
        ).fetchone()
        if row is not None:
            shown = qualified if len(qualified) <= 63 else "<name>"
            kind = f"operator {shown}" if operator else f"{shown}()"
            raise BadInput(
                f"{what} calls {kind}, which is volatile (it may change data or differ on every "
                "call): name it in the Backfill's allow_functions=[...] if it is safe"
            )
