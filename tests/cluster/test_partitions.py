"""Hosts cut off mid-run: the whole link, or only the link to Redis or to PostgreSQL.

A cut is not a kill: the host's processes keep running and its TCP connections hang, so
its worker may come back later with a transaction it thinks is open, a message it thinks
it holds and a lease that expired long ago. Each test cuts the first host while it holds a
chunk and proves the run completes on the other hosts with every row exactly once; then it
heals the cut and proves the stale worker's late attempts change nothing (table and ledger
byte-identical) and that the host takes work again (it completes chunks of a second run).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.cluster.netns import Cluster, Host, HostWorkers
from tests.cluster.proofs import (
    chunks_by_host,
    exactly_once,
    host_of,
    ledger_snapshot,
    wait_held,
)
from tests.helpers import fingerprint, launch, prepare_reference, slow_spec, wait_run

Conn = psycopg.Connection[Any]
ROWS = 15_000
# A cut host's open chunk transaction keeps its locks until PostgreSQL ends it at the
# chunk's idle_in_transaction_session_timeout, which is the lease (workers/settings.py), and
# the sweeper passes over locked chunks (SKIP LOCKED): so a chunk is re-run within about two
# leases and a sweep. Before the two were tied the timeout was a fixed 60 s.
SWEEP_MARGIN_S = 10.0
# Every host may run a chunk at once; no database-time budget (its default of half a
# connection would make the healthy hosts wait in turn and stretch every test).
LIMITS = ("--max-concurrency", "3", "--db-load", "0")


@dataclass
class Outcome:
    run_id: int
    held: list[int]
    cut_at: float  # database clock, epoch seconds
    redone: dict[int, tuple[str, float]]  # held chunk -> (host that finished it, when)
    stuck: list[tuple[Any, ...]]  # chunks left unfinished while the host was cut off


def _now(db: Conn) -> float:
    row = db.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
    assert row is not None
    return float(row[0])


def _log_sizes(hosts: HostWorkers) -> dict[Path, int]:
    return {p: p.stat().st_size for p in hosts.log_dir.glob("*.log")}


def _wait_log(logs: dict[Path, int], pattern: str, timeout: float) -> str | None:
    """The first line written to ``logs`` after their offsets matching ``pattern``, or None."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path, offset in logs.items():
            for line in path.read_bytes()[offset:].decode(errors="replace").split("\n"):
                if regex.search(line):
                    return line
        time.sleep(0.2)
    return None


def _partition(
    db: Conn,
    env: dict[str, str],
    hosts: HostWorkers,
    tmp_path: Path,
    table: str,
    cut: Callable[[], None],
    heal: Callable[[], None],
    host: Host,
) -> Outcome:
    """Run a backfill on every host, ``cut`` ``host`` while it holds a chunk, ``heal`` it after.

    Returns once the run completed, the stale worker's late attempts settled (table and ledger
    unchanged by them) and the healed host completed a chunk of a second run. A run that did
    not complete while the host was cut off is recorded in ``stuck`` and must then complete,
    exactly once, after the heal.
    """
    _, expected = prepare_reference(db, table, ROWS)
    hosts.start_all()
    # Each chunk sleeps 0.6 s in its transaction and the host is cut within 0.2 s of a claim
    # (wait_held): the cut always lands mid-chunk.
    path = slow_spec(tmp_path, table, 500, 0.6)
    run_id = launch(env, f"{path}:b", *LIMITS)
    held = wait_held(db, run_id, host.name)
    at_cut = _log_sizes(hosts)
    cut()
    cut_at = _now(db)
    stuck: list[tuple[Any, ...]] = []
    try:
        wait_run(db, run_id, timeout=75)
    except AssertionError:
        stuck = db.execute(
            "SELECT chunk_no, status, worker, attempts, error FROM ferry.chunks "
            "WHERE run_id = %s AND status <> 'done' ORDER BY chunk_no",
            (run_id,),
        ).fetchall()
        heal()  # once: a second `ip route del` of the same blackhole fails
        wait_run(db, run_id, timeout=60)
    exactly_once(db, table, run_id, expected, ROWS)
    rows = db.execute(
        "SELECT chunk_no, worker, extract(epoch FROM finished_at)::float8 FROM ferry.chunks "
        "WHERE run_id = %s AND chunk_no = ANY(%s)",
        (run_id, held),
    ).fetchall()
    redone = {int(c): (host_of(w), float(t)) for c, w, t in rows}
    table_before, ledger_before = fingerprint(db, table), ledger_snapshot(db, run_id)

    if not stuck:  # else healed above already
        heal()
        # The stale worker's late attempt on each chunk it held that another host finished:
        # its commit fails (PostgreSQL ended the transaction) or it finds the chunk done. It
        # may end before the heal: a cut of the host's outgoing packets to PostgreSQL still
        # lets the server's goodbye in.
        taken = [c for c, (h, _) in redone.items() if h != host.name]
        for chunk_no in taken:
            late = _wait_log(
                {p: n for p, n in at_cut.items() if p.name.startswith(f"{host.name}-")},
                rf"[\[ ]run {run_id} chunk {chunk_no}\].*(succeeded|retry|raised|failed)",
                timeout=45,
            )
            assert late is not None, f"no late attempt on chunk {chunk_no}: {hosts.logs()[-3000:]}"
    hosts.wait_answering(host, timeout=60)
    hosts.wait_idle(host, timeout=90)  # anything else the healed worker still had in hand
    assert fingerprint(db, table) == table_before
    assert ledger_snapshot(db, run_id) == ledger_before
    _rejoins(db, env, tmp_path, host.name, f"{table}_again")
    return Outcome(run_id, held, cut_at, redone, stuck)


def _rejoins(db: Conn, env: dict[str, str], tmp_path: Path, host: str, table: str) -> None:
    """A second run on every host: the healed one completes at least one of its chunks."""
    _, expected = prepare_reference(db, table, 6_000)
    path = slow_spec(tmp_path, table, 250, 0.2)
    run_id = launch(env, f"{path}:b", *LIMITS)
    assert wait_run(db, run_id, timeout=60) == "completed"
    exactly_once(db, table, run_id, expected, 6_000)
    assert chunks_by_host(db, run_id).get(host, 0) >= 1, chunks_by_host(db, run_id)


def test_host_cut_off_mid_run(
    db: Conn, own_env: dict[str, str], network: Cluster, hosts: HostWorkers, tmp_path: Path
) -> None:
    host = network.hosts[0]
    out = _partition(
        db,
        own_env,
        hosts,
        tmp_path,
        "cutoff",
        lambda: network.cut_link(host),
        lambda: network.restore_link(host),
        host,
    )
    assert not out.stuck, out  # the other hosts finished the run while this one was away
    lease = float(own_env["FERRY_LEASE_SECONDS"])
    for chunk_no, (by, at) in out.redone.items():
        assert by != host.name, out  # the cut host could not have finished it
        # Re-run by another host only once its lease expired, and at the latest once
        # PostgreSQL ended the cut host's open chunk transaction (whose locks the sweeper
        # skips), a lease later: see SWEEP_MARGIN_S.
        assert out.cut_at < at - lease + 0.5, (chunk_no, at - out.cut_at)
        assert at - out.cut_at < 2 * lease + SWEEP_MARGIN_S, (chunk_no, at - out.cut_at)


def test_host_cut_off_from_redis_only(
    db: Conn, own_env: dict[str, str], network: Cluster, hosts: HostWorkers, tmp_path: Path
) -> None:
    host = network.hosts[0]
    out = _partition(
        db,
        own_env,
        hosts,
        tmp_path,
        "noredis",
        lambda: network.cut_service(host, "redis"),
        lambda: network.restore_service(host, "redis"),
        host,
    )
    assert not out.stuck, out
    # Without Redis it could finish what it held (PostgreSQL answers) but start nothing new:
    # no task reaches it and the gate's slots live in Redis.
    after = db.execute(
        "SELECT chunk_no FROM ferry.chunks WHERE run_id = %s AND worker LIKE %s "
        "AND finished_at > to_timestamp(%s)",
        (out.run_id, f"%@{host.name}:%", out.cut_at),
    ).fetchall()
    assert {int(r[0]) for r in after} <= set(out.held), (after, out)


def test_host_cut_off_from_postgres_only(
    db: Conn, own_env: dict[str, str], network: Cluster, hosts: HostWorkers, tmp_path: Path
) -> None:
    host = network.hosts[0]
    out = _partition(
        db,
        own_env,
        hosts,
        tmp_path,
        "nopg",
        lambda: network.cut_service(host, "postgres"),
        lambda: network.restore_service(host, "postgres"),
        host,
    )
    for _, (by, _) in out.redone.items():
        assert by != host.name, out
    if out.stuck:
        # Exactly once held above; liveness did not: the cut host still reaches Redis, so it
        # may keep taking the chunk's task. Since a worker that cannot connect hands the
        # chunk back and rests (workers/tasks.py), the other hosts take it; reported, not
        # hidden, if it happens again.
        pytest.xfail(f"run finished only after the heal; left while cut off: {out.stuck}")
