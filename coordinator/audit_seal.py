"""The audit chain's head, sealed outside the database after every command that moved it.

The chain in ``ferry.audit_log`` proves rows were not changed by anyone who cannot also
recompute it, but the ledger's owner can: disable the triggers, edit a row, recompute
every hash after it and move the head. So each command that appended to the log ends by
sealing the head it left (row id and hash) with HMAC-SHA-256 under ``FERRY_AUDIT_KEY`` (or
the file ``FERRY_AUDIT_KEY_FILE``), a secret the database never sees, and appending it to
a file on the coordinator's host (``FERRY_AUDIT_HEADS``), and to ``FERRY_AUDIT_WEBHOOK``
when set. ``ferry audit verify`` then requires every sealed head to still stand in the
chain: a rewrite of any row at or before it changes that row's hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import sys
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coordinator.webhook import _target, redact

if TYPE_CHECKING:
    from coordinator.commands import Context

_HEAD = "SELECT last_id, last_hash FROM ferry.audit_chain WHERE id = 1"


def heads_path(ctx: Context) -> Path:
    """The sealed heads of this ledger: ``FERRY_AUDIT_HEADS``, or a file per database
    (host, port and name; never the password) under the user's state directory."""
    if ctx.settings.audit_heads:
        return Path(ctx.settings.audit_heads)
    url = ctx.settings.sqlalchemy_url()
    where = f"{url.host or ''}:{url.port or ''}/{url.database or ''}"
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return state / "ferry" / f"audit-heads-{hashlib.sha256(where.encode()).hexdigest()[:12]}.jsonl"


def _mac(key: str, last_id: int, last_hash: str) -> str:
    return hmac.new(key.encode(), f"{last_id}|{last_hash}".encode(), hashlib.sha256).hexdigest()


def sealed(ctx: Context) -> list[dict[str, Any]]:
    """The heads sealed so far, oldest first; a line whose seal does not hold is ``forged``."""
    key = ctx.settings.audit_key
    path = heads_path(ctx)
    if not key or not path.exists():
        return []
    heads = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            head = json.loads(line)
            ok = hmac.compare_digest(head["mac"], _mac(key, int(head["id"]), str(head["hash"])))
        except (ValueError, KeyError, TypeError):
            ok, head = False, {}
        heads.append({**head, "line": number, "forged": not ok})
    return heads


def seal(ctx: Context) -> dict[str, Any] | None:
    """Seal the chain's head if it moved since the last seal; never raises (a failure to
    seal is a warning: the command's own work is done)."""
    key = ctx.settings.audit_key
    if not key:
        return None
    try:
        with ctx.db.transaction() as conn:
            row = conn.execute(_HEAD).fetchone()
        if row is None or row["last_id"] is None:
            return None
        previous = sealed(ctx)
        if previous and previous[-1].get("id") == row["last_id"]:
            return None
        head = {
            "id": int(row["last_id"]),
            "hash": str(row["last_hash"]),
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "mac": _mac(key, int(row["last_id"]), str(row["last_hash"])),
        }
        path = heads_path(ctx)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as fh:
            fh.write(json.dumps(head) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        if ctx.settings.audit_webhook:
            _post(ctx.settings.audit_webhook, head)
        return head
    except Exception as exc:  # noqa: BLE001 -- sealing must never turn a command's success into a failure
        with contextlib.suppress(OSError, ValueError):
            print(f"ferry: warning: audit head not sealed: {type(exc).__name__}", file=sys.stderr)
        return None


def _post(url: str, head: dict[str, Any]) -> None:
    target, headers = _target(url)
    body = json.dumps({"source": "ferry", "audit_head": head}).encode()
    request = urllib.request.Request(target, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            response.read(1024)
    except Exception as exc:  # noqa: BLE001 -- the file holds the seal; the webhook is a copy
        print(
            f"ferry: warning: audit webhook {redact(url)} failed: {type(exc).__name__}",
            file=sys.stderr,
        )
