"""One example of the differential harness, end to end.

Load the example's table (a trigger records every row version in ``props.history``, a trigger
on ``ferry.chunks`` every chunk transition, in one sequence), launch the run through the
coordinator's Python API, write as the application meanwhile, maybe SIGKILL a worker, wait,
hand the record to the oracle (``oracle.py``), let the application correct some rows, roll
back, and hand it to the oracle again.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from coordinator import commands
from tests.conftest import WorkerPool
from tests.properties.backfill import SCHEMA, backfill_source
from tests.properties.oracle import LOAD, Discrepancy, check_forward, check_rollback, snapshot
from tests.properties.strategies import Example
from workers.limits import Limits

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
