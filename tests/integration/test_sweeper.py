"""The lease sweeper (workers.sweeper), judged by assertions on one sweep at a time.

The sweeps are this test's calls only: the ledger is in a database of the module's own
(the session's workers sweep every ledger of the session's database), no worker consumes
the test's queue, and the queue is the real Redis list the chunks' tasks go to.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from psycopg import sql

from tests.conftest import SERVER, ferry
from tests.helpers import launch, make_numbers_table, slow_spec
from workers.celery_app import make_app
from workers.db import Database
from workers.dispatch import Dispatcher
from workers.ledger import Ledger
from workers.settings import Settings
from workers.sweeper import sweep


@pytest.fixture(scope="module")
def private_url(env: dict[str, str]) -> Iterator[str]:
    """A database with a ledger of its own, which no worker of the session sweeps."""
    name = f"ferry_sweep_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(SERVER, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = SERVER.rsplit("/", 1)[0] + "/" + name
    ferry("init", env={**env, "FERRY_DATABASE_URL": url}, check=True)
    yield url
    with psycopg.connect(SERVER, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def private(
    own_env: dict[str, str], private_url: str
) -> Iterator[tuple[dict[str, str], psycopg.Connection[Any]]]:
    """The test's environment on the private ledger, and a connection to it."""
    with psycopg.connect(private_url, autocommit=True) as conn:
        yield {**own_env, "FERRY_DATABASE_URL": private_url}, conn


def _queued(client: redis.Redis, queue: str) -> list[tuple[str, list[Any]]]:
    """(task name, arguments) of every message waiting on ``queue``, oldest first."""
    found = []
    for raw in reversed(client.lrange(queue, 0, -1)):  # kombu pushes on the left
        message = json.loads(raw)
        args = json.loads(base64.b64decode(message["body"]))[0]
        found.append((message["headers"]["task"], args))
    return found


def test_one_sweep_requeues_exactly_the_chunks_whose_worker_is_gone(
    private: tuple[dict[str, str], psycopg.Connection[Any]], tmp_path: Path
) -> None:
    """Of three claimed chunks, one whose lease expired with nobody at it, one whose lease
    runs on, and one whose lease expired but whose transaction is alive (its row locked, as
    a live chunk transaction holds it): one sweep sets the first pending and sends its task,
    and leaves the other two alone; once the third's transaction ends, the next sweep
    re-queues it too."""
    own_env, db = private
    database_url = own_env["FERRY_DATABASE_URL"]
    settings = Settings.from_env(own_env)
    ledger = Ledger(Database(settings))
    dispatcher = Dispatcher(
        make_app(settings), settings.queue_for(ledger.identity()), ledger.identity()
    )
    client = redis.Redis.from_url(settings.redis_url)
    make_numbers_table(db, "swept", 400)
    run_id = launch(own_env, f"{slow_spec(tmp_path, 'swept', 100)}:s")
    with psycopg.connect(database_url) as conn:
        for chunk_no, lease in ((0, 0.2), (1, 60.0), (2, 0.2)):
            assert ledger.claim(conn, run_id, chunk_no, "pytest:gone", lease, 10_000, 500)
    live = psycopg.connect(database_url)
    live.execute(
        "SELECT 1 FROM ferry.chunks WHERE run_id = %s AND chunk_no = 2 FOR NO KEY UPDATE",
        (run_id,),
    )
    queued = _queued(client, settings.queue)
    time.sleep(0.5)  # leases of chunks 0 and 2 end
    try:
        assert sweep(ledger, dispatcher) == [(run_id, 0, settings.queue)]
        assert sweep(ledger, dispatcher) == []  # and once only
    finally:
        live.rollback()
        live.close()
    rows = db.execute(
        "SELECT chunk_no, status, worker, lease_expires_at IS NULL, error FROM ferry.chunks"
        " WHERE run_id = %s AND chunk_no < 3 ORDER BY chunk_no",
        (run_id,),
    ).fetchall()
    assert rows[0] == (0, "pending", None, True, "lease expired: worker lost")
    assert [r[1] for r in rows[1:]] == ["running", "running"]
    sent = _queued(client, settings.queue)[len(queued) :]
    assert len(sent) == 1 and sent[0][0] == "ferry.chunk" and sent[0][1][-2:] == [run_id, 0]
    assert sweep(ledger, dispatcher) == [(run_id, 2, settings.queue)]
    sent = _queued(client, settings.queue)[len(queued) :]
    assert [args[-2:] for _, args in sent] == [[run_id, 0], [run_id, 2]]
    ferry("cancel", str(run_id), env=own_env, check=True)


@pytest.mark.parametrize("status", ["paused", "cancelled"])
def test_a_stopped_run_is_not_swept(
    status: str, private: tuple[dict[str, str], psycopg.Connection[Any]], tmp_path: Path
) -> None:
    """An expired lease of a paused or cancelled run is not re-queued: `ferry resume` (or
    nothing) sends its chunks, not the sweeper."""
    own_env, db = private
    database_url = own_env["FERRY_DATABASE_URL"]
    settings = Settings.from_env(own_env)
    ledger = Ledger(Database(settings))
    dispatcher = Dispatcher(
        make_app(settings), settings.queue_for(ledger.identity()), ledger.identity()
    )
    make_numbers_table(db, f"unswept_{status}", 200)
    run_id = launch(own_env, f"{slow_spec(tmp_path, f'unswept_{status}', 100)}:s")
    with psycopg.connect(database_url) as conn:
        assert ledger.claim(conn, run_id, 0, "pytest:gone", 0.1, 10_000, 500)
    verb = {"paused": "pause", "cancelled": "cancel"}[status]
    ferry(verb, str(run_id), env=own_env, check=True)
    time.sleep(0.3)
    assert [e for e in sweep(ledger, dispatcher) if e[0] == run_id] == []
    if status == "paused":
        ferry("cancel", str(run_id), env=own_env, check=True)
