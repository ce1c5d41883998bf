"""Encryption at rest of pre-images and raw quarantined values (FERRY_ENCRYPTION_KEY).

Both are copies of patient data kept for rollback and review; a pre-image table
dumped or copied elsewhere must reveal nothing. PostgreSQL encrypts them itself
(pgcrypto, ledger migration 7) inside the chunk's one statement, so values never
travel to a worker to be encrypted.

The key never appears in SQL text (so neither in ``pg_stat_activity`` nor in the
server log of a failed statement): every connection Ferry opens carries it as the
session setting ``ferry.encryption_key`` (a startup option, ``connect_options``),
and statements read it through ``ferry.encryption_key(fingerprint)``, which
refuses a connection without the key or with another key than the run's. The run
records only the key's fingerprint (``encryption_fingerprint``), in its spec.
Values are sealed as their text form and cast back to the column's type on
restore: the text round trip of PostgreSQL's types is exact (floats included,
``extra_float_digits`` 1), so the restored bytes are the original bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from typing import Any

from psycopg import sql

from migrations.errors import BadInput

SETTING = "ferry.encryption_key"
MIN_KEY_BYTES = 16


def check_key(raw: str | None) -> str | None:
    """The FERRY_ENCRYPTION_KEY as given, once it is base64 of at least 16 random bytes."""
    if not raw:
        return None
    try:
        decoded = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        hint = "e.g. `openssl rand -base64 32`"
        raise BadInput(f"FERRY_ENCRYPTION_KEY must be base64 ({hint})") from None
    if len(decoded) < MIN_KEY_BYTES:
        raise BadInput(f"FERRY_ENCRYPTION_KEY must hold at least {MIN_KEY_BYTES} bytes")
    return raw


def fingerprint(key: str) -> str:
    """What a run stores of its key: enough to refuse a different key, nothing to decrypt."""
    return hashlib.sha256(f"ferry-key|{key}".encode()).hexdigest()[:16]


def connect_options(key: str | None, given: str | None = None) -> dict[str, str]:
    """libpq startup options giving every connection the key as a session setting.

    Base64 holds no space nor backslash, so the option needs no escaping; the
    startup packet is not logged by PostgreSQL, and a session setting is visible
    to that session only. ``given``: the URL's own ``options``, kept in front.
    """
    if not key:
        return {}
    option = f"-c {SETTING}={key}"
    return {"options": f"{given} {option}" if given else option}


def run_fingerprint(extra: Mapping[str, Any]) -> str | None:
    """The fingerprint of the key a run's pre-images are encrypted with, or None."""
    value = extra.get("encryption_fingerprint")
    return str(value) if value else None


def key_expr(fp: str) -> sql.Composable:
    """The key, checked against the run's fingerprint; used once per statement."""
    return sql.SQL("(SELECT ferry.encryption_key({fp}) AS k)").format(fp=sql.Literal(fp))


def seal(value: sql.Composable, key: sql.Composable) -> sql.Composable:
    return sql.SQL("ferry.seal(({v})::text, {k})").format(v=value, k=key)


def unseal(value: sql.Composable, key: sql.Composable, type_: sql.Composable) -> sql.Composable:
    return sql.SQL("CAST(ferry.unseal({v}, {k}) AS {t})").format(v=value, k=key, t=type_)


def seal_text(value: sql.Composable, key: sql.Composable) -> sql.Composable:
    """A sealed value as text (base64), for the text column of ``ferry.quarantine_values``."""
    return sql.SQL("encode(ferry.seal({v}, {k}), 'base64')").format(v=value, k=key)


def unmasked_rows() -> sql.SQL:
    """Quarantined rows with their raw values, decrypted for runs that encrypted them.

    A run without a fingerprint stored its values in clear; one with a fingerprint needs
    this connection's key to be that run's key (``ferry.encryption_key`` refuses others).
    """
    return sql.SQL(
        "SELECT q.chunk_no, q.row_key, q.field, q.rule_type, q.message, "
        "CASE WHEN r.spec->'extra'->>'encryption_fingerprint' IS NULL THEN v.value "
        "ELSE ferry.unseal(decode(v.value, 'base64'), "
        "ferry.encryption_key(r.spec->'extra'->>'encryption_fingerprint')) END AS value "
        "FROM ferry.quarantine q JOIN ferry.runs r ON r.id = q.run_id "
        "LEFT JOIN ferry.quarantine_values v ON v.quarantine_id = q.id "
        "WHERE q.run_id = %(run_id)s ORDER BY q.id"
    )
