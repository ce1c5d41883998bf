"""Resolving a Backfill against the live catalog: everything checked before anything is written.

Every failure here is ``BadInput`` (exit 2) with one line that names the
problem, never a row value.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import psycopg

from migrations.classification import phi_columns
from migrations.errors import BadInput
from migrations.identifiers import QualifiedName
from migrations.spec import Backfill, sql_texts
from workers.catalog import (
    KEY_TYPES,
    TableInfo,
    assignable,
    base_type,
    check_functions,
    check_where,
    describe_table,
    expression_types,
)
from workers.encryption import fingerprint
from workers.failures import describe
from workers.model import RunSpec
from workers.statements import null_keys

Conn = psycopg.Connection[Any]


def resolve(
    conn: Conn,
    backfill: Backfill,
    reference: str,
    *,
    where: str | None = None,
    chunk_size: int | None = None,
    project_phi: tuple[str, ...] = (),
    encryption_key: str | None = None,
) -> RunSpec:
    name = QualifiedName.parse(backfill.table)
    info = describe_table(conn, name)
    _check_columns(info, backfill)
    where = where if where is not None else backfill.where
    qualified = QualifiedName(info.schema, info.name)
    if where:
        _guard(conn, lambda: check_where(conn, qualified, where), "--where filter")
    allowed = backfill.allow_functions
    for what, text in sql_texts(where, backfill.sql, backfill.rules):
        _guard(conn, partial(check_functions, conn, text, what, allowed), what)
    _check_null_keys(conn, info, backfill.key, where)
    if backfill.sql is not None:
        types = _guard(
            conn,
            lambda: expression_types(conn, qualified, dict(backfill.sql or {}), where),
            "sql expression",
        )
        for column, oid in types.items():
            if not assignable(conn, oid, info.columns[column]):
                raise BadInput(
                    f"column {column} ({info.columns[column]}) cannot hold the result of its "
                    "sql expression"
                )
    if backfill.updated_at is not None and backfill.updated_at not in info.columns:
        raise BadInput(f"updated_at column {backfill.updated_at} does not exist")
    for rule in backfill.rules:
        if rule.type == "reference":
            *table_parts, ref_col = rule.condition.split(".")
            ref = describe_table(conn, QualifiedName.parse(".".join(table_parts)))
            if ref_col not in ref.columns:
                raise BadInput(f"reference column {rule.condition} does not exist")
    size = chunk_size if chunk_size is not None else backfill.chunk_size
    if size < 1:
        raise BadInput("chunk size must be at least 1")
    for column in backfill.phi:
        if column not in info.columns:
            raise BadInput(f"phi column {column} does not exist in {qualified}")
    extra: dict[str, Any] = {"updated_at": backfill.updated_at} if backfill.updated_at else {}
    phi = phi_columns(
        backfill.phi, project_phi, schema=info.schema, table=info.name, columns=info.columns
    )
    if phi:
        extra["phi"] = phi
    if encryption_key:  # pre-images and raw quarantined values sealed (workers.encryption)
        extra["encryption_fingerprint"] = fingerprint(encryption_key)
    spec = backfill.to_dict()
    return RunSpec(
        reference=reference,
        schema=info.schema,
        table=info.name,
        key=backfill.key,
        key_type=info.columns[backfill.key],
        reads=tuple(backfill.reads),
        writes=tuple(backfill.writes),
        column_types={
            c: info.columns[c] for c in {backfill.key, *backfill.reads, *backfill.writes}
        },
        mode=backfill.mode,
        sql=spec["sql"],
        transform=spec["transform"],
        rules=tuple(backfill.rules),
        chunk_size=size,
        where=where,
        extra=extra,
    )


def _check_columns(info: TableInfo, backfill: Backfill) -> None:
    table = f"{info.schema}.{info.name}"
    if backfill.key not in info.columns:
        raise BadInput(f"key column {backfill.key} does not exist in {table}")
    if base_type(info.columns[backfill.key]) not in KEY_TYPES:
        raise BadInput(
            f"key column {backfill.key} has type {info.columns[backfill.key]}, "
            "which Ferry cannot range over"
        )
    if backfill.key not in info.unique_columns:
        raise BadInput(f"key column {backfill.key} of {table} has no unique index")
    for column in backfill.writes:
        if column not in info.columns:
            raise BadInput(f"written column {column} does not exist in {table}")
    for column in backfill.reads:
        if column not in info.columns:
            raise BadInput(f"read column {column} does not exist in {table}")


def _check_null_keys(conn: Conn, info: TableInfo, key: str, where: str | None) -> None:
    """No key range holds a row whose key is NULL: a run over such rows would leave them
    unchanged and still complete (a unique index allows any number of NULLs). Refused with
    the count, never a value."""
    row = _guard(
        conn,
        lambda: conn.execute(null_keys(info.schema, info.name, key, where)).fetchone(),
        "NULL key count",
    )
    n = int(row["n"] if isinstance(row, dict) else row[0]) if row is not None else 0
    if n:
        raise BadInput(
            f"key column {key} of {info.schema}.{info.name} is NULL in {n} of the run's rows, "
            f"which no key range holds: give them keys, or leave them out with --where "
            f'"{key} IS NOT NULL"'
        )


def _guard(conn: Conn, action: Any, what: str) -> Any:
    """Run a catalog check, turning a database error into one masked BadInput line."""
    try:
        with conn.transaction():
            return action()
    except psycopg.Error as exc:
        raise BadInput(f"{what} is not valid here: {describe(exc)}") from None
