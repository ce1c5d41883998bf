"""One example of the differential harness, end to end, and its oracle.

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

import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from coordinator import commands
from tests.conftest import WorkerPool
from tests.properties.strategies import Example, Write
from workers.limits import Limits

SCHEMA = "props"
SESSION_SETTINGS = (
    "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; SET IntervalStyle = 'postgres';"
    " SET extra_float_digits = 1; SET bytea_output = 'hex'"
)

HISTORY_SQL = """
CREATE SEQUENCE IF NOT EXISTS props.seq;
CREATE TABLE IF NOT EXISTS props.history (
    seq bigint PRIMARY KEY DEFAULT nextval('props.seq'),
    tbl text NOT NULL, op text NOT NULL, app text NOT NULL, txid bigint NOT NULL,
    key text NOT NULL, old text, new text);
CREATE INDEX IF NOT EXISTS history_tbl ON props.history (tbl, key, seq);
CREATE TABLE IF NOT EXISTS props.chunk_log (
    seq bigint PRIMARY KEY DEFAULT nextval('props.seq'),
    run_id bigint NOT NULL, chunk_no integer NOT NULL, status text NOT NULL,
    txid bigint NOT NULL);
CREATE OR REPLACE FUNCTION props.log_row() RETURNS trigger LANGUAGE plpgsql
SET TimeZone = 'UTC' SET DateStyle = 'ISO, MDY' SET IntervalStyle = 'postgres'
SET extra_float_digits = 1 SET bytea_output = 'hex' AS $$
BEGIN
  INSERT INTO props.history (tbl, op, app, txid, key, old, new)
  VALUES (TG_TABLE_NAME, TG_OP, current_setting('application_name'), txid_current(),
          CASE WHEN TG_OP = 'DELETE' THEN OLD.k::text ELSE NEW.k::text END,
          CASE WHEN TG_OP <> 'INSERT' THEN OLD::text END,
          CASE WHEN TG_OP <> 'DELETE' THEN NEW::text END);
  RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION props.log_chunk() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status THEN
    INSERT INTO props.chunk_log (run_id, chunk_no, status, txid)
    VALUES (NEW.run_id, NEW.chunk_no, NEW.status, txid_current());
  END IF;
  RETURN NULL;
END $$;
DO $$ BEGIN
  CREATE TRIGGER props_log_chunk AFTER INSERT OR UPDATE ON ferry.chunks
  FOR EACH ROW EXECUTE FUNCTION props.log_chunk();
EXCEPTION WHEN duplicate_object THEN NULL; END $$;
"""

APP = "harness-app"
LOAD = "harness-load"
SUFFIX_SQL = "E'\\u00fc\\t\\\\'"  # ü, a tab and a backslash
SUFFIX_PY = "\u00fc\t\\"


class Discrepancy(AssertionError):
    """The oracle's verdict: what broke, on which rows, and how to reproduce it."""


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


# -- running one example --------------------------------------------------------------------
@dataclass
class Outcome:
    run_id: int
    status: str
    table: str
    notes: list[str] = field(default_factory=list)


def connect(url: str, app: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(url, autocommit=True, application_name=app)
    conn.execute(SESSION_SETTINGS)
    return conn


def load(conn: psycopg.Connection[Any], example: Example, table: str) -> list[str]:
    """Create and fill the table, set spare keys aside; the spare keys (inside the key range)."""
    t = sql.Identifier(SCHEMA, table)
    cols = [sql.SQL("k {} PRIMARY KEY").format(sql.SQL(example.key.ddl))]
    cols += [
        sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.family.ddl))
        for c in example.columns
    ]
    conn.execute(HISTORY_SQL)
    conn.execute(sql.SQL("CREATE TABLE {} ({})").format(t, sql.SQL(", ").join(cols)))
    names = [sql.Identifier("k")] + [sql.Identifier(c) for c in example.column_names]
    types = [sql.SQL(example.key.ddl.split(" COLLATE")[0])] + [
        sql.SQL(c.family.ddl) for c in example.columns
    ]
    insert = sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT DO NOTHING").format(
        t,
        sql.SQL(", ").join(names),
        sql.SQL(", ").join(sql.SQL("CAST(%s AS {})").format(ty) for ty in types),
    )
    with conn.cursor() as cur:
        cur.executemany(
            insert, [(k, *row) for k, row in zip(example.key.values, example.rows, strict=False)]
        )
    spare: list[str] = []
    if example.spare:
        ordered = [
            # t.k, not k: a bare name in ORDER BY is the output column, the key as text
            r[0]
            for r in conn.execute(sql.SQL("SELECT t.k::text FROM {} AS t ORDER BY t.k").format(t))
        ]
        inner = ordered[1:-1]
        random.Random(len(ordered)).shuffle(inner)
        spare = inner[: example.spare]
        if spare:
            conn.execute(sql.SQL("DELETE FROM {} WHERE k::text = ANY(%s)").format(t), (spare,))
    conn.execute(sql.SQL("ANALYZE {}").format(t))
    conn.execute(
        sql.SQL(
            "CREATE TRIGGER log AFTER INSERT OR UPDATE OR DELETE ON {} "
            "FOR EACH ROW EXECUTE FUNCTION props.log_row()"
        ).format(t)
    )
    return spare


def snapshot(conn: psycopg.Connection[Any], table: str) -> dict[str, str]:
    t = sql.Identifier(SCHEMA, table)
    return {
        r[0]: r[1] for r in conn.execute(sql.SQL("SELECT t.k::text, t::text FROM {} t").format(t))
    }


def _apply_ops(
    url: str,
    example: Example,
    table: str,
    spare: list[str],
    ops: Any,
    stop: threading.Event,
    done: list[str],
) -> list[str]:
    """Perform the application's writes, each in its own transaction, noting each in
    ``done``."""
    t = sql.Identifier(SCHEMA, table)
    key_type = sql.SQL(example.key.ddl.split(" COLLATE")[0])
    types = {c.name: c.family.ddl for c in example.columns}
    with connect(url, APP) as conn:
        for op in ops:
            if stop.is_set():
                break
            time.sleep(op.pause_ms / 1000)
            if op.kind == "update":
                key = example.key.values[op.row]
                conn.execute(
                    sql.SQL("UPDATE {} SET {} = CAST(%s AS {}) WHERE k = CAST(%s AS {})").format(
                        t, sql.Identifier(op.column), sql.SQL(types[op.column]), key_type
                    ),
                    (op.value, key),
                )
                done.append(f"update k={key!r} {op.column}={op.value!r}")
            elif op.kind == "delete":
                key = example.key.values[op.row]
                conn.execute(
                    sql.SQL("DELETE FROM {} WHERE k = CAST(%s AS {})").format(t, key_type), (key,)
                )
                done.append(f"delete k={key!r}")
            elif op.kind == "insert" and op.row < len(spare):
                key = spare[op.row]
                names = [sql.Identifier("k")] + [sql.Identifier(c) for c in example.column_names]
                casts = [key_type] + [sql.SQL(types[c]) for c in example.column_names]
                conn.execute(
                    sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT DO NOTHING").format(
                        t,
                        sql.SQL(", ").join(names),
                        sql.SQL(", ").join(sql.SQL("CAST(%s AS {})").format(c) for c in casts),
                    ),
                    (key, *op.values),
                )
                done.append(f"insert k={key!r} {op.values!r}")
    return done


restarting: list[threading.Thread] = []


def kill_one(pool: WorkerPool) -> None:
    """SIGKILL worker p1 mid-run and start a fresh one in the background: the run goes on
    with the other worker, the sweeper re-queues the killed one's chunk when its lease ends
    (a worker takes seconds to start on a loaded machine; the example does not wait)."""
    for thread in restarting:
        thread.join()
    restarting.clear()
    time.sleep(0.05)
    pool.kill("p1")
    thread = threading.Thread(target=pool.start, args=("p1",), daemon=True)
    thread.start()
    restarting.append(thread)


def wait(ctx: commands.Context, run_id: int, timeout: float, final: Callable[[str], bool]) -> str:
    poll = commands.poller(ctx, run_id)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, _, status, _ = poll()
        if final(status):
            return status
        time.sleep(0.05)
    raise Discrepancy(f"run {run_id} did not finish in {timeout:.0f}s (last status {status})")


def run_example(
    example: Example,
    *,
    url: str,
    ctx: commands.Context,
    pool: WorkerPool,
    spec_dir: Path,
    table: str,
    check_touched_rollback: bool,
) -> Outcome:
    """Load, launch, write as the application meanwhile, maybe kill a worker, check, roll
    back, check again. Raises Discrepancy with a reproduction on any violation."""
    with connect(url, LOAD) as conn:
        spare = load(conn, example, table)
        before = snapshot(conn, table)
        path = spec_dir / f"{table}.py"
        path.write_text(backfill_source(example, table))
        try:
            plan = commands.launch(ctx, f"{path}:b", limits=Limits(db_load=None))
        except Exception as exc:  # a launch that refuses a valid backfill is a finding too
            repro = _reproduction(example, table, path, before, [])
            raise Discrepancy(f"launch failed: {type(exc).__name__}: {exc}\n{repro}") from exc
        run_id = plan.run_id
        assert run_id is not None
        stop = threading.Event()
        done_ops: list[str] = []
        failed: list[BaseException] = []

        def application() -> None:
            try:
                _apply_ops(url, example, table, spare, example.ops, stop, done_ops)
            except BaseException as exc:  # raised again in the test's thread
                failed.append(exc)

        app = threading.Thread(target=application, daemon=True)
        app.start()
        if example.kill:
            kill_one(pool)
        status = wait(ctx, run_id, 120, lambda s: s not in ("running", "planning"))
        stop.set()
        app.join(timeout=30)
        if failed:
            raise failed[0]
        outcome = Outcome(run_id, status, table)
        repro = _reproduction(example, table, path, before, done_ops)
        unfinished = conn.execute(
            "SELECT count(*) FROM ferry.chunks WHERE run_id = %s AND status <> 'done'", (run_id,)
        ).fetchone()
        # rows quarantined by a skip rule end a run "completed_with_errors", by design
        if status not in ("completed", "completed_with_errors") or (unfinished and unfinished[0]):
            errors = conn.execute(
                "SELECT chunk_no, status, attempts, error FROM ferry.chunks "
                "WHERE run_id = %s AND status <> 'done' ORDER BY chunk_no",
                (run_id,),
            ).fetchall()
            raise Discrepancy(f"run ended {status}, chunks {errors}\n{repro}")
        forward_end = _seq(conn)
        check_forward(conn, example, table, run_id, forward_end, repro)
        # after the run: the application corrects some rows, then the run is rolled back
        post = _apply_ops(url, example, table, spare, example.post_ops, threading.Event(), [])
        repro += "\nafter the run, the application: " + ("; ".join(post) or "nothing")
        pre_rollback = snapshot(conn, table)
        commands.rollback(ctx, run_id)
        status = wait(ctx, run_id, 120, lambda s: s not in ("rolling_back", "running"))
        if status != "rolled_back":
            raise Discrepancy(f"rollback ended {status}\n{repro}")
        check_rollback(
            conn, example, table, forward_end, pre_rollback, check_touched_rollback, repro
        )
    return outcome


def _seq(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT nextval('props.seq')").fetchone()
    assert row is not None
    return int(row[0])


def _reproduction(
    example: Example, table: str, path: Path, before: dict[str, str], ops: list[str]
) -> str:
    ddl = ", ".join(f"{c.name} {c.family.ddl}" for c in example.columns)
    return (
        f"table props.{table} (k {example.key.ddl} PRIMARY KEY, {ddl}); key shape "
        f"{example.key.shape}; {len(before)} rows; chunk_size {example.chunk_size}; "
        f"mode {example.mode}; writes {[(w.dst, w.how) for w in example.writes]}; "
        f"drop_rows {example.drop_rows}; rule {example.rule}; kill {example.kill}\n"
        f"backfill:\n{path.read_text()}\napplication during the run: {'; '.join(ops) or 'none'}"
    )


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
