"""A ledger's identity: what binds runs, Redis keys, tasks and the queue to one database.

Run ids are only unique inside one ledger: every database starts at run 1. Everything
Ferry keeps outside the database is therefore named by the ledger's identity too (a random
12-hex-digit id made by ``ferry init``, table ``ferry.identity``): Redis keys
(``ferry:<id>:run:1:counters``), task ids (``ferry:<id>:1:0``) and, unless ``FERRY_QUEUE``
is set, the queue (``ferry.<id>``). Two databases sharing one Redis then never meet.

A copy of the ledger (a dump restored beside the original, pg_upgrade, a clone) carries the
same id; the id is bound to where it was made (the cluster's system identifier and the
database's oid), so a copy is told apart and refused until ``ferry init`` gives it an
identity of its own. A promoted physical standby is the same cluster: same identity.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

import psycopg
from psycopg.rows import dict_row

from migrations.errors import CheckFailed, NotFound
from workers.queries import queries

ID = re.compile(r"^[0-9a-f]{12}$")
QUEUE_PREFIX = "ferry."


def q(name: str) -> str:
    return queries()[name]


def default_queue(identity: str) -> str:
    """The queue a ledger's tasks go to when ``FERRY_QUEUE`` is not set."""
    return QUEUE_PREFIX + check(identity)


def check(identity: str) -> str:
    """An identity as made by ``ferry init``; anything else is refused, never put in a key."""
    if not isinstance(identity, str) or not ID.fullmatch(identity):
        raise ValueError("a ledger identity is 12 lowercase hex digits")
    return identity


def read(conn: psycopg.Connection[Any]) -> str:
    """The identity of the ledger ``conn`` reaches; CheckFailed on a copy not yet re-keyed."""
    try:
        with conn.transaction():
            row = conn.cursor(row_factory=dict_row).execute(q("get_identity")).fetchone()
    except psycopg.errors.UndefinedTable:
        raise NotFound("the ledger has no identity: run `ferry init`") from None
    if row is None:
        raise NotFound("the ledger has no identity: run `ferry init`")
    if not row["at_home"]:
        raise CheckFailed(
            "this ledger was copied from another database (a restored backup, pg_upgrade or "
            "a clone): run `ferry init` to give it an identity of its own"
        )
    return check(row["id"])


def rekey_if_copied(conn: psycopg.Connection[Any]) -> tuple[str, str] | None:
    """Give a copied ledger an identity of its own (part of ``ferry init``): (old, new), or
    None when the ledger is where it was made."""
    cur = conn.cursor(row_factory=dict_row)
    row = cur.execute(q("get_identity")).fetchone()
    if row is None or row["at_home"]:
        return None
    moved = cur.execute(q("rekey_identity"), {"new": secrets.token_hex(6)}).fetchone()
    return None if moved is None else (str(moved["old_id"]), str(moved["new_id"]))
