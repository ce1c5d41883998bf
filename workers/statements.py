"""Statements over the user's table, built from a run's stored spec.

Every identifier goes through ``sql.Identifier``; type names come from the
catalog through ``catalog.type_sql``. The only raw SQL is what the user wrote
as SQL on purpose: expressions, ``where`` filters, custom rules and fixes.
Because that SQL may hold a ``%`` (modulo, LIKE), values are composed in as
literals and these statements are executed without parameters: psycopg
would otherwise read every ``%`` as a placeholder.

One statement applies a chunk on both paths. It reads the candidate rows
(old values and new values), applies rule fixes, judges rules, quarantines
rows that a skip rule rejects, saves pre-images of the rows that really
change into the run's backup table and updates exactly those rows, found
again by (tableoid, ctid); the pre-images come from the update's own
RETURNING, so every pre-image is of a row written. The version read must be
the version updated. Where the statement judges what it reads (rules, or
the pandas path with a filter), the chunk's rows are locked before they are
read (``lock_rows``, or the COPY that reads them). The pandas path without
either reads unlocked and stages each row's version (``reads_unlocked``): the
statement writes only rows still at it. The SQL path without rules needs no
first pass over the range either: a row the application changed after the
statement's snapshot has a new TID, so the update's recheck of ``ctid`` skips
it, and locks it, since PostgreSQL locks the newest version before it
rechecks. On both, the statement returns the keys it skipped (``missed``) and
a second pass over just them writes them (``workers.execution``).
A run launched with FERRY_ENCRYPTION_KEY seals its pre-images and raw quarantined
values in that same statement (``workers.encryption``); without a key the
statements are exactly what they were.

Pre-images are kept in one of two layouts, chosen at launch and stored in the
spec (``extra["pre_images"]``) so every worker writes what the run began with:
``packed``, one row per chunk holding arrays of keys and old values (one TOASTed
insert a chunk instead of ten thousand row inserts: a third of the chunk's WAL
records gone), or ``rows``, one row per key, for runs whose chunk of pre-images
would be too large for one value, and for runs started before packing existed.
``pre_images()`` reads either as one row per key.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from migrations.spec import ValidationRule
from workers.catalog import exact_form, length_limited, type_sql
from workers.encryption import key_expr, run_fingerprint, seal, seal_text
from workers.model import RunSpec
from workers.rules import fixed_value, passes

BAD = sql.Identifier("__ferry_bad")
WARN = sql.Identifier("__ferry_warn")
FIXED = sql.Identifier("__ferry_fixed")
TID = sql.Identifier("__ferry_tid")
TOID = sql.Identifier("__ferry_toid")
PYRULE_NAME = "__ferry_rule"  # first failing Python rule, staged by the pandas path
PYRULE = sql.Identifier(PYRULE_NAME)
XMIN_NAME = "__ferry_xmin"  # the version of a row the pandas path read (reads_unlocked)
XMIN = sql.Identifier(XMIN_NAME)


def backup_table(run_id: int) -> sql.Identifier:
    return sql.Identifier("ferry", f"backup_{int(run_id)}")


def input_table(run_id: int) -> sql.Identifier:
    return sql.Identifier(f"ferry_input_{int(run_id)}")


# A chunk's pre-images are packed into one row while they stay well under the 1 GB a value
# may hold (and the memory array_agg builds them in): launch picks the layout from a sample.
PACKED_LIMIT_BYTES = 64 * 2**20


def pre_image_layout(bytes_per_row: float, chunk_size: int, *, arrays: bool = False) -> str:
    """``packed`` when a whole chunk of pre-images fits comfortably in one value.

    Not when a saved column is an array: ``array_agg`` of arrays builds one array of a
    dimension more, which refuses NULLs and arrays of different lengths."""
    if arrays:
        return "rows"
    return "packed" if bytes_per_row * chunk_size <= PACKED_LIMIT_BYTES else "rows"


def _old_name(i: int) -> str:
    return f"__ferry_o{i}"


def _old(i: int) -> sql.Identifier:
    return sql.Identifier(_old_name(i))


# What a chunk wrote into each written column (its post-image), saved beside the pre-image so
# that a rollback restores only rows still holding it (``Statements.restore``).
def _new(i: int) -> sql.Identifier:
    return sql.Identifier(f"__ferry_n{i}")


# The transaction that saved a pre-image: a row written twice by one run (a quarantine re-run)
# is restored to its oldest pre-image, if it still holds its newest post-image.
SAVED_BY = sql.Identifier("__ferry_xid")


@dataclass(frozen=True, slots=True)
class KeyRange:
    """``(lo, hi]`` on the key (open below when lo is None), optionally only some keys."""

    lo: str | None
    hi: str
    keys: tuple[str, ...] | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ChunkArgs:
    """The values one chunk's statement is built with (as literals, see module doc)."""

    run_id: int
    chunk_no: int
    range: KeyRange
    # pandas path: the rows the chunk's COPY read (the staged rows are those, or fewer)
    rows_read: int | None = None


class Statements:
    def __init__(self, spec: RunSpec, run_id: int) -> None:
        self.spec = spec
        self.run_id = run_id
        self.table = sql.Identifier(spec.schema, spec.table)
        self.key = sql.Identifier(spec.key)
        self.key_type = type_sql(spec.key_type)
        self.writes = [sql.Identifier(c) for c in spec.writes]
        self.where = sql.SQL("({})").format(sql.SQL(spec.where)) if spec.where else sql.SQL("TRUE")
        self.backup = backup_table(run_id)
        self.input = input_table(run_id)
        # Encrypted at rest (workers.encryption) when the run was launched with a key.
        self.sealed = run_fingerprint(spec.extra)
        self.packed = spec.extra.get("pre_images") == "packed"
        # Post-images kept with the pre-images (runs launched before they existed have none:
        # their rollback restores without looking at what the rows hold now).
        self.keeps_post = bool(spec.extra.get("post_images"))
        self.post_columns = [_new(i) for i in range(len(self.writes))] if self.keeps_post else []
        # SQL path: whether a chunk locks its rows before its statement reads them. Rules
        # judge and quarantine the rows as read, so they must read the version that stays;
        # without rules the statement finds what moved under it (see module doc) and the
        # range is not walked twice: the locking pass cost ~15 % of a chunk.
        self.locks_first = bool(spec.rules)
        # pandas path without rules or filter: the COPY that reads a chunk takes no row locks
        # (a lock pass writes every row of the chunk once more: ~6 ms of database CPU a
        # 10,000-row chunk). It also reads the written columns' values and each row's version
        # (xmin), which travel untouched (as COPY text) into the temp table beside the new
        # values: the chunk statement takes its pre-images from there instead of joining the
        # table to itself (~20 % of that statement), and writes only rows still at the version
        # read. A row the application changed since has another xmin (and under the statement,
        # its recheck sees the new one): it is skipped and returned as ``missed``, and read
        # again, locked this time, transformed and written (workers.execution). With rules the
        # candidate set is judged as read from the table; a filter is raw SQL that could name a
        # temp table column: both lock in the COPY and keep the self-join.
        self.reads_unlocked = spec.mode == "pandas" and not spec.rules and not spec.where
        # The staged old values' column names, in the order of ``writes`` (none if not staged).
        self.old_columns = (
            [_old_name(i) for i in range(len(self.writes))] if self.reads_unlocked else []
        )
        # Columns staged as the COPY read them, never parsed nor shown to the transform.
        self.raw_columns = [*self.old_columns, *([XMIN_NAME] if self.reads_unlocked else [])]

    # -- planning -------------------------------------------------------------------------
    def boundaries(self, after: str | None, skip: int, count: int, last: str) -> sql.Composed:
        """Up to ``count`` planning boundaries past ``after``, none above ``last``: a walk
        of the key index from each to the key ``skip`` rows after it, in one statement."""
        bounded = sql.SQL("t.{k} <= CAST({last} AS {kt}) AND {w}").format(
            k=self.key, last=sql.Literal(last), kt=self.key_type, w=self.where
        )
        above = (
            sql.SQL("TRUE")
            if after is None
            else sql.SQL("t.{k} > CAST({a} AS {kt})").format(
                k=self.key, a=sql.Literal(after), kt=self.key_type
            )
        )
        return sql.SQL(
            "WITH RECURSIVE {walk} ({b}) AS ("
            "(SELECT t.{k} FROM {t} AS t WHERE {above} AND {bounded} "
            "ORDER BY t.{k} OFFSET {skip} LIMIT 1) "
            "UNION ALL "
            "SELECT n.{b} FROM {walk} AS w CROSS JOIN LATERAL "
            "(SELECT t.{k} AS {b} FROM {t} AS t WHERE t.{k} > w.{b} AND {bounded} "
            "ORDER BY t.{k} OFFSET {skip} LIMIT 1) AS n) "
            "SELECT {b}::text AS b FROM {walk} LIMIT {count}"
        ).format(
            walk=sql.Identifier("__ferry_walk"),
            b=sql.Identifier("__ferry_b"),
            k=self.key,
            t=self.table,
            above=above,
            bounded=bounded,
            skip=sql.Literal(int(skip)),
            count=sql.Literal(int(count)),
        )

    def split_point(self, r: KeyRange, keep: int) -> sql.Composed:
        """The key that ends the first ``keep`` rows of a chunk, if rows remain after it."""
        return sql.SQL(
            "SELECT s.b::text AS b FROM (SELECT t.{k} AS b FROM {t} AS t WHERE {r} "
            "AND t.{k} < CAST({hi} AS {kt}) ORDER BY t.{k} OFFSET {skip} LIMIT 1) AS s"
        ).format(
            k=self.key,
            t=self.table,
            r=self.in_range(r),
            hi=sql.Literal(r.hi),
            kt=self.key_type,
            skip=sql.Literal(max(int(keep) - 1, 0)),
        )

    def last_key(self) -> sql.Composed:
        """The greatest key. NULLs sort first in DESC order: without ``IS NOT NULL`` a table
        holding one NULL key had NULL as its last key, and the run planned no chunk at all
        (rows whose key the application sets to NULL after ``resolve`` counted none are not
        the run's, as rows inserted above the last key are not)."""
        return sql.SQL(
            "SELECT t.{k}::text AS b FROM {t} AS t WHERE t.{k} IS NOT NULL AND {w} "
            "ORDER BY t.{k} DESC LIMIT 1"
        ).format(k=self.key, t=self.table, w=self.where)

    def null_keys(self) -> sql.Composed:
        """How many of the run's rows have a NULL key (no range holds them)."""
        return null_keys(self.spec.schema, self.spec.table, self.spec.key, self.spec.where)

    def lock_rows(self, r: KeyRange) -> sql.Composed:
        """Take the chunk's row locks first, waiting (within lock_timeout) for the
        application's: from then on nobody changes these rows until the chunk commits, so
        what the transform reads, the pre-images and the update all see one version."""
        return sql.SQL(
            "SELECT count(*) AS n FROM (SELECT 1 FROM {t} AS t WHERE {r} "
            "FOR NO KEY UPDATE OF t) AS locked"
        ).format(t=self.table, r=self.in_range(r))

    def estimate_rows(self) -> sql.Composed:
        """The planner's estimate of the run's rows (EXPLAIN: nothing is read)."""
        return sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 FROM {t} AS t WHERE {w}").format(
            t=self.table, w=self.where
        )

    def count_range(self, r: KeyRange) -> sql.Composed:
        return sql.SQL("SELECT count(*) AS n FROM {t} AS t WHERE {r}").format(
            t=self.table, r=self.in_range(r)
        )

    def create_backup(self, lz4: bool = False) -> sql.Composed:
        def typed(
            c: sql.Identifier, sealed: bool, name: sql.Identifier | None = None
        ) -> sql.Composable:
            n = name or c
            if self.packed:
                return (
                    sql.SQL("NULL::bytea[] AS {n}") if sealed else sql.SQL("ARRAY[t.{c}] AS {n}")
                ).format(c=c, n=n)
            return (sql.SQL("NULL::bytea AS {n}") if sealed else sql.SQL("t.{c} AS {n}")).format(
                c=c, n=n
            )

        # Sealed runs keep ciphertext in the written columns; the key stays in clear.
        posts = [
            typed(c, bool(self.sealed), _new(i))
            for i, c in enumerate(self.writes)
            if self.keeps_post
        ]
        cols = sql.SQL(", ").join(
            [typed(self.key, False), *(typed(c, bool(self.sealed)) for c in self.writes), *posts]
        )
        index = (
            sql.SQL("CREATE INDEX ON {b} (chunk_no)")
            if self.packed
            else sql.SQL("CREATE INDEX ON {b} USING brin (chunk_no) WITH (pages_per_range = 16)")
        ).format(b=self.backup)
        compress: sql.Composable = sql.SQL("")
        if self.packed and lz4:
            compress = sql.SQL("; ALTER TABLE {b} {cols}").format(
                b=self.backup,
                cols=sql.SQL(", ").join(
                    sql.SQL("ALTER COLUMN {} SET COMPRESSION lz4").format(c)
                    for c in [self.key, *self.writes]
                ),
            )
        saved_by: sql.Composable = (
            sql.SQL("; ALTER TABLE {b} ADD COLUMN {x} xid8 NOT NULL DEFAULT pg_current_xact_id()")
            if self.keeps_post
            else sql.SQL("")
        ).format(b=self.backup, x=SAVED_BY)
        return sql.SQL(
            "CREATE TABLE {b} AS SELECT 0::integer AS chunk_no, {cols} FROM {t} AS t "
            "WITH NO DATA{saved_by}; {index}{compress}"
        ).format(
            b=self.backup,
            cols=cols,
            t=self.table,
            saved_by=saved_by,
            index=index,
            compress=compress,
        )

    def pre_images(self, chunk_no: int | None = None) -> sql.Composable:
        """The run's pre-images (of one chunk, or all) as rows: chunk_no, key, written columns."""
        which: sql.Composable = (
            sql.SQL("TRUE")
            if chunk_no is None
            else sql.SQL("p.chunk_no = {n}").format(n=sql.Literal(int(chunk_no)))
        )
        if not self.packed:
            return sql.SQL("(SELECT * FROM {b} AS p WHERE {w})").format(b=self.backup, w=which)
        cols = [self.key, *self.writes, *self.post_columns]
        return sql.SQL(
            "(SELECT p.chunk_no, {by}u.* FROM {b} AS p, unnest({arrays}) AS u({cols}) WHERE {w})"
        ).format(
            by=sql.SQL("p.{x}, ").format(x=SAVED_BY) if self.keeps_post else sql.SQL(""),
            b=self.backup,
            arrays=sql.SQL(", ").join(sql.SQL("p.{}").format(c) for c in cols),
            cols=sql.SQL(", ").join(cols),
            w=which,
        )

    def count_pre_images(self) -> sql.Composed:
        if self.packed:
            return sql.SQL("SELECT coalesce(sum(cardinality({k})), 0) AS n FROM {b}").format(
                k=self.key, b=self.backup
            )
        return sql.SQL("SELECT count(*) AS n FROM {b}").format(b=self.backup)

    # -- applying ---------------------------------------------------------------------------
    def in_range(self, r: KeyRange) -> sql.Composable:
        """A chunk's rows: ``(lo, hi]`` on the key (open below for the first), the filter,
        and, when re-running quarantined rows, only those keys."""
        parts: list[sql.Composable] = [
            sql.SQL("t.{k} <= CAST({hi} AS {kt})").format(
                k=self.key, hi=sql.Literal(r.hi), kt=self.key_type
            ),
            self.where,
        ]
        if r.lo is not None:
            lower = sql.SQL("t.{k} > CAST({lo} AS {kt})").format(
                k=self.key, lo=sql.Literal(r.lo), kt=self.key_type
            )
            parts.insert(0, lower)
        if r.keys is not None:
            parts.append(self.key_in(r.keys))
        return sql.SQL(" AND ").join(parts)

    def key_in(self, keys: tuple[str, ...] | list[str]) -> sql.Composable:
        return sql.SQL("t.{k} = ANY(CAST({keys} AS {kt}[]))").format(
            k=self.key, keys=sql.Literal(list(keys)), kt=self.key_type
        )

    def read_copy(self, r: KeyRange, *, lock: bool = False) -> sql.Composed:
        """COPY out of the columns a pandas transform reads (then ``raw_columns``: the written
        columns' values and the row's version, see ``reads_unlocked``), for one chunk.

        With ``lock`` the read takes the chunk's row locks itself (as ``lock_rows`` does, and
        in READ COMMITTED it returns the version it locked): one scan of the range, not two.
        """
        cols = [self.key, *(sql.Identifier(c) for c in self.spec.reads if c != self.spec.key)]
        return sql.SQL("COPY (SELECT {cols} FROM {t} AS t WHERE {r}{lock}) TO STDOUT").format(
            cols=sql.SQL(", ").join(
                [*(sql.SQL("t.{}").format(c) for c in cols), *self._raw_selects()]
            ),
            t=self.table,
            r=self.in_range(r),
            lock=sql.SQL(" FOR NO KEY UPDATE OF t" if lock else ""),
        )

    def read_columns(self) -> list[str]:
        """What ``read_copy`` returns, in order: the columns the transform reads."""
        return [self.spec.key, *(c for c in self.spec.reads if c != self.spec.key)]

    def _raw_selects(self) -> list[sql.Composable]:
        """The select list of ``raw_columns`` over the table as ``t``: read by the chunk's
        COPY, and typed by it in the temp table."""
        if not self.reads_unlocked:
            return []
        olds = [sql.SQL("t.{c} AS {o}").format(c=c, o=_old(i)) for i, c in enumerate(self.writes)]
        return [*olds, sql.SQL("t.xmin AS {x}").format(x=XMIN)]

    def create_input(self) -> sql.Composed:
        cols = sql.SQL(", ").join([self.key, *self.writes, *self._raw_selects()])
        return sql.SQL(
            "CREATE TEMP TABLE IF NOT EXISTS {i} ON COMMIT DELETE ROWS AS "
            "SELECT {cols}, NULL::integer AS {p} FROM {t} AS t WITH NO DATA"
        ).format(i=self.input, cols=cols, t=self.table, p=PYRULE)

    def write_copy(self, *, judged: bool = True) -> sql.Composed:
        """COPY into the temp table; ``judged``: with the first failing Python rule per row."""
        olds = [sql.Identifier(o) for o in self.raw_columns]
        cols = sql.SQL(", ").join([self.key, *self.writes, *olds, *([PYRULE] if judged else [])])
        return sql.SQL("COPY {i} ({cols}) FROM STDIN").format(i=self.input, cols=cols)

    def apply(self, args: ChunkArgs) -> sql.Composed:
        """The one statement that applies a chunk."""
        if self.spec.mode == "pandas" and not self.spec.rules and args.rows_read is not None:
            return self._apply_staged(args)
        return self._apply(self._candidates(args.range), args)

    def _apply_staged(self, args: ChunkArgs) -> sql.Composed:
        """The pandas path without rules: the staged values straight into the rows they differ
        from, no candidate set materialized and scanned again to be counted.

        Without rules or filter (``reads_unlocked``) the old values and the version read come
        from the temp table: only rows still at that version are written, and the staged rows
        that differ but were not written are the ``missed`` ones, read again by the caller.
        Otherwise the rows were locked by the COPY that read them, so the version joined here
        is the version updated and every row that differs is written (rows changed is rows
        written), and the old values come from the table joined to itself, in a sub-select
        where only the table's own columns are in scope for the user's filter.
        """
        olds = [_old(i) for i in range(len(self.writes))]
        common = {
            "t": self.table,
            "i": self.input,
            "k": self.key,
            "r": self.in_range(args.range),
        }
        x_news: list[sql.Composable] = [sql.SQL("x.{}").format(c) for c in self.writes]
        if self.reads_unlocked:  # the old values staged: no self-join to find them
            return self._apply_unlocked(args, olds, x_news, common)
        c_olds: list[sql.Composable] = [sql.SQL("c.{}").format(o) for o in olds]
        written = sql.SQL(
            """UPDATE {t} AS u SET {sets}
    FROM (SELECT t.tableoid AS {toid}, t.ctid AS {tid}, t.{k} AS {k}, {olds_as}
            FROM {t} AS t WHERE {r}) AS c
    JOIN {i} AS x ON x.{k} = c.{k}
   WHERE u.ctid = c.{tid} AND u.tableoid = c.{toid} AND {differ}
  RETURNING c.{k} AS {k}, {c_olds_as}, {news_as}"""
        ).format(
            tid=TID,
            toid=TOID,
            olds_as=sql.SQL(", ").join(
                sql.SQL("t.{c} AS {o}").format(c=c, o=o)
                for c, o in zip(self.writes, olds, strict=True)
            ),
            differ=self._differ(c_olds, x_news),
            sets=self._sets("u", c_olds, x_news),
            c_olds_as=sql.SQL(", ").join(sql.SQL("c.{o} AS {o}").format(o=o) for o in olds),
            news_as=self._news_as("u"),
            **common,
        )
        return sql.SQL(
            """WITH written AS (
  {written}),
{saved}
SELECT {read}::bigint AS rows_read, {saved_count} AS rows_changed, {saved_count} AS rows_written,
       NULL::text[] AS missed, 0::bigint AS rows_quarantined, 0::bigint AS rows_failed,
       NULL::integer AS failed_rule, 0::bigint AS rows_warned, 0::bigint AS rows_fixed"""
        ).format(
            written=written,
            read=sql.Literal(int(args.rows_read or 0)),
            **self._save(args.chunk_no),
        )

    def _apply_unlocked(
        self,
        args: ChunkArgs,
        olds: list[sql.Identifier],
        x_news: list[sql.Composable],
        common: dict[str, sql.Composable],
    ) -> sql.Composed:
        x_olds: list[sql.Composable] = [sql.SQL("x.{}").format(o) for o in olds]
        differ = self._differ(x_olds, x_news)
        return sql.SQL(
            """WITH written AS (
  UPDATE {t} AS t SET {sets} FROM {i} AS x
   WHERE x.{k} = t.{k} AND t.xmin = x.{xmin} AND {r} AND {differ}
  RETURNING x.{k} AS {k}, {x_olds_as}, {news_as}),
{saved},
changed AS (SELECT count(*) AS n FROM {i} AS x WHERE {differ})
SELECT {read}::bigint AS rows_read, (SELECT n FROM changed) AS rows_changed,
       {saved_count} AS rows_written,
       CASE WHEN (SELECT n FROM changed) <> {saved_count} THEN
         (SELECT array_agg(x.{k}::text) FROM {i} AS x
           WHERE {differ} AND NOT EXISTS (SELECT FROM written w WHERE w.{k} = x.{k}))
       END AS missed,
       0::bigint AS rows_quarantined, 0::bigint AS rows_failed,
       NULL::integer AS failed_rule, 0::bigint AS rows_warned, 0::bigint AS rows_fixed"""
        ).format(
            xmin=XMIN,
            differ=differ,
            sets=self._sets("t", x_olds, x_news),
            x_olds_as=sql.SQL(", ").join(sql.SQL("x.{o} AS {o}").format(o=o) for o in olds),
            news_as=self._news_as("t"),
            read=sql.Literal(int(args.rows_read or 0)),
            **common,
            **self._save(args.chunk_no),
        )

    # -- exactly unchanged -----------------------------------------------------------------
    def _new_form(self, name: str, new: sql.Composable, *, cast: bool) -> sql.Composable:
        """A new value in the form its column's old value is compared in (``exact_form``).

        ``cast``: the new value is an SQL expression of its own type, cast here to the
        column's (what the UPDATE stores); a length-limited string is compared uncast, as an
        explicit cast would truncate a value the UPDATE's assignment refuses."""
        type_text = self.spec.column_types[name]
        if cast and length_limited(type_text):
            return new
        if cast:
            new = sql.SQL("CAST({} AS {})").format(new, type_sql(type_text))
        return exact_form(new, type_text)

    def _differ(
        self, olds: list[sql.Composable], news: list[sql.Composable], *, cast: bool = False
    ) -> sql.Composable:
        """Whether a row's new values differ from its old ones, exactly (``exact_form``)."""
        names = self.spec.writes
        return sql.SQL("({}) IS DISTINCT FROM ({})").format(
            sql.SQL(", ").join(
                exact_form(o, self.spec.column_types[n]) for o, n in zip(olds, names, strict=True)
            ),
            sql.SQL(", ").join(
                self._new_form(n, v, cast=cast) for v, n in zip(news, names, strict=True)
            ),
        )

    def _sets(
        self,
        current: str,
        olds: list[sql.Composable],
        news: list[sql.Composable],
        *,
        cast: bool = False,
    ) -> sql.Composable:
        """The UPDATE's SET list. With several written columns, one the transform left exactly
        as it was keeps the table's own value (``current`` is the table's alias): the row is
        written for its other columns, that column is not."""
        cur = sql.Identifier(current)
        if len(self.writes) == 1:
            return sql.SQL("{c} = {v}").format(c=self.writes[0], v=news[0])
        return sql.SQL(", ").join(
            sql.SQL(
                "{c} = CASE WHEN ({o}) IS NOT DISTINCT FROM ({n}) THEN {cur}.{c} ELSE {v} END"
            ).format(
                c=c,
                o=exact_form(o, self.spec.column_types[name]),
                n=self._new_form(name, v, cast=cast),
                cur=cur,
                v=v,
            )
            for c, name, o, v in zip(self.writes, self.spec.writes, olds, news, strict=True)
        )

    def clear_input(self) -> sql.Composed:
        """Empty the temp table before a chunk stages rows into it again."""
        return sql.SQL("TRUNCATE {i}").format(i=self.input)

    def _candidates(self, r: KeyRange) -> sql.Composable:
        olds = [sql.SQL("t.{c} AS {o}").format(c=c, o=_old(i)) for i, c in enumerate(self.writes)]
        rows = sql.SQL(
            "SELECT t.tableoid AS {toid}, t.ctid AS {tid}, t.{k} AS {k}, {cols} FROM {t} AS t"
        )
        if self.spec.mode == "sql":
            assert self.spec.sql is not None
            news = [
                sql.SQL("({e}) AS {c}").format(
                    e=sql.SQL(self.spec.sql[name]), c=sql.Identifier(name)
                )
                for name in self.spec.writes
            ]
            news.append(sql.SQL("NULL::integer AS {p}").format(p=PYRULE))
            return sql.SQL("{rows} WHERE {r}").format(
                rows=rows.format(
                    toid=TOID,
                    tid=TID,
                    k=self.key,
                    cols=sql.SQL(", ").join(olds + news),
                    t=self.table,
                ),
                r=self.in_range(r),
            )
        # The staged values joined to the chunk's rows, the range (and the user's filter, which
        # may name a written column) applied where only the table's own columns are in scope.
        staged = [sql.SQL("x.{c} AS {c}").format(c=c) for c in [*self.writes, PYRULE]]
        return sql.SQL(
            "SELECT c.*, {staged} FROM ({rows} WHERE {r}) AS c JOIN {i} AS x ON x.{k} = c.{k}"
        ).format(
            staged=sql.SQL(", ").join(staged),
            rows=rows.format(
                toid=TOID, tid=TID, k=self.key, cols=sql.SQL(", ").join(olds), t=self.table
            ),
            r=self.in_range(r),
            i=self.input,
            k=self.key,
        )

    def _apply(self, candidates: sql.Composable, args: ChunkArgs) -> sql.Composed:
        tail = sql.SQL(
            """changed AS (SELECT * FROM {source} WHERE {keep} {differ}),
counted AS (SELECT count(*) AS n FROM changed),
written AS (UPDATE {t} AS t SET {sets} FROM changed
            WHERE t.ctid = changed.{tid} AND t.tableoid = changed.{toid}
            RETURNING changed.{k} AS {k}, {changed_olds}, {news_as}),
{saved}
SELECT {rows_read} AS rows_read,
       (SELECT n FROM counted) AS rows_changed,
       {saved_count} AS rows_written,
       CASE WHEN (SELECT n FROM counted) <> {saved_count} THEN
         (SELECT array_agg(changed.{k}::text) FROM changed
           WHERE NOT EXISTS (SELECT FROM written WHERE written.{k} = changed.{k}))
       END AS missed,"""
        )
        parts = {
            "changed_olds": sql.SQL(", ").join(
                sql.SQL("changed.{o} AS {o}").format(o=_old(i)) for i in range(len(self.writes))
            ),
            "news_as": self._news_as("t"),
            "k": self.key,
            "t": self.table,
            "tid": TID,
            "toid": TOID,
            # The new values cast to their columns' types to be compared: SQL expressions and
            # rule fixes (``fix="250"`` for a numeric(6,1) is 250.0 once stored) have their own.
            "differ": self._differ(
                [_old(i) for i in range(len(self.writes))], list(self.writes), cast=True
            ),
            "sets": self._sets(
                "t",
                [sql.SQL("changed.{}").format(_old(i)) for i in range(len(self.writes))],
                [sql.SQL("changed.{}").format(c) for c in self.writes],
                cast=True,
            ),
            "chunk_no": sql.Literal(int(args.chunk_no)),
            # pandas path: what the COPY read (the staged rows may be fewer), as without rules
            "rows_read": (
                sql.SQL("{}::bigint").format(sql.Literal(int(args.rows_read)))
                if args.rows_read is not None
                else sql.SQL("(SELECT count(*) FROM cand)")
            ),
            "cand": candidates,
            **self._save(args.chunk_no),
        }
        if not self.spec.rules:
            # The common case: no rule CTEs to materialize and scan.
            return sql.SQL(
                "WITH cand AS MATERIALIZED ({cand}),\n{tail}\n"
                "       0::bigint AS rows_quarantined, 0::bigint AS rows_failed,"
                " NULL::integer AS failed_rule, 0::bigint AS rows_warned, 0::bigint AS rows_fixed"
            ).format(tail=tail.format(source=sql.SQL("cand"), keep=sql.SQL(""), **parts), **parts)
        return self._apply_with_rules(tail, parts, args)

    def _apply_with_rules(
        self, tail: sql.SQL, parts: dict[str, sql.Composable], args: ChunkArgs
    ) -> sql.Composed:
        """Fix (action transform), judge, quarantine (skip) and count (fail, warning)."""
        rules = self.spec.rules
        fixes = [r for r in rules if r.action == "transform"]
        judged_rules = [(i, r) for i, r in enumerate(rules) if r.action != "transform"]
        errors = [(i, r) for i, r in judged_rules if r.severity == "error"]
        warnings = [(i, r) for i, r in judged_rules if r.severity == "warning"]
        carried = [TOID, TID, PYRULE, self.key, *(_old(i) for i in range(len(self.writes)))]

        fixed_cols: list[sql.Composable] = list(carried)
        fixed_flags: list[sql.Composable] = []
        for name, ident in zip(self.spec.writes, self.writes, strict=True):
            expr: sql.Composable = ident
            for rule in (r for r in fixes if r.field == name):
                fixed_flags.append(sql.SQL("NOT {}").format(passes(rule, expr)))
                expr = fixed_value(rule, expr)
            fixed_cols.append(sql.SQL("{e} AS {c}").format(e=expr, c=ident))
        warn = (
            sql.SQL(" OR ").join(sql.SQL("NOT {}").format(_passes(r)) for _, r in warnings)
            if warnings
            else sql.SQL("FALSE")
        )
        return sql.SQL(
            """WITH cand AS MATERIALIZED ({cand}),
fixed AS MATERIALIZED (SELECT {fixed_cols}, ({fixed_flag}) AS {fx} FROM cand),
judged AS MATERIALIZED (SELECT {all_cols}, {fx}, {bad} AS {b}, ({warn}) AS {w} FROM fixed),
rules (idx, field, rule_type, message, action) AS (VALUES {rule_rows}),
quarantined AS (
  INSERT INTO ferry.quarantine (run_id, chunk_no, row_key, rule_index, field, rule_type,
                                message, value_masked)
  SELECT {run_id}, {chunk_no}, j.{k}::text, r.idx, r.field, r.rule_type, r.message,
         ferry.mask({masked})
    FROM judged j JOIN rules r ON r.idx = j.{b} WHERE r.action = 'skip'
  RETURNING id, row_key),
raw_values AS (
  INSERT INTO ferry.quarantine_values (quarantine_id, value)
  SELECT q.id, {raw} FROM quarantined q JOIN judged j ON j.{k}::text = q.row_key
  RETURNING 1),
{tail}
       (SELECT count(*) FROM quarantined) AS rows_quarantined,
       (SELECT count(*) FROM judged j JOIN rules r ON r.idx = j.{b} WHERE r.action = 'fail')
           AS rows_failed,
       (SELECT min(j.{b}) FROM judged j JOIN rules r ON r.idx = j.{b} WHERE r.action = 'fail')
           AS failed_rule,
       (SELECT count(*) FROM judged WHERE {b} IS NULL AND {w}) AS rows_warned,
       (SELECT count(*) FROM judged WHERE {fx} AND {b} IS NULL) AS rows_fixed"""
        ).format(
            tail=tail.format(
                source=sql.SQL("judged"), keep=sql.SQL("{b} IS NULL AND").format(b=BAD), **parts
            ),
            fixed_cols=sql.SQL(", ").join(fixed_cols),
            fixed_flag=sql.SQL(" OR ").join(fixed_flags) if fixed_flags else sql.SQL("FALSE"),
            fx=FIXED,
            all_cols=sql.SQL(", ").join([*carried, *self.writes]),
            bad=_first_failing(errors),
            b=BAD,
            warn=warn,
            w=WARN,
            rule_rows=_rule_values(rules),
            masked=_masked_value(errors),
            raw=(
                seal_text(_masked_value(errors), key_expr(self.sealed))
                if self.sealed
                else _masked_value(errors)
            ),
            run_id=sql.Literal(int(args.run_id)),
            **parts,
        )

    def _save(self, chunk_no: int) -> dict[str, sql.Composable]:
        """The CTE that saves the pre-images of the rows ``written`` returns, and their count.

        With them, what the chunk wrote (``_news_as``), sealed like the pre-images on an
        encrypted run: a rollback compares it with what the row holds then."""
        olds: list[sql.Composable] = [_old(i) for i in range(len(self.writes))]
        news: list[sql.Composable] = (
            [_new(i) for i in range(len(self.writes))] if self.keeps_post else []
        )
        if self.sealed:
            key = key_expr(self.sealed)
            olds = [seal(o, key) for o in olds]
            news = [seal(n, key) for n in news]
        values: list[sql.Composable] = [self.key, *olds, *news]
        parts = {
            "b": self.backup,
            "n": sql.Literal(int(chunk_no)),
            "cols": sql.SQL(", ").join(
                [self.key, *self.writes, *(_new(i) for i in range(len(news)))]
            ),
        }
        if not self.packed:
            return {
                "saved": sql.SQL(
                    "saved AS (INSERT INTO {b} (chunk_no, {cols}) "
                    "SELECT {n}, {values} FROM written RETURNING 1)"
                ).format(values=sql.SQL(", ").join(values), **parts),
                "saved_count": sql.SQL("(SELECT count(*) FROM saved)"),
            }
        # Aggregates of one query level see the rows in one order: the arrays line up.
        return {
            "saved": sql.SQL(
                "saved AS (INSERT INTO {b} (chunk_no, {cols}) SELECT {n}, {aggs} FROM written "
                "HAVING count(*) > 0 RETURNING cardinality({k}) AS n)"
            ).format(
                aggs=sql.SQL(", ").join(sql.SQL("array_agg({})").format(v) for v in values),
                k=self.key,
                **parts,
            ),
            "saved_count": sql.SQL("(SELECT coalesce(sum(n), 0) FROM saved)::bigint"),
        }

    def _news_as(self, alias: str) -> sql.Composable:
        """The written columns as the UPDATE left them (its RETURNING sees the new row)."""
        return sql.SQL(", ").join(
            sql.SQL("{a}.{c} AS {n}").format(a=sql.Identifier(alias), c=c, n=_new(i))
            for i, c in enumerate(self.writes)
        )

    def restore(self, chunk_no: int, *, force: bool, mask: bool) -> sql.Composed:
        """Put one chunk's pre-images back where the rows still hold what it wrote
        (``workers.restore_sql``)."""
        from workers.restore_sql import restore_statement

        return restore_statement(self, chunk_no, force=force, mask=mask)


def null_keys(schema: str, table: str, key: str, where: str | None) -> sql.Composed:
    """Count the rows of ``table`` (those the filter keeps) whose key is NULL: ``resolve``
    refuses a run over them. The unique index on the key serves ``IS NULL``."""
    return sql.SQL("SELECT count(*) AS n FROM {t} AS t WHERE t.{k} IS NULL AND {w}").format(
        t=sql.Identifier(schema, table),
        k=sql.Identifier(key),
        w=sql.SQL("({})").format(sql.SQL(where)) if where else sql.SQL("TRUE"),
    )


def _passes(rule: ValidationRule) -> sql.Composable:
    return passes(rule, sql.Identifier(rule.field))


def _first_failing(rules: list[tuple[int, ValidationRule]]) -> sql.Composable:
    if not rules:
        return sql.SQL("NULL::integer")
    whens = sql.SQL(" ").join(
        sql.SQL("WHEN {p} = {i} THEN {i}").format(p=PYRULE, i=sql.Literal(i))
        if r.is_python
        else sql.SQL("WHEN NOT {p} THEN {i}").format(p=_passes(r), i=sql.Literal(i))
        for i, r in rules
    )
    return sql.SQL("CASE {w} END").format(w=whens)


def _masked_value(rules: list[tuple[int, ValidationRule]]) -> sql.Composable:
    if not rules:
        return sql.SQL("''")
    whens = sql.SQL(" ").join(
        sql.SQL("WHEN {i} THEN j.{c}::text").format(i=sql.Literal(i), c=sql.Identifier(r.field))
        for i, r in rules
    )
    return sql.SQL("coalesce(CASE j.{b} {w} END, 'NULL')").format(b=BAD, w=whens)


def _rule_values(rules: tuple[ValidationRule, ...]) -> sql.Composable:
    if not rules:
        return sql.SQL("(NULL::integer, NULL::text, NULL::text, NULL::text, NULL::text)")
    return sql.SQL(", ").join(
        sql.SQL("({i}, {f}, {t}, {m}, {a})").format(
            i=sql.Literal(i),
            f=sql.Literal(r.field),
            t=sql.Literal(r.type),
            m=sql.Literal(r.error_message),
            a=sql.Literal(r.action),
        )
        for i, r in enumerate(rules)
    )
