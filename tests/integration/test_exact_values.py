"""Exact values on the pandas path, PostgreSQL as the oracle (issue 20, "Exact values").

For every built-in type family, Hypothesis generates values (edge values always among them),
inserts them into a real table, and one chunk goes through the pandas path's reader, an
identity-and-copy transform and its writer, as a worker runs it. Then ``v::text`` must be
byte-identical to what it was and its rows not rewritten (their ``xmin`` unchanged), while
``w``, which the transform set to ``v``, must hold exactly ``v``'s text: what travels through
pandas comes back as the same value, whether it is written or not.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pandas as pd
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg.rows import dict_row

from migrations.spec import ValidationRule
from tests.conftest import WorkerPool, ferry
from tests.helpers import launch, spec_file, wait_run
from workers.catalog import describe_table
from workers.model import RunSpec
from workers.staging import RunContext, stage_input
from workers.statements import ChunkArgs, KeyRange, Statements

# Examples per family and statement shape: a CI budget; FERRY_EXACT_EXAMPLES=200 for a campaign.
EXAMPLES = int(os.environ.get("FERRY_EXACT_EXAMPLES", "6"))
_run_ids = itertools.count(7_000_000)

# Text without NUL (PostgreSQL text cannot hold it) and with what COPY must escape.
TEXT = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
    max_size=30,
) | st.sampled_from(["", "\\", "\\N", "a\tb", "a\nb\r", "\\.", "é😀", " x ", "NULL", "\\\\x"])


def _float8(x: float) -> str:
    if math.isnan(x):
        return "NaN"
    return "Infinity" if x == math.inf else "-Infinity" if x == -math.inf else repr(x)


def _numeric() -> st.SearchStrategy[str]:
    edges = st.sampled_from(
        [
            "NaN",
            "Infinity",
            "-Infinity",
            "0",
            "-0",
            "0.000",
            "1.50",
            "1" + "0" * 999,
            "0." + "0" * 500 + "1",
            "-" + "9" * 1000,
            "12345678901234567.123456789012345",
        ]
    )
    decimals = st.decimals(allow_nan=False, allow_infinity=False, places=None).map(
        lambda d: format(d, "f")
    )
    return edges | decimals | st.integers(-(10**200), 10**200).map(str)


def _scaled(text: str) -> str:
    return text if not text[-1].isdigit() else f"{Decimal(text):.15f}"


def _json_text(unique: bool) -> st.SearchStrategy[str]:
    scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.text(st.characters(exclude_characters="\x00"), max_size=8)
        | st.floats(allow_nan=False, allow_infinity=False)
    )
    values = st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(
                st.text(st.characters(exclude_characters="\x00"), max_size=4), inner, max_size=3
            )
        ),
        max_leaves=6,
    )
    edges = st.sampled_from(
        [
            '{"b": 1, "a": 2}',
            '{"a":1,"a":2}',
            '{ "x" :  [1 , 2.50, 1e3] }',
            '"\\u00e9\\\\"',
            "[]",
            "null",
            '{"k": "tab\\t"}',
        ]
    )
    return edges | values.map(lambda v: json.dumps(v, ensure_ascii=unique))


def _array() -> st.SearchStrategy[str]:
    element = st.none() | st.integers(-(2**31), 2**31 - 1)
    flat = st.lists(element, max_size=5).map(
        lambda xs: "{" + ",".join("NULL" if x is None else str(x) for x in xs) + "}"
    )
    square = (
        st.integers(1, 3)
        .flatmap(
            lambda n: st.lists(st.lists(element, min_size=n, max_size=n), min_size=1, max_size=3)
        )
        .map(
            lambda rows: (
                "{"
                + ",".join(
                    "{" + ",".join("NULL" if x is None else str(x) for x in r) + "}" for r in rows
                )
                + "}"
            )
        )
    )
    return flat | square


def _timestamp(tz: bool) -> st.SearchStrategy[str]:
    edges = st.sampled_from(
        [
            "infinity",
            "-infinity",
            "4713-01-01 00:00:00 BC",
            "0001-12-31 23:59:59.999999 BC",
            "2024-02-29 12:34:56.000001",
            "294276-12-31 23:59:59.999999",
        ]
    )
    times = st.datetimes().map(lambda d: d.isoformat(sep=" "))
    if tz:
        edges = edges | st.sampled_from(["2024-06-01 00:00:00+05:45", "1900-01-01 00:00:00-00:20"])
    return edges | times


def _interval() -> st.SearchStrategy[str]:
    parts = st.tuples(
        st.integers(-1000, 1000),
        st.integers(-100, 100),
        st.integers(-(10**6), 10**6),
        st.integers(-(10**9), 10**9),
    ).map(lambda p: f"{p[0]} mons {p[1]} days {p[2]} hours {p[3]} microseconds")
    return parts | st.sampled_from(["1 day", "24 hours", "-1 days +23:59:59.999999", "0"])


def _money() -> st.SearchStrategy[str]:
    return st.integers(-(2**63) + 1, 2**63 - 1).map(
        lambda c: f"{'-' if c < 0 else ''}{abs(c) // 100}.{abs(c) % 100:02d}"
    )


FAMILIES: dict[str, tuple[str, st.SearchStrategy[str]]] = {
    "numeric": ("numeric", _numeric()),
    "numeric_38_15": (
        "numeric(38,15)",
        st.decimals(min_value=-(10**22), max_value=10**22, places=15, allow_nan=False).map(
            lambda d: format(d, "f")
        )
        | st.sampled_from(["12345678901234567.123456789012345", "NaN", "-0.000000000000001"]).map(
            _scaled
        ),
    ),
    "float8": ("double precision", st.floats().map(_float8) | st.sampled_from(["-0", "NaN"])),
    "float4": (
        "real",
        st.floats(width=32).map(_float8)
        | st.sampled_from(["-0", "1e-45", "3.4028235e+38", "0.1", "16777217"]),
    ),
    "int2": ("smallint", st.integers(-(2**15), 2**15 - 1).map(str)),
    "int4": ("integer", st.integers(-(2**31), 2**31 - 1).map(str)),
    "int8": ("bigint", st.integers(-(2**63), 2**63 - 1).map(str)),
    "bool": ("boolean", st.sampled_from(["t", "f"])),
    "text": ("text", TEXT),
    "varchar": ("character varying(12)", TEXT.map(lambda s: s[:12])),
    "char": ("character(5)", TEXT.map(lambda s: s[:5])),
    "bytea": ("bytea", st.binary(max_size=40).map(lambda b: "\\x" + b.hex())),
    "date": (
        "date",
        st.dates().map(str)
        | st.sampled_from(["infinity", "-infinity", "4713-01-01 BC", "5874897-12-31"]),
    ),
    "timestamp": ("timestamp(6) without time zone", _timestamp(False)),
    "timestamptz": ("timestamp with time zone", _timestamp(True)),
    "time": ("time without time zone", st.times().map(str) | st.just("24:00:00")),
    "timetz": (
        "time with time zone",
        st.times().map(lambda t: f"{t}+05:30") | st.just("23:59:59.999999-15:59"),
    ),
    "interval": ("interval", _interval()),
    "uuid": ("uuid", st.uuids().map(str)),
    "json": ("json", _json_text(False)),
    "jsonb": ("jsonb", _json_text(True)),
    "int_array": ("integer[]", _array()),
    "text_array": (
        "text[]",
        st.lists(st.none() | TEXT, max_size=4).map(
            lambda xs: (
                "{"
                + ",".join(
                    "NULL" if x is None else '"' + x.replace("\\", "\\\\").replace('"', '\\"') + '"'
                    for x in xs
                )
                + "}"
            )
        ),
    ),
    "enum": ("ex_mood", st.sampled_from(["sad", "ok", "happy", "ünï \\ \t"])),
    "domain": (
        "ex_positive",
        st.decimals(
            min_value=Decimal("0.001"), allow_nan=False, allow_infinity=False, places=3
        ).map(str),
    ),
    "inet": ("inet", st.ip_addresses().map(str) | st.just("192.168.0.1/24")),
    "cidr": ("cidr", st.sampled_from(["10.0.0.0/8", "2001:db8::/32", "192.168.1.0/24"])),
    "macaddr": (
        "macaddr",
        st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b)),
    ),
    "money": ("money", _money()),
    "citext": ("citext", TEXT),
}


@pytest.fixture(scope="module")
def conn(database_url: str, ledger_ready: None) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as c:
        c.execute("SET DateStyle = ISO; SET TimeZone = 'UTC'; SET lc_monetary = 'C'")
        c.execute("CREATE EXTENSION IF NOT EXISTS citext")
        c.execute(
            "DO $$ BEGIN CREATE TYPE ex_mood AS ENUM ('sad', 'ok', 'happy', 'ünï \\ \t'); "
            "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
        c.execute(
            "DO $$ BEGIN CREATE DOMAIN ex_positive AS numeric CHECK (VALUE > 0); "
            "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
        yield c


def _copy_v_to_w(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(w=df["v"])


def _context(
    conn: psycopg.Connection[Any],
    table: str,
    *,
    where: str | None = None,
    rules: bool = False,
    transform: Callable[[pd.DataFrame], pd.DataFrame] = _copy_v_to_w,
    writes: tuple[str, ...] = ("v", "w"),
) -> RunContext:
    info = describe_table(conn, _qualified(table))
    rule = (ValidationRule(field="v", type="custom", condition="TRUE", action="skip"),)
    spec = RunSpec(
        reference="tests:exact",
        schema="public",
        table=table,
        key="id",
        key_type=info.columns["id"],
        reads=("v",),
        writes=writes,
        column_types=info.columns,
        mode="pandas",
        sql=None,
        transform=None,
        rules=rule if rules else (),
        chunk_size=1000,
        where=where,
    )
    run_id = next(_run_ids)
    statements = Statements(spec, run_id)
    conn.execute(statements.create_backup())
    return RunContext(run_id, spec, statements, transform)


def _qualified(table: str) -> Any:
    from migrations.identifiers import QualifiedName

    return QualifiedName("public", table)


def _run_chunk(conn: psycopg.Connection[Any], ctx: RunContext, hi: int) -> dict[str, Any]:
    key_range = KeyRange(None, str(hi))
    with conn.transaction():
        read = stage_input(conn, ctx, key_range, lock=not ctx.statements.reads_unlocked)
        args = ChunkArgs(
            run_id=ctx.run_id, chunk_no=0, range=key_range, rows_read=read
        )
        counts = conn.execute(ctx.statements.apply(args)).fetchone()
    assert counts is not None
    return dict(counts)


def _state(conn: psycopg.Connection[Any], table: str) -> list[tuple[Any, ...]]:
    rows = conn.execute(
        sql.SQL(
            "SELECT id, v::text AS v, w::text AS w, xmin::text AS x FROM {} ORDER BY id"
        ).format(sql.Identifier(table))
    ).fetchall()
    return [(r["id"], r["v"], r["w"], r["x"]) for r in rows]


def _check_family(
    conn: psycopg.Connection[Any], family: str, values: list[str | None], path: str
) -> None:
    type_sql, _ = FAMILIES[family]
    table = f"ex_{family}_{path}"
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
    conn.execute(
        sql.SQL("CREATE TABLE {} (id integer PRIMARY KEY, v {t}, w {t})").format(
            sql.Identifier(table), t=sql.SQL(type_sql)
        )
    )
    with conn.cursor().copy(
        sql.SQL("COPY {} (id, v) FROM STDIN").format(sql.Identifier(table))
    ) as copy:
        for i, value in enumerate(values, start=1):
            copy.write_row((i, value))
    ctx = _context(conn, table, where="TRUE" if path == "locked" else None, rules=path == "rules")
    before = _state(conn, table)
    counts = _run_chunk(conn, ctx, len(values) + 1)
    after = _state(conn, table)
    for (i, v0, _, x0), (_, v1, w1, x1) in zip(before, after, strict=True):
        assert v1 == v0, f"row {i}: v changed"  # exact text, byte for byte
        assert w1 == v0, f"row {i}: w is not exactly what the transform returned"
        # a row whose v is NULL copies NULL over NULL: nothing changed, nothing written
        assert (x1 == x0) == (v0 is None), f"row {i}: written or not written wrongly"
    assert counts["rows_written"] == sum(v is not None for _, v, _, _ in before)
    conn.execute(sql.SQL("DROP TABLE {}, {}").format(sql.Identifier(table), ctx.statements.backup))


def _values(family: str) -> st.SearchStrategy[list[str | None]]:
    return st.lists(st.none() | FAMILIES[family][1], min_size=1, max_size=15)


@pytest.mark.parametrize("path", ["unlocked", "locked", "rules"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_type_round_trips_exactly(
    conn: psycopg.Connection[Any], family: str, path: str
) -> None:
    @settings(
        max_examples=EXAMPLES if path == "unlocked" else max(EXAMPLES // 2, 1),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(values=_values(family))
    def check(values: list[str | None]) -> None:
        _check_family(conn, family, values, path)

    check()


# (type, value held, value the transform returns, its text once cast): equal as typed values,
# so a typed comparison would leave them unwritten, but not the same value.
EQUAL_NOT_SAME = [
    ("double precision", "0", -0.0, "-0"),
    ("numeric", "1.0", Decimal("1.00"), "1.00"),
    ("numeric", "NaN", Decimal("NaN"), None),
    ("interval", "1 day", "24:00:00", "24:00:00"),
    ("citext", "Abc", "abc", "abc"),
    ("jsonb", '{"a": 1.0}', '{"a": 1}', '{"a": 1}'),
    ("json", '{"a":1}', '{"a": 1}', '{"a": 1}'),
    ("json", '{"a":1,"a":2}', '{"a":1,"a":2}', None),
    ("numeric", "1.5", 1.5, None),  # a float that casts to the very value held
    ("real", "0.1", 0.1, None),  # the double nearest 0.1 cast to real is real's 0.1
    ("character(4)", "ab", "ab  ", None),
]


@pytest.mark.parametrize(("type_sql", "held", "returned", "written"), EQUAL_NOT_SAME)
@pytest.mark.parametrize("path", ["unlocked", "locked", "rules"])
def test_written_exactly_when_not_the_same_value(
    conn: psycopg.Connection[Any],
    type_sql: str,
    held: str,
    returned: Any,
    written: str | None,
    path: str,
) -> None:
    """A column is written when the transform's value, cast by PostgreSQL, is not the same
    value as the one held (-0 for 0, a numeric's scale, '24:00:00' for '1 day'), and not
    written when it is (whatever Python type it came back as); ``None``: not written."""
    table = "ex_same"
    conn.execute("DROP TABLE IF EXISTS ex_same")
    conn.execute(
        sql.SQL("CREATE TABLE ex_same (id integer PRIMARY KEY, v {t}, other text)").format(
            t=sql.SQL(type_sql)
        )
    )
    conn.execute("INSERT INTO ex_same VALUES (1, %s, 'x'), (2, NULL, NULL)", (held,))
    ctx = _context(
        conn,
        table,
        where="TRUE" if path == "locked" else None,
        rules=path == "rules",
        transform=lambda df: df.assign(v=pd.Series([returned, None], dtype=object)),
        writes=("v",),
    )
    before = _state_v(conn)
    counts = _run_chunk(conn, ctx, 2)
    after = _state_v(conn)
    if written is None:
        assert after == before and counts["rows_written"] == 0
    else:
        assert after[0][1] == written and after[0][2] != before[0][2]
        assert after[1] == before[1] and counts["rows_written"] == 1
    conn.execute(sql.SQL("DROP TABLE ex_same, {}").format(ctx.statements.backup))


def _state_v(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    rows = conn.execute("SELECT id, v::text AS v, xmin::text AS x FROM ex_same ORDER BY id")
    return [(r["id"], r["v"], r["x"]) for r in rows.fetchall()]


def test_one_column_unchanged_is_not_written_beside_one_that_changed(
    conn: psycopg.Connection[Any],
) -> None:
    """Of two written columns, the one the transform returned unchanged keeps the table's own
    value (its scale, its NaN) while the other is written, and a row where neither changed is
    not written at all."""
    conn.execute("DROP TABLE IF EXISTS ex_two")
    conn.execute("CREATE TABLE ex_two (id integer PRIMARY KEY, v numeric, w numeric)")
    conn.execute("INSERT INTO ex_two VALUES (1, 1.50, 1), (2, 'NaN', 2)")
    ctx = _context(
        conn,
        "ex_two",
        transform=lambda df: df.assign(w=pd.Series([Decimal(7), Decimal(2)])),
    )
    counts = _run_chunk(conn, ctx, 2)
    rows = conn.execute("SELECT v::text AS v, w::text AS w FROM ex_two ORDER BY id").fetchall()
    assert [(r["v"], r["w"]) for r in rows] == [("1.50", "7"), ("NaN", "2")]
    assert counts["rows_written"] == 1
    conn.execute(sql.SQL("DROP TABLE ex_two, {}").format(ctx.statements.backup))


# -- end to end: the real CLI, real Celery workers ------------------------------------------

IDENTITY_SPEC = """
def same(df):
    return df

amounts = Backfill(table="ex_amounts", key="id", reads=["amount"], writes=["amount"],
                   transform=same, chunk_size=500)
"""

COPY_SPEC = """
def copy(df):
    return df.assign(w=df["v"])

nan_copy = Backfill(table="ex_nan", key="id", reads=["v"], writes=["w"], transform=copy,
                    chunk_size=250)
"""


def _texts(db: psycopg.Connection[Any], table: str, cols: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in db.execute(f"SELECT {cols} FROM {table} ORDER BY id").fetchall()]


def test_numeric_38_15_returned_unchanged_is_not_rewritten(
    db: psycopg.Connection[Any], env: dict[str, str], tmp_path: Any, workers: WorkerPool
) -> None:
    """Issue 20 item 1: a pandas transform returning a numeric(38,15) column unchanged altered
    every row through float64, and the run said completed. Now no row is written."""
    db.execute("DROP TABLE IF EXISTS ex_amounts")
    db.execute("CREATE TABLE ex_amounts (id integer PRIMARY KEY, amount numeric(38,15))")
    db.execute(
        "INSERT INTO ex_amounts SELECT i, CASE WHEN i % 97 = 0 THEN 'NaN'::numeric "
        "WHEN i % 89 = 0 THEN NULL "
        "ELSE 12345678901234567.123456789012345 - i * 0.000000000000001 * i END "
        "FROM generate_series(1, 3000) AS i"
    )
    before = _texts(db, "ex_amounts", "id, amount::text, xmin::text")
    run_id = launch(env, f"{spec_file(tmp_path, IDENTITY_SPEC)}:amounts")
    assert wait_run(db, run_id) == "completed"
    assert _texts(db, "ex_amounts", "id, amount::text, xmin::text") == before
    written = db.execute(
        "SELECT sum(rows_read), sum(rows_written) FROM ferry.chunks WHERE run_id = %s", (run_id,)
    ).fetchone()
    assert written is not None and (written[0], written[1]) == (3000, 0)


def test_nan_numeric_plans_launches_and_travels_exactly(
    db: psycopg.Connection[Any], env: dict[str, str], tmp_path: Any, workers: WorkerPool
) -> None:
    """Issue 20 item 1: a NaN in a numeric column the transform reads crashed ``plan`` with a
    traceback. NaN, the infinities, NULL and 1,000 digits now reach the transform and come
    back exactly."""
    db.execute("DROP TABLE IF EXISTS ex_nan")
    db.execute("CREATE TABLE ex_nan (id integer PRIMARY KEY, v numeric, w numeric)")
    db.execute(
        "INSERT INTO ex_nan (id, v) SELECT i, (ARRAY['NaN', 'Infinity', '-Infinity', NULL, "
        "repeat('9', 1000), '0.000', '-12.50'])[1 + i % 7]::numeric "
        "FROM generate_series(1, 700) AS i"
    )
    path = spec_file(tmp_path, COPY_SPEC)
    plan = ferry("plan", f"{path}:nan_copy", "--json", env=env)
    assert plan.returncode == 0 and "Traceback" not in plan.stderr, plan.stderr
    run_id = launch(env, f"{path}:nan_copy")
    assert wait_run(db, run_id) == "completed"
    pairs = _texts(db, "ex_nan", "v::text, w::text")
    assert all(v == w for v, w in pairs) and ("NaN", "NaN") in pairs


BAD_VALUE_SPEC = """
class Unprintable:
    def __str__(self):
        raise ValueError("secret-value-123")

def bad(df):
    out = df.assign(w=df["v"].astype(object))
    out.loc[out["id"] > {after}, "w"] = Unprintable()
    return out

bad_values = Backfill(table="ex_bad", key="id", reads=["v"], writes=["w"], transform=bad,
                      chunk_size=1000)
"""


@pytest.mark.parametrize("after", [0, 400])
def test_values_that_cannot_be_converted_fail_in_one_line(
    after: int,
    db: psycopg.Connection[Any],
    env: dict[str, str],
    tmp_path: Any,
    workers: WorkerPool,
) -> None:
    """A value Ferry cannot convert: in pre-flight one line and exit 2; in a worker (past the
    pre-flight's 200 rows) the chunk fails at once with that cause, never the value, instead
    of sitting ``running`` until its lease gives up."""
    db.execute("DROP TABLE IF EXISTS ex_bad")
    db.execute("CREATE TABLE ex_bad (id integer PRIMARY KEY, v text, w text)")
    db.execute("INSERT INTO ex_bad (id, v) SELECT i, 'x' FROM generate_series(1, 500) AS i")
    path = spec_file(tmp_path, BAD_VALUE_SPEC.format(after=after))
    if after == 0:
        proc = ferry("plan", f"{path}:bad_values", env=env)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert "could not write the transform's values (ValueError)" in lines[0]
        assert "secret" not in proc.stderr
        return
    run_id = launch(env, f"{path}:bad_values")
    assert wait_run(db, run_id) == "failed"
    chunk = db.execute(
        "SELECT attempts, error FROM ferry.chunks WHERE run_id = %s", (run_id,)
    ).fetchone()
    assert chunk is not None and chunk[0] == 1, chunk
    assert "could not write the transform's values (ValueError)" in chunk[1]
    assert "secret" not in chunk[1]
    assert db.execute("SELECT count(*) FROM ex_bad WHERE w IS NOT NULL").fetchone() == (0,)
