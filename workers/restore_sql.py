"""The statement that restores one chunk's pre-images, and only where the rows allow it.

A row is put back only where every written column still holds what the run wrote
there (its post-image, saved beside the pre-image in the chunk's own transaction):
the application may have corrected a backfilled value since, and a rollback that
put the pre-image over that correction would lose the application's write without
a word. The comparison is on the text form (``::text``, in this one session), so
``-0`` against ``0``, ``1.0`` against ``1.00`` and json key order all count as a
change; it sits in the UPDATE's own WHERE, so PostgreSQL re-checks it on the newest
version of a row the application changes while the restore runs (READ COMMITTED
re-evaluation), never on a stale snapshot.

Rows left as they are, and rows the application deleted (never re-inserted), are
recorded in ``ferry.rollback_conflicts`` by key (masked when the key is PHI) with
the names of the columns that differ, never values. ``force`` restores changed
rows too and records them as overwritten.

A key written twice by one run (a quarantine re-run of its chunk) is restored to
its oldest pre-image if it still holds its newest post-image, ordered by the
transaction that saved them (``__ferry_xid``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from psycopg import sql

from workers.catalog import type_sql
from workers.encryption import key_expr, unseal

if TYPE_CHECKING:
    from workers.statements import Statements


def restore_statement(
    st: Statements, chunk_no: int, *, force: bool, mask: bool
) -> sql.Composed:
    """One statement: restore, record what was left, count. Columns of its one row: ``rows``
    (restored), ``kept`` (changed since, left), ``gone`` (deleted since), ``overwritten``."""
    k = st.key
    names = list(st.spec.writes)
    types = [type_sql(st.spec.column_types[n]) for n in names]
    key = key_expr(st.sealed) if st.sealed else None

    def value(col: sql.Composable, i: int) -> sql.Composable:
        """A saved value with the column's type (decrypted on an encrypted run)."""
        return unseal(col, key, types[i]) if key is not None else col

    pres = [value(sql.SQL("b.{}").format(c), i) for i, c in enumerate(st.writes)]
    sets = sql.SQL(", ").join(
        sql.SQL("{c} = {v}").format(c=c, v=v) for c, v in zip(st.writes, pres, strict=True)
    )
    holds: sql.Composable
    differ: sql.Composable
    saved: sql.Composable
    # A row already back at its pre-image (a second, forced pass; the application set it back)
    # needs nothing: neither restored nor reported.
    back = sql.SQL("({held}) IS DISTINCT FROM ({pre})").format(
        held=sql.SQL(", ").join(sql.SQL("t.{}::text").format(c) for c in st.writes),
        pre=sql.SQL(", ").join(sql.SQL("({})::text").format(p) for p in pres),
    )
    if st.keeps_post:
        posts = [value(sql.SQL("b.{}").format(n), i) for i, n in enumerate(st.post_columns)]
        holds = sql.SQL("({held}) IS NOT DISTINCT FROM ({wrote})").format(
            held=sql.SQL(", ").join(sql.SQL("t.{}::text").format(c) for c in st.writes),
            wrote=sql.SQL(", ").join(sql.SQL("({})::text").format(p) for p in posts),
        )
        differ = sql.SQL("array_remove(ARRAY[{}]::text[], NULL)").format(
            sql.SQL(", ").join(
                sql.SQL("CASE WHEN t.{c}::text IS DISTINCT FROM ({p})::text THEN {n} END").format(
                    c=c, p=p, n=sql.Literal(n)
                )
                for c, p, n in zip(st.writes, posts, names, strict=True)
            )
        )
        saved = _collapsed(st, chunk_no)
    else:  # a run from before post-images: nothing to compare with
        holds = sql.SQL("TRUE")
        differ = sql.SQL("'{}'::text[]")
        saved = st.pre_images(chunk_no)
    shown: sql.Composable = sql.SQL("b.{k}::text").format(k=k)
    if mask:  # a PHI key: masked as quarantine masks values, in the database (ledger v15)
        shown = sql.SQL("ferry.mask(b.{k}::text)").format(k=k)
    return sql.SQL(
        """WITH b AS MATERIALIZED (SELECT * FROM {saved} AS s),
cur AS MATERIALIZED (SELECT b.{k} AS {k}, {differ} AS diff, {back} AS away
                      FROM b JOIN {t} AS t ON t.{k} = b.{k}),
restored AS (
  UPDATE {t} AS t SET {sets} FROM b WHERE t.{k} = b.{k} AND ({guard}) AND {back}
  RETURNING t.{k} AS {k}),
noted AS (
  INSERT INTO ferry.rollback_conflicts (run_id, chunk_no, row_key, kind, columns, overwritten)
  SELECT {run}, {n}, {shown}, CASE WHEN w.{k} IS NULL THEN 'deleted' ELSE 'changed' END,
         coalesce(w.diff, '{{}}'::text[]), r.{k} IS NOT NULL
    FROM b LEFT JOIN cur AS w ON w.{k} = b.{k} LEFT JOIN restored AS r ON r.{k} = b.{k}
   WHERE (r.{k} IS NULL AND w.away IS NOT FALSE) OR (r.{k} IS NOT NULL AND w.diff <> '{{}}')
  RETURNING kind, overwritten)
SELECT (SELECT count(*) FROM restored) AS rows,
       (SELECT count(*) FROM noted WHERE kind = 'changed' AND NOT overwritten) AS kept,
       (SELECT count(*) FROM noted WHERE kind = 'deleted') AS gone,
       (SELECT count(*) FROM noted WHERE overwritten) AS overwritten"""
    ).format(
        saved=saved,
        k=k,
        t=st.table,
        differ=differ,
        back=back,
        sets=sets,
        guard=sql.SQL("TRUE") if force else holds,
        run=sql.Literal(int(st.run_id)),
        n=sql.Literal(int(chunk_no)),
        shown=shown,
    )


def _collapsed(st: Statements, chunk_no: int) -> sql.Composed:
    """One row per key of the chunk: its oldest pre-image and its newest post-image."""
    from workers.statements import SAVED_BY

    k = st.key
    return sql.SQL(
        """(SELECT f.{k}, {olds}, {l_news} FROM
   (SELECT DISTINCT ON (p.{k}) p.{k}, {p_olds} FROM {pre} AS p ORDER BY p.{k}, p.{x}) AS f
   JOIN (SELECT DISTINCT ON (p.{k}) p.{k} AS __ferry_key, {p_news} FROM {pre} AS p
          ORDER BY p.{k}, p.{x} DESC) AS l ON l.__ferry_key = f.{k})"""
    ).format(
        k=k,
        olds=sql.SQL(", ").join(sql.SQL("f.{}").format(c) for c in st.writes),
        p_olds=sql.SQL(", ").join(sql.SQL("p.{}").format(c) for c in st.writes),
        p_news=sql.SQL(", ").join(sql.SQL("p.{}").format(n) for n in st.post_columns),
        l_news=sql.SQL(", ").join(sql.SQL("l.{}").format(n) for n in st.post_columns),
        pre=st.pre_images(chunk_no),
        x=SAVED_BY,
    )
