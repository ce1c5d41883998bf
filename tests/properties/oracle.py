"""The oracle of the differential harness.

PostgreSQL is the oracle. A trigger records every version of every row of the example's table
(``props.history``: the row as text before and after, who wrote it, in one sequence with the
chunk transitions that a trigger on ``ferry.chunks`` records). The backfill's function ``f``
has a SQL twin, which PostgreSQL evaluates on each recorded version, so the oracle decides
without guesswork:

* every write Ferry made is ``f(the row it replaced)``: written columns as ``f`` gives them,
  every other column byte-identical;
* Ferry wrote each row at most once, inside the transaction of the chunk that holds its key;
* a row of a done chunk that Ferry did not write held, at some moment of its chunk, a version
  that ``f`` leaves unchanged, or was quarantined by the rule, or the application wrote it
  while the chunk ran (the row ends as the application's write);
* after rollback, a row the application did not touch after its chunk is byte-identical to the
  version Ferry replaced; a row whose written columns the application changed keeps them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from tests.properties.backfill import RULE, SCHEMA, twin
from tests.properties.strategies import Example

LOAD = "harness-load"  # application_name of the connection that fills the table


class Discrepancy(AssertionError):
    """The oracle's verdict: what broke, on which rows, and how to reproduce it."""


def snapshot(conn: psycopg.Connection[Any], table: str) -> dict[str, str]:
    t = sql.Identifier(SCHEMA, table)
    return {
        r[0]: r[1] for r in conn.execute(sql.SQL("SELECT t.k::text, t::text FROM {} t").format(t))
    }


# -- the oracle -----------------------------------------------------------------------------
def _f_rows(
    conn: psycopg.Connection[Any], example: Example, table: str, rows: list[str]
) -> list[tuple[str, bool]]:
    """f applied to each row text, as row text, and whether the rule passes on it."""
    if not rows:
        return []
    tt = sql.Identifier(SCHEMA, table)
    parts: list[sql.Composable] = [sql.SQL("t.k")]
    types = {c.name: c.family.ddl for c in example.columns}
    writes = {w.dst: w for w in example.writes}
    for name in example.column_names:
        if name in writes:
            parts.append(
                sql.SQL("CAST(({}) AS {})").format(
                    sql.SQL(twin(example, writes[name])), sql.SQL(types[name])
                )
            )
        else:
            parts.append(sql.SQL("t.{}").format(sql.Identifier(name)))
    # as Ferry judges a rule: on the new value, which passes when NULL (a CHECK's logic)
    rule = (
        sql.SQL("(f.fr).{} IS NULL OR coalesce(({}), true)").format(
            sql.Identifier(example.writes[0].dst), sql.SQL(RULE)
        )
        if example.rule
        else sql.SQL("true")
    )
    query = sql.SQL(
        "SELECT f.fr::text, ({rule}) FROM unnest(%s::text[]) WITH ORDINALITY "
        "AS x(r, i), LATERAL (SELECT (CAST(x.r AS {t})).*) AS t, "
        "LATERAL (SELECT CAST(ROW({parts}) AS {t}) AS fr) AS f ORDER BY x.i"
    ).format(rule=rule, t=tt, parts=sql.SQL(", ").join(parts))
    return [(r[0], bool(r[1])) for r in conn.execute(query, (rows,))]


@dataclass
class Window:
    chunk_no: int
    claimed: int  # seq of the claim that led to the chunk's done mark
    done: int  # seq of its done mark
    txid: int


def _windows(conn: psycopg.Connection[Any], run_id: int) -> tuple[list[Window], list[str]]:
    events = conn.execute(
        "SELECT chunk_no, seq, status, txid FROM props.chunk_log WHERE run_id = %s ORDER BY seq",
        (run_id,),
    ).fetchall()
    problems: list[str] = []
    last_claim: dict[int, int] = {}
    windows: list[Window] = []
    for chunk_no, seq, status, txid in events:
        if status == "running":
            last_claim[chunk_no] = seq
        elif status == "done":
            if any(w.chunk_no == chunk_no for w in windows):
                problems.append(f"chunk {chunk_no} marked done twice")
            windows.append(Window(chunk_no, last_claim.get(chunk_no, 0), seq, txid))
    return windows, problems


def key_cast(example: Example, value: sql.Composable) -> sql.Composed:
    """``value`` (text) as the key's type, compared in the key column's collation."""
    base, _, collation = example.key.ddl.partition(" COLLATE ")
    cast = sql.SQL("CAST({} AS {})").format(value, sql.SQL(base))
    return sql.SQL("{} COLLATE {}").format(cast, sql.SQL(collation)) if collation else cast


def _chunk_of_keys(
    conn: psycopg.Connection[Any], example: Example, run_id: int, keys: list[str]
) -> dict[str, list[int]]:
    """For each key (as text), the done chunks whose (lo, hi] holds it."""
    query = sql.SQL(
        "WITH k AS (SELECT {x} AS k, x FROM unnest(%s::text[]) AS x) "
        "SELECT k.x, c.chunk_no FROM k JOIN ferry.chunks c ON c.run_id = %s "
        "AND c.status = 'done' AND k.k <= {hi} AND (c.lo IS NULL OR k.k > {lo})"
    ).format(
        x=key_cast(example, sql.SQL("x")),
        hi=key_cast(example, sql.SQL("c.hi")),
        lo=key_cast(example, sql.SQL("c.lo")),
    )
    out: dict[str, list[int]] = defaultdict(list)
    for key, chunk_no in conn.execute(query, (keys, run_id)):
        out[key].append(chunk_no)
    return out


def check_forward(
    conn: psycopg.Connection[Any],
    example: Example,
    table: str,
    run_id: int,
    forward_end: int,
    repro: str,
) -> None:
    history = conn.execute(
        "SELECT seq, op, app, txid, key, old, new FROM props.history WHERE tbl = %s "
        "AND seq < %s ORDER BY seq",
        (table, forward_end),
    ).fetchall()
    initial = conn.execute(
        sql.SQL(
            "SELECT coalesce(h.key, t.k::text), CASE WHEN h.key IS NULL THEN t::text "
            "ELSE h.old END FROM {} t "
            "FULL JOIN (SELECT DISTINCT ON (key) key, old FROM props.history WHERE tbl = %s "
            "ORDER BY key, seq) h ON h.key = t.k::text"
        ).format(sql.Identifier(SCHEMA, table)),
        (table,),
    ).fetchall()
    # versions[k]: [(start_seq, end_seq, text or None for absent, writer)]
    versions: dict[str, list[list[Any]]] = {}
    for key, old in initial:
        versions[key] = [[0, None, old, LOAD]]
    ferry_writes: dict[str, list[tuple[int, int, str | None, str | None, str]]] = defaultdict(list)
    app_seqs: dict[str, list[int]] = defaultdict(list)
    for seq, op, app, txid, key, old, new in history:
        vs = versions.setdefault(key, [[0, None, None, LOAD]])
        vs[-1][1] = seq
        vs.append([seq, None, new, app])
        if app.startswith("harness"):
            app_seqs[key].append(seq)
        else:
            ferry_writes[key].append((seq, txid, old, new, op))
    windows, problems = _windows(conn, run_id)
    by_chunk = {w.chunk_no: w for w in windows}
    keys = sorted(versions)
    chunks = _chunk_of_keys(conn, example, run_id, keys)
    # f on every version text there is
    texts = sorted({v[2] for vs in versions.values() for v in vs if v[2] is not None})
    f_of = dict(zip(texts, _f_rows(conn, example, table, texts), strict=True))
    for key in keys:
        vs = versions[key]
        holders = chunks.get(key, [])
        if len(holders) > 1:
            problems.append(f"key {key!r} lies in chunks {holders}")
        if not holders:
            # every key lies between the first and the last key the plan saw (the
            # application inserts inside that range only): some chunk must hold it
            problems.append(f"key {key!r}: no done chunk of the run holds it")
        writes = ferry_writes.get(key, [])
        if len(writes) > 1:
            problems.append(f"key {key!r} written {len(writes)} times by the run")
        window = by_chunk.get(holders[0]) if holders else None
        for _seq_no, txid, old, new, op in writes:
            if op != "UPDATE" or old is None:
                problems.append(f"key {key!r}: the run did {op}")
                continue
            expected, passes = f_of[old]
            if new != expected:
                problems.append(
                    f"key {key!r}: the run wrote\n    {new}\n  over\n    {old}\n"
                    f"  but f gives\n    {expected}"
                )
            if not passes:
                problems.append(f"key {key!r}: written although the rule quarantines it")
            if window is None:
                problems.append(f"key {key!r}: written but no done chunk holds it")
            elif txid != window.txid:
                problems.append(
                    f"key {key!r}: written outside the transaction of its chunk {window.chunk_no}"
                )
        if writes or window is None:
            continue
        # alive during the chunk: from the version current at its claim (and the one before,
        # which an autocommit write may have replaced between its trigger and its commit)
        alive = [
            i
            for i, (start, end, text, _) in enumerate(vs)
            if start < window.done and (end is None or end > window.claimed)
        ]
        if alive and alive[0] > 0:
            alive.insert(0, alive[0] - 1)
        texts_alive = [vs[i][2] for i in alive if vs[i][2] is not None]
        if not texts_alive:
            continue  # the row did not exist while its chunk ran
        if any(f_of[t][0] == t or not f_of[t][1] for t in texts_alive):
            continue
        since = vs[alive[0]][0] if alive else window.claimed
        if any(since < s < window.done for s in app_seqs.get(key, [])):
            continue  # the application wrote it while the chunk ran: its write stands
        problems.append(
            f"key {key!r} (chunk {window.chunk_no}) skipped: it held\n    {texts_alive[-1]}\n"
            f"  and f gives\n    {f_of[texts_alive[-1]][0]}"
        )
    counted = conn.execute(
        "SELECT coalesce(sum(rows_written), 0) FROM ferry.chunks "
        "WHERE run_id = %s AND status = 'done'",
        (run_id,),
    ).fetchone()
    made = sum(len(w) for w in ferry_writes.values())
    if counted is None or int(counted[0]) != made:
        problems.append(
            f"the ledger counts {counted and counted[0]} rows written, the table {made}"
        )
    if problems:
        raise Discrepancy(_report("forward run", problems, repro))


def _report(what: str, problems: list[str], repro: str) -> str:
    shown = "\n".join(problems[:8])
    more = f"\n... and {len(problems) - 8} more" if len(problems) > 8 else ""
    return f"{what}: {len(problems)} discrepancies\n{shown}{more}\n--- reproduction ---\n{repro}"


def check_rollback(
    conn: psycopg.Connection[Any],
    example: Example,
    table: str,
    forward_end: int,
    pre: dict[str, str],
    check_touched: bool,
    repro: str,
) -> None:
    post = snapshot(conn, table)
    writes = conn.execute(
        "SELECT key, old, new FROM props.history WHERE tbl = %s AND seq < %s "
        "AND app NOT LIKE 'harness%%' ORDER BY seq",
        (table, forward_end),
    ).fetchall()
    wrote = {key: (old, new) for key, old, new in writes}
    tt = sql.Identifier(SCHEMA, table)
    dst = [w.dst for w in example.writes]
    parts = [sql.SQL("c.k")] + [
        sql.SQL("{}.{}").format(sql.Identifier("o" if n in dst else "c"), sql.Identifier(n))
        for n in example.column_names
    ]
    same = sql.SQL(" AND ").join(
        sql.SQL("c.{0}::text IS NOT DISTINCT FROM n.{0}::text").format(sql.Identifier(n))
        for n in dst
    )
    restore = sql.SQL(
        "SELECT CAST(ROW({parts}) AS {t})::text, {same} FROM (SELECT (CAST(%s AS {t})).*) c, "
        "(SELECT (CAST(%s AS {t})).*) o, (SELECT (CAST(%s AS {t})).*) n"
    ).format(parts=sql.SQL(", ").join(parts), t=tt, same=same)
    problems: list[str] = []
    for key in sorted(set(pre) | set(post)):
        current = pre.get(key)
        now = post.get(key)
        if key not in wrote or current is None:
            if now != current:
                problems.append(
                    f"key {key!r}: rollback changed a row the run did not write"
                    f"\n    {current}\n  ->\n    {now}"
                )
            continue
        old, new = wrote[key]
        row = conn.execute(restore, (current, old, new)).fetchone()
        assert row is not None
        restored, untouched = row
        if untouched:
            if now != restored:
                problems.append(f"key {key!r}: not restored\n    {now}\n  expected\n    {restored}")
        elif check_touched and now != current:
            problems.append(
                f"key {key!r}: rollback overwrote the application's write\n    {current}\n"
                f"  ->\n    {now}"
            )
    if problems:
        raise Discrepancy(_report("rollback", problems, repro))
