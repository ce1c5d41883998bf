"""Names bound to a ledger's identity: Redis keys, task ids, queues (no services).

Run ids start at 1 in every ledger, so a name that carries only the run id is shared by
every database on one Redis. Every name Ferry builds outside the database must differ
between two ledgers for the same run, and must refuse anything but a real identity.
"""

from __future__ import annotations

import pytest

from workers import identity
from workers.dispatch import chunk_task_id, rollback_task_id
from workers.progress import counters_key, errors_key, heartbeat_key
from workers.settings import Settings
from workers.throttle.redis import bucket_key, line_keys, slots_key

A, B = "0123456789ab", "ba9876543210"

BUILDERS = {
    "counters": lambda ledger: [counters_key(ledger, 1)],
    "errors": lambda ledger: [errors_key(ledger, 1)],
    "heartbeat": lambda ledger: [heartbeat_key(ledger, "host:1")],
    "slots": lambda ledger: [slots_key(ledger, "run:1")],
    "bucket": lambda ledger: [bucket_key(ledger, "run:1:db-time")],
    "line": lambda ledger: line_keys(ledger, "run:1"),
    "chunk task": lambda ledger: [chunk_task_id(ledger, 1, 0)],
    "rollback task": lambda ledger: [rollback_task_id(ledger, 1, 0)],
    "queue": lambda ledger: [identity.default_queue(ledger)],
}


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_two_ledgers_never_share_a_name_for_run_1(kind: str) -> None:
    names_a, names_b = BUILDERS[kind](A), BUILDERS[kind](B)
    assert not set(names_a) & set(names_b)
    assert all(A in name for name in names_a) and all(B in name for name in names_b)


def test_the_line_keys_share_one_cluster_slot_of_their_own_ledger() -> None:
    line, due = line_keys(A, "run:1")
    tag = line[line.index("{") : line.index("}") + 1]
    assert tag == f"{{{A}:run:1}}" and due.count(tag) == 1


def test_task_ids_stay_readable_for_flower() -> None:
    assert chunk_task_id(A, 12, 3) == f"ferry:{A}:12:3"
    assert rollback_task_id(A, 12, 3) == f"ferry:{A}:12:3:rollback"
    assert identity.default_queue(A) == f"ferry.{A}"


@pytest.mark.parametrize(
    "bad", ["", "0123456789a", "0123456789abc", "0123456789AB", "run:1\\x", "ab:cd*efgh12", "*"]
)
def test_anything_but_an_identity_is_refused_in_every_name(bad: str) -> None:
    for kind, build in BUILDERS.items():
        with pytest.raises(ValueError, match="12 lowercase hex digits"):
            build(bad)
            pytest.fail(f"{kind} accepted {bad!r}")


def test_the_queue_is_the_ledgers_own_unless_ferry_queue_is_set() -> None:
    assert Settings.from_env({}).queue is None
    assert Settings.from_env({}).queue_for(A) == f"ferry.{A}"
    shared = Settings.from_env({"FERRY_QUEUE": "jobs"})
    assert shared.queue_for(A) == shared.queue_for(B) == "jobs"
