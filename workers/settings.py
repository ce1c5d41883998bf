"""Settings: read from the environment once, at start-up, into one frozen object.

Nothing else in Ferry reads ``os.environ``; commands and workers receive a
Settings and pass it on (the opposite of reading variables at import time).
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from migrations.classification import parse_setting as parse_phi_setting
from migrations.errors import BadInput
from workers.encryption import check_key

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
SYNCHRONOUS_COMMIT = ("off", "local", "remote_write", "on", "remote_apply")


@dataclass(frozen=True, kw_only=True)
class Settings:
    database_url: str | None
    redis_url: str = DEFAULT_REDIS_URL
    actor: str = "unknown"
    queue: str = "ferry"
    lease_seconds: float = 30.0
    sweep_interval: float = 5.0
    stall_seconds: float = 90.0
    lock_timeout_ms: int = 500
    statement_timeout_ms: int = 30_000
    # A chunk transaction left idle (its worker cut off mid-chunk) ends after this, freeing its
    # locks so the sweeper can re-queue the chunk; None: the lease. FERRY_IDLE_TIMEOUT_MS.
    idle_timeout_ms: int | None = None
    # synchronous_commit of chunk transactions (FERRY_SYNCHRONOUS_COMMIT). "off" is safe: a
    # chunk's rows, pre-images and done mark commit together, so a commit lost in a server
    # crash is a chunk still pending in the recovered ledger, which runs again, and any later
    # durable commit (the application's, the run's end) flushes it first. It spares each chunk
    # its WAL flush wait (about 5 % of the SQL path's throughput on the 2-core bench machine),
    # but writes less durable than the application's are the DBA's to ask for: "on" stays.
    synchronous_commit: str = "on"
    max_attempts: int = 6
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    visibility_timeout: int = 900
    mask_key: str | None = None
    # The audit chain's head is sealed under this key outside the database (coordinator.audit_seal)
    audit_key: str | None = None
    audit_heads: str | None = None
    audit_webhook: str | None = None
    worker_memory_mb: int | None = None
    phi_columns: tuple[str, ...] = ()  # FERRY_PHI_COLUMNS, see migrations.classification
    encryption_key: str | None = field(default=None, repr=False)  # FERRY_ENCRYPTION_KEY

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {
            "database_url": env.get("FERRY_DATABASE_URL") or None,
            "redis_url": env.get("FERRY_REDIS_URL") or DEFAULT_REDIS_URL,
            "actor": env.get("FERRY_ACTOR") or _os_user(),
            "queue": env.get("FERRY_QUEUE") or "ferry",
            "mask_key": env.get("FERRY_MASK_KEY") or None,
            "audit_key": _secret(env, "FERRY_AUDIT_KEY"),
            "audit_heads": env.get("FERRY_AUDIT_HEADS") or None,
            "audit_webhook": env.get("FERRY_AUDIT_WEBHOOK") or None,
            "phi_columns": parse_phi_setting(env.get("FERRY_PHI_COLUMNS")),
            "encryption_key": check_key(env.get("FERRY_ENCRYPTION_KEY")),
        }
        commit = env.get("FERRY_SYNCHRONOUS_COMMIT")
        if commit:
            if commit not in SYNCHRONOUS_COMMIT:
                raise BadInput(
                    f"FERRY_SYNCHRONOUS_COMMIT must be one of {', '.join(SYNCHRONOUS_COMMIT)}"
                )
            values["synchronous_commit"] = commit
        numeric = {
            "lease_seconds": ("FERRY_LEASE_SECONDS", float),
            "sweep_interval": ("FERRY_SWEEP_INTERVAL", float),
            "stall_seconds": ("FERRY_STALL_SECONDS", float),
            "lock_timeout_ms": ("FERRY_LOCK_TIMEOUT_MS", int),
            "statement_timeout_ms": ("FERRY_STATEMENT_TIMEOUT_MS", int),
            "max_attempts": ("FERRY_MAX_ATTEMPTS", int),
            "backoff_base": ("FERRY_BACKOFF_BASE", float),
            "backoff_max": ("FERRY_BACKOFF_MAX", float),
            "visibility_timeout": ("FERRY_VISIBILITY_TIMEOUT", int),
            "worker_memory_mb": ("FERRY_WORKER_MEMORY_MB", int),
            "idle_timeout_ms": ("FERRY_IDLE_TIMEOUT_MS", int),
        }
        for attr, (name, kind) in numeric.items():
            raw = env.get(name)
            if raw:
                try:
                    values[attr] = kind(raw)
                except ValueError:
                    raise BadInput(f"{name} must be a number") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        _check_redis_url(values["redis_url"])
        return cls(**values)

    @property
    def idle_in_transaction_timeout_ms(self) -> int:
        """How long a chunk transaction may sit idle: by default the lease, and at least 1 s.

        A worker cut off the network mid-chunk leaves its session idle in transaction, holding
        the chunk's ledger row and the rows' locks; the sweeper skips locked chunks, so until
        PostgreSQL ends that session nobody can re-run the chunk (and the application waits on
        its rows). Tying the two means a lost worker's chunk runs again about a lease later.
        """
        if self.idle_timeout_ms:
            return self.idle_timeout_ms
        return max(1000, int(self.lease_seconds * 1000))

    def evolve(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def sqlalchemy_url(self) -> URL:
        """The database URL with the psycopg 3 driver, checked for shape."""
        if not self.database_url:
            raise BadInput("set FERRY_DATABASE_URL (or pass --database-url)")
        try:
            url = make_url(self.database_url)
        except ArgumentError:
            raise BadInput("FERRY_DATABASE_URL is not a valid database URL") from None
        except ValueError:  # SQLAlchemy reads the port with int(): ':notaport', '[::1'
            raise BadInput(
                "FERRY_DATABASE_URL is not a valid database URL: its host or port is malformed"
                " (an IPv6 host goes in brackets: postgresql://user@[::1]:5432/db)"
            ) from None
        if url.get_backend_name() not in ("postgresql", "postgres"):
            raise BadInput("FERRY_DATABASE_URL must be a postgresql:// URL")
        return url.set(drivername="postgresql+psycopg")


def _secret(env: Mapping[str, str], name: str) -> str | None:
    """``NAME``, or the contents of the file ``NAME_FILE`` (a mounted secret)."""
    if env.get(name):
        return env[name]
    path = env.get(f"{name}_FILE")
    if not path:
        return None
    try:
        with open(path) as fh:
            value = fh.read().strip()
    except OSError as exc:
        raise BadInput(f"{name}_FILE cannot be read: {exc.strerror}") from None
    if not value:
        raise BadInput(f"{name}_FILE is empty")
    return value


def _check_redis_url(url: str) -> None:
    """Refuse a Redis URL whose shape is wrong before anything is recorded: redis-py and kombu
    would raise a bare ValueError only once the run exists (the URL is not shown: it may hold
    a password)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- reading it checks it
    except ValueError:
        raise BadInput(
            "FERRY_REDIS_URL is not a valid URL: its host or port is malformed"
            " (an IPv6 host goes in brackets: redis://[::1]:6379/0)"
        ) from None
    if parts.scheme not in ("redis", "rediss", "unix", "redis+socket"):
        raise BadInput("FERRY_REDIS_URL must be a redis://, rediss:// or unix:// URL")


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
