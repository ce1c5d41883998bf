"""Hypothesis strategies for the differential harness: PostgreSQL types, keys, backfills, writes.

Every value is generated as the *text* PostgreSQL reads it with (``%s::type``), so what the
table holds is decided by PostgreSQL, and every comparison the oracle makes is on ``::text``
(byte-identical), never on Python values. Each type family mixes its edge values (NaN,
infinities, bounds, BC dates, 1,000-digit numerics, unicode, backslashes, NULL elements,
duplicate JSON keys) with generated ones.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

# Types and extensions every example's table may use, made once per database.
SETUP_SQL = """
CREATE EXTENSION IF NOT EXISTS citext;
CREATE SCHEMA IF NOT EXISTS props;
DO $$ BEGIN
  CREATE TYPE props.mood AS ENUM ('sad', 'ok', 'happy', 'ünï cödé', 'a"b\\c');
EXCEPTION WHEN duplicate_object THEN NULL; END $$;
DO $$ BEGIN
  CREATE DOMAIN props.posint AS integer CHECK (VALUE > 0);
EXCEPTION WHEN duplicate_object THEN NULL; END $$;
DO $$ BEGIN
  CREATE DOMAIN props.short_text AS text CHECK (length(VALUE) <= 40);
EXCEPTION WHEN duplicate_object THEN NULL; END $$;
"""

# Text PostgreSQL accepts in text, varchar, char and citext: any character but NUL.
_CHARS = st.characters(exclude_characters="\x00", exclude_categories=("Cs",))
_TRICKY_TEXT = [
    "",
    " ",
    "\\",
    "\\N",
    "NULL",
    "a\tb",
    "line\nbreak\r\n",
    'quote"s',
    "(1,2)",
    "{a,b}",
    "ünï cödé ✓ 😀",
    "ﬃ ß İ",
    "trailing  ",
]


def _text(max_size: int = 30) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(_TRICKY_TEXT), st.text(_CHARS, max_size=max_size))


def _from(edges: Sequence[str], generated: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(list(edges)), generated)


def _decimal_text() -> st.SearchStrategy[str]:
    digits = st.text("0123456789", min_size=1, max_size=40)
    return st.builds(
        lambda sign, whole, frac: f"{sign}{whole}" + (f".{frac}" if frac else ""),
        st.sampled_from(["", "-"]),
        digits,
        st.one_of(st.just(""), digits),
    )


def _float_text(width: int) -> st.SearchStrategy[str]:
    return st.floats(width=width, allow_nan=False, allow_infinity=False).map(repr)


def _ints(lo: int, hi: int) -> st.SearchStrategy[str]:
    return _from([str(lo), str(hi), "0", "-1", "1"], st.integers(lo, hi).map(str))


_DATES = st.dates(min_value=dt.date(1, 1, 1), max_value=dt.date(9999, 12, 31))
_TIMES = st.times()
_DATETIMES = st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30))
_OFFSETS = st.sampled_from(["+00", "-08", "+05:30", "+14", "-12:45"])


def _json_value() -> st.SearchStrategy[Any]:
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-(10**20), 10**20), _text(10))
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(_text(5), inner, max_size=3)
        ),
        max_leaves=6,
    )


def _json_text() -> st.SearchStrategy[str]:
    import json

    return _from(
        [
            '{"b": 1, "a": 2}',
            '{"a": 1, "a": 2}',
            "  [1, 2.50, 1e400, -0]  ",
            '"\\u00fc\\\\ \\t"',
            "null",
            "{}",
            '{"a": {"b": [null, true]}}',
            "1.000000000000000000001",
        ],
        _json_value().map(lambda v: json.dumps(v, ensure_ascii=False)),
    )


def _bytea_text() -> st.SearchStrategy[str]:
    return st.binary(max_size=24).map(lambda b: "\\x" + b.hex())


@dataclass(frozen=True)
class TypeFamily:
    """One column type: its DDL, how its values are generated, what a transform may do."""

    name: str
    ddl: str
    values: st.SearchStrategy[str]
    textlike: bool = False  # ``|| 'suffix'`` is a value of this type
    # values equal by the type's '=' whose text differs: a copy of one over the other must
    # still write (exact values), which a comparison by '=' misses
    twins: tuple[tuple[str, str], ...] = ()

    def cell(self) -> st.SearchStrategy[str | None]:
        """A value as text, or None (NULL) one time in six."""
        return st.one_of(st.none(), self.values, self.values, self.values, self.values, self.values)


FAMILIES: tuple[TypeFamily, ...] = (
    TypeFamily(
        "numeric",
        "numeric",
        _from(
            [
                "NaN",
                "Infinity",
                "-Infinity",
                "0",
                "-0.000",
                "12345678901234567.123456789012345",
                "9" * 1000,
                "-" + "1" * 500 + "." + "3" * 499,
                "0." + "0" * 300 + "1",
                "1e-300",
            ],
            _decimal_text(),
        ),
    ),
    TypeFamily(
        "numeric(38,15)",
        "numeric(38,15)",
        _from(
            ["12345678901234567.123456789012345", "-0.000000000000001", "NaN", "0"],
            st.decimals(min_value=-(10**22), max_value=10**22, allow_nan=False, places=15).map(str),
        ),
    ),
    TypeFamily(
        "real",
        "real",
        _from(
            [
                "-0",
                "NaN",
                "Infinity",
                "-Infinity",
                "1.17549435e-38",
                "3.4028235e+38",
                "1e-45",
                "0.1",
            ],
            _float_text(32),
        ),
    ),
    TypeFamily(
        "double precision",
        "double precision",
        _from(
            [
                "-0",
                "NaN",
                "Infinity",
                "-Infinity",
                "5e-324",
                "1.7976931348623157e+308",
                "0.1",
                "9007199254740993",
            ],
            _float_text(64),
        ),
    ),
    TypeFamily("smallint", "smallint", _ints(-32768, 32767)),
    TypeFamily("integer", "integer", _ints(-(2**31), 2**31 - 1)),
    TypeFamily("bigint", "bigint", _ints(-(2**63), 2**63 - 1)),
    TypeFamily("boolean", "boolean", st.sampled_from(["true", "false"])),
    TypeFamily("text", "text", _text(), textlike=True),
    TypeFamily("varchar(20)", "varchar(20)", _text(20)),
    TypeFamily("char(5)", "char(5)", _text(5)),
    TypeFamily("citext", "citext", _text(), textlike=True),
    TypeFamily("bytea", "bytea", _from(["\\x", "\\x00", "\\x5c4e"], _bytea_text())),
    TypeFamily(
        "date",
        "date",
        _from(
            [
                "infinity",
                "-infinity",
                "4713-01-01 BC",
                "0001-01-01 BC",
                "5874897-12-31",
                "2000-02-29",
            ],
            _DATES.map(str),
        ),
    ),
    TypeFamily(
        "timestamp",
        "timestamp",
        _from(
            [
                "infinity",
                "-infinity",
                "4713-01-01 00:00:00 BC",
                "294276-12-31 23:59:59.999999",
                "2000-01-01 00:00:00.000001",
            ],
            _DATETIMES.map(lambda d: d.isoformat(sep=" ")),
        ),
    ),
    TypeFamily(
        "timestamptz",
        "timestamptz",
        _from(
            [
                "infinity",
                "-infinity",
                "4713-01-01 00:00:00+00 BC",
                "1999-12-31 23:59:59.999999-08",
                "2024-03-31 02:30:00+05:30",
            ],
            st.builds(lambda d, o: d.isoformat(sep=" ") + o, _DATETIMES, _OFFSETS),
        ),
    ),
    TypeFamily(
        "time",
        "time",
        _from(["24:00:00", "00:00:00", "23:59:59.999999"], _TIMES.map(str)),
    ),
    TypeFamily(
        "timetz",
        "timetz",
        _from(
            ["24:00:00-15:59", "00:00:00+15:59", "12:00:00.000001+05:30"],
            st.builds(lambda t, o: str(t) + o, _TIMES, _OFFSETS),
        ),
    ),
    TypeFamily(
        "interval",
        "interval",
        _from(
            [
                "-178000000 years",
                "1 day -00:00:01",
                "P1Y2M3DT4H5M6.789S",
                "00:00:00.000001",
                "-1 mons +40 days",
                "0",
            ],
            st.builds(
                lambda y, d, s: f"{y} years {d} days {s} seconds",
                st.integers(-1000, 1000),
                st.integers(-(10**5), 10**5),
                st.decimals(-(10**6), 10**6, places=6, allow_nan=False).map(str),
            ),
        ),
    ),
    TypeFamily("uuid", "uuid", st.uuids().map(str)),
    TypeFamily("json", "json", _json_text()),
    TypeFamily("jsonb", "jsonb", _json_text().filter(lambda s: "\\u0000" not in s)),
    TypeFamily(
        "integer[]",
        "integer[]",
        _from(
            ["{}", "{1,NULL,3}", "{{1,2},{3,NULL}}", "[0:1]={7,8}", "{{{1}},{{NULL}}}", "{NULL}"],
            st.lists(st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)), max_size=4).map(
                lambda xs: "{" + ",".join("NULL" if x is None else str(x) for x in xs) + "}"
            ),
        ),
    ),
    TypeFamily(
        "text[]",
        "text[]",
        _from(
            ['{"a\\"b",NULL,"NULL","c d"}', '{{"x","\\\\"},{"",NULL}}', "{}", '{"\t"}'],
            st.lists(st.one_of(st.none(), _text(8)), max_size=4).map(
                lambda xs: (
                    "{"
                    + ",".join(
                        "NULL"
                        if x is None
                        else '"' + x.replace("\\", "\\\\").replace('"', '\\"') + '"'
                        for x in xs
                    )
                    + "}"
                )
            ),
        ),
    ),
    TypeFamily("enum", "props.mood", st.sampled_from(["sad", "ok", "happy", "ünï cödé", 'a"b\\c'])),
    TypeFamily("domain int", "props.posint", _ints(1, 2**31 - 1).filter(lambda s: int(s) > 0)),
    TypeFamily("domain text", "props.short_text", _text(40), textlike=False),
    TypeFamily(
        "inet",
        "inet",
        _from(
            ["192.168.0.1/24", "::1", "2001:db8::ff00:42:8329/64", "0.0.0.0/0", "::ffff:1.2.3.4"],
            st.ip_addresses().map(str),
        ),
    ),
    TypeFamily(
        "cidr",
        "cidr",
        _from(
            ["10.0.0.0/8", "2001:db8::/32", "192.168.1.128/25", "::/0"], st.ip_addresses().map(str)
        ),
    ),
    TypeFamily(
        "macaddr",
        "macaddr",
        _from(
            ["08:00:2b:01:02:03", "ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00"],
            st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b)),
        ),
    ),
    TypeFamily(
        "money",
        "money",
        _from(
            ["-92233720368547758.08", "92233720368547758.07", "0.01", "-0.01", "0"],
            st.decimals(-(10**12), 10**12, places=2, allow_nan=False).map(str),
        ),
    ),
)

_TWINS: dict[str, tuple[tuple[str, str], ...]] = {
    "numeric": (("1.0", "1.00"), ("0", "-0.000"), ("1e3", "1000.0")),
    "numeric(38,15)": (("1", "1.000000000000000"),),
    "real": (("-0", "0"),),
    "double precision": (("-0", "0"),),
    "citext": (("Ünï", "ünÏ"), ("ABC", "abc")),
    "interval": (("1 day", "24:00:00"), ("1 mon", "30 days"), ("-1 day", "-24:00:00")),
    "jsonb": (("1.0", "1.00"), ('{"a": 1.0}', '{"a": 1}')),
}
FAMILIES = tuple(
    TypeFamily(f.name, f.ddl, f.values, f.textlike, _TWINS.get(f.name, ())) for f in FAMILIES
)
BY_NAME = {f.name: f for f in FAMILIES}


# -- keys --------------------------------------------------------------------------------
@dataclass(frozen=True)
class KeySpec:
    """The key column: its type, how its values were drawn, and its values as text."""

    ddl: str
    shape: str  # dense | sparse | negative | random
    values: tuple[str, ...]  # all keys: the table's and those the application inserts


def _unique(xs: Sequence[Any]) -> list[Any]:
    return list(dict.fromkeys(xs))


@st.composite
def keys(draw: st.DrawFn, count: int) -> KeySpec:
    kind = draw(st.sampled_from(["integer", "bigint", "uuid", "text", "timestamptz"]))
    if kind in ("integer", "bigint"):
        shape = draw(st.sampled_from(["dense", "sparse", "negative"]))
        bound = 2**31 - 1 if kind == "integer" else 2**63 - 1
        if shape == "dense":
            start = draw(st.integers(-1000, 1000))
            ints = list(range(start, start + count))
        elif shape == "negative":
            ints = list(range(-count * 3, 0, 3))
            if draw(st.booleans()):
                ints[0] = -bound - 1  # the type's lower bound as a key
        else:
            ints = draw(
                st.lists(
                    st.integers(-bound - 1, bound), min_size=count, max_size=count, unique=True
                )
            )
        return KeySpec(kind, shape, tuple(str(i) for i in ints))
    if kind == "uuid":
        ids = draw(st.lists(st.uuids(), min_size=count, max_size=count, unique=True))
        return KeySpec(kind, "random", tuple(str(u) for u in ids))
    if kind == "text":
        collation = draw(st.sampled_from(["", ' COLLATE "C"', ' COLLATE "und-x-icu"']))
        texts = draw(st.lists(_text(12), min_size=count, max_size=count, unique=True))
        return KeySpec("text" + collation, "random", tuple(texts))
    stamps = draw(
        st.lists(
            st.builds(lambda d, o: d.isoformat(sep=" ") + o, _DATETIMES, _OFFSETS),
            min_size=count,
            max_size=count,
        )
    )
    if draw(st.booleans()):
        stamps[0] = "-infinity"
    # Distinct as text, maybe not as instants: the table keeps the first (harness.load).
    return KeySpec("timestamptz", "random", tuple(_unique(stamps)))


# -- the example ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    name: str
    family: TypeFamily
    role: str  # src (read, copied into a dst) | dst (written) | flag (read, boolean) | other


@dataclass(frozen=True)
class Write:
    """One written column and what the backfill sets it to."""

    dst: str
    src: str
    how: str  # copy | identity | partial | suffix


@dataclass(frozen=True)
class AppOp:
    """One application write performed while the run is under way."""

    kind: str  # update | insert | delete
    row: int  # index into the rows' keys (update, delete) or the spare keys (insert)
    column: str | None = None
    value: str | None = None
    values: tuple[str | None, ...] = ()
    pause_ms: int = 0


@dataclass(frozen=True)
class Example:
    mode: str  # sql | pandas
    key: KeySpec
    columns: tuple[Column, ...]
    rows: tuple[tuple[str | None, ...], ...]  # one value per column, in column order
    spare: int  # keys set aside at load (inside the key range) for the application to insert
    writes: tuple[Write, ...]
    drop_rows: bool  # pandas: the transform drops the rows it leaves unchanged
    rule: bool  # a skip rule quarantines the rows whose key hashes to 0
    chunk_size: int
    ops: tuple[AppOp, ...]
    kill: bool
    post_ops: tuple[AppOp, ...] = ()  # updates after the run, before its rollback

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def reads(self) -> list[str]:
        wanted = {"src", "flag"}
        if self.mode == "pandas" and any(w.how in ("identity", "partial") for w in self.writes):
            wanted.add("dst")
        return [c.name for c in self.columns if c.role in wanted]


@st.composite
def examples(
    draw: st.DrawFn,
    mode: str,
    exclude: frozenset[str] = frozenset(),
    only: frozenset[str] | None = None,
) -> Example:
    """One example. ``exclude`` names type families never read or written by the backfill
    (a known-broken dimension; they still fill the other columns); ``only`` keeps only those
    families anywhere (to chase one failure)."""
    families = [f for f in FAMILIES if only is None or f.name in only]
    pair_families = [f for f in families if f.name not in exclude]
    n_rows = draw(st.integers(20, 120))
    n_spare = draw(st.integers(0, 6))
    key = draw(keys(n_rows + n_spare + 2))
    n_pairs = draw(st.integers(1, 3))
    n_cols = draw(st.integers(max(5, 2 * n_pairs + 1), 12))
    columns: list[Column] = []
    writes: list[Write] = []
    for i in range(n_pairs):
        family = draw(st.sampled_from(pair_families))
        columns.append(Column(f"s{i}", family, "src"))
        columns.append(Column(f"d{i}", family, "dst"))
        hows = ["copy", "identity", "partial"] + (["suffix"] if family.textlike else [])
        writes.append(Write(f"d{i}", f"s{i}", draw(st.sampled_from(hows))))
    columns.append(Column("flag", BY_NAME["boolean"], "flag"))
    for i in range(n_cols - len(columns)):
        columns.append(Column(f"o{i}", draw(st.sampled_from(families)), "other"))
    cells = [c.family.cell() for c in columns]
    rows = draw(st.lists(st.tuples(*cells), min_size=len(key.values), max_size=len(key.values)))
    # some rows hold, in a column pair, two values that are equal but written differently
    for i, family in enumerate(c.family for c in columns if c.role == "src"):
        if not family.twins or not draw(st.booleans()):
            continue
        marks = draw(st.lists(st.integers(0, len(rows) - 1), max_size=6))
        for row_no in marks:
            a, b = draw(st.sampled_from(family.twins))
            if draw(st.booleans()):
                a, b = b, a
            row = list(rows[row_no])
            row[2 * i], row[2 * i + 1] = a, b
            rows[row_no] = tuple(row)
    spare = n_spare
    # several chunks an example, at most about 12 (each costs a task, forward and back)
    chunk_size = draw(st.one_of(st.integers(5, 50), st.integers(1, 4)))
    if chunk_size < 5:  # chunks of a row or a few: keep the table small
        rows = rows[: chunk_size * 10 + spare + 2]
    else:
        chunk_size = max(chunk_size, -(-len(rows) // 12))
    n_initial = len(rows) - spare
    names = [c.name for c in columns]
    ops: list[AppOp] = []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["update", "update", "update", "insert", "delete"]))
        pause = draw(st.integers(0, 40))
        if kind == "update":
            col = draw(st.sampled_from(names))
            family = columns[names.index(col)].family
            ops.append(
                AppOp(
                    "update",
                    draw(st.integers(0, n_initial - 1)),
                    col,
                    draw(family.cell()),
                    pause_ms=pause,
                )
            )
        elif kind == "insert" and spare:
            ops.append(
                AppOp(
                    "insert",
                    draw(st.integers(0, spare - 1)),
                    values=draw(st.tuples(*cells)),
                    pause_ms=pause,
                )
            )
        elif kind == "delete":
            ops.append(AppOp("delete", draw(st.integers(0, n_initial - 1)), pause_ms=pause))
    post_ops = []
    for _ in range(draw(st.integers(0, 3))):
        col = draw(st.sampled_from(names))
        family = columns[names.index(col)].family
        row = draw(st.integers(0, n_initial - 1))
        post_ops.append(AppOp("update", row, col, draw(family.cell())))
    return Example(
        mode=mode,
        key=key,
        columns=tuple(columns),
        rows=tuple(rows),
        spare=spare,
        writes=tuple(writes),
        drop_rows=mode == "pandas" and draw(st.booleans()),
        rule=draw(st.integers(0, 3)) == 0,
        chunk_size=chunk_size,
        ops=tuple(ops),
        kill=draw(st.integers(0, 9)) == 0,
        post_ops=tuple(post_ops),
    )
