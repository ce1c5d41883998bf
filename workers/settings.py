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
from workers.failures import Breaker
from workers.identity import default_queue

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
SYNCHRONOUS_COMMIT = ("off", "local", "remote_write", "on", "remote_apply")


@dataclass(frozen=True, kw_only=True)
class Settings:
    database_url: str | None
    redis_url: str = DEFAULT_REDIS_URL
    actor: str = "unknown"
    # FERRY_QUEUE; None: the ledger's own queue, ``ferry.<identity>`` (workers.identity)
    queue: str | None = None
    lease_seconds: float = 30.0
    sweep_interval: float = 5.0
    stall_seconds: float = 90.0
    lock_timeout_ms: int = 500
    statement_timeout_ms: int = 30_000
    # A chunk transaction left idle (its worker cut off mid-chunk) ends after this, freeing its
    # locks so the sweeper can re-queue the chunk; None: the lease. FERRY_IDLE_TIMEOUT_MS.
    idle_timeout_ms: int | None = None
    # How long a chunk's transform and Python rules may keep its transaction's session alive
    # (workers.keepalive): past it the session idles out and the chunk fails. The default is
    # the visibility timeout's: a task running longer is delivered again meanwhile anyway.
    # FERRY_TRANSFORM_TIMEOUT, seconds.
    transform_timeout: float = 900.0
    # synchronous_commit of chunk transactions (FERRY_SYNCHRONOUS_COMMIT). "off" is safe: a
    # chunk's rows, pre-images and done mark commit together, so a commit lost in a server
    # crash is a chunk still pending in the recovered ledger, which runs again, and any later
    # durable commit (the application's, the run's end) flushes it first. It spares each chunk
    # its WAL flush wait (about 5 % of the SQL path's throughput on the 2-core bench machine),
    # but writes less durable than the application's are the DBA's to ask for: "on" stays.
    synchronous_commit: str = "on"
    max_attempts: int = 6
    # The failure breaker (workers.failures.Breaker): a run stops once at least this many of
    # its chunks settled and more than this share of them failed. FERRY_BREAKER_MIN_CHUNKS
    # (0: off), FERRY_BREAKER_RATIO (0 to 1, exclusive of 1).
    breaker_min_chunks: int = 10
    breaker_ratio: float = 0.5
    # Attempts at restoring one chunk before its rollback fails for good (transient errors
    # only: a permanent one, such as a dropped table, fails at once). FERRY_ROLLBACK_MAX_ATTEMPTS.
    rollback_max_attempts: int = 6
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
    # TEST ONLY (FERRY_TEST_KILL_ONCE): a file whose existence makes one worker process kill
    # itself between a chunk's done mark and its COMMIT (see workers.testhooks).
    test_kill_once: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {
            "database_url": env.get("FERRY_DATABASE_URL") or None,
            "redis_url": env.get("FERRY_REDIS_URL") or DEFAULT_REDIS_URL,
            "actor": env.get("FERRY_ACTOR") or _os_user(),
            "queue": env.get("FERRY_QUEUE") or None,
            "mask_key": env.get("FERRY_MASK_KEY") or None,
            "audit_key": _secret(env, "FERRY_AUDIT_KEY"),
            "audit_heads": env.get("FERRY_AUDIT_HEADS") or None,
            "audit_webhook": env.get("FERRY_AUDIT_WEBHOOK") or None,
            "phi_columns": parse_phi_setting(env.get("FERRY_PHI_COLUMNS")),
            "encryption_key": check_key(env.get("FERRY_ENCRYPTION_KEY")),
            "test_kill_once": env.get("FERRY_TEST_KILL_ONCE") or None,
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
            "rollback_max_attempts": ("FERRY_ROLLBACK_MAX_ATTEMPTS", int),
            "backoff_base": ("FERRY_BACKOFF_BASE", float),
            "backoff_max": ("FERRY_BACKOFF_MAX", float),
            "visibility_timeout": ("FERRY_VISIBILITY_TIMEOUT", int),
            "worker_memory_mb": ("FERRY_WORKER_MEMORY_MB", int),
            "idle_timeout_ms": ("FERRY_IDLE_TIMEOUT_MS", int),
            "transform_timeout": ("FERRY_TRANSFORM_TIMEOUT", float),
            "breaker_min_chunks": ("FERRY_BREAKER_MIN_CHUNKS", int),
            "breaker_ratio": ("FERRY_BREAKER_RATIO", float),
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
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse values that would make the chunk machinery misbehave rather than fail."""
        if not self.transform_timeout > 0:  # NaN too
            raise BadInput("FERRY_TRANSFORM_TIMEOUT must be a number of seconds above 0")
        if self.breaker_min_chunks < 0:
            raise BadInput("FERRY_BREAKER_MIN_CHUNKS must be 0 (off) or more")
        if not 0 <= self.breaker_ratio < 1:  # NaN fails both comparisons
            raise BadInput("FERRY_BREAKER_RATIO must be at least 0 and less than 1")

    @property
    def breaker(self) -> Breaker:
        return Breaker(min_chunks=self.breaker_min_chunks, ratio=self.breaker_ratio)

    @property
    def idle_in_transaction_timeout_ms(self) -> int:
        """How long a chunk transaction may sit idle: by default the lease, and at least 1 s.

        A worker cut off the network mid-chunk leaves its session idle in transaction, holding
        the chunk's ledger row and the rows' locks; the sweeper skips locked chunks, so until
        PostgreSQL ends that session nobody can re-run the chunk (and the application waits on
        its rows). Tying the two means a lost worker's chunk runs again about a lease later.
        A live worker's transform may run longer: it keeps the session alive meanwhile
        (``workers.keepalive``, up to ``transform_timeout``).
        """
        if self.idle_timeout_ms:
            return self.idle_timeout_ms
        return max(1000, int(self.lease_seconds * 1000))

    def queue_for(self, ledger: str) -> str:
        """The queue of ledger ``ledger``'s tasks: FERRY_QUEUE, or the ledger's own."""
        return self.queue or default_queue(ledger)

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
        if url.port is not None and not 0 < url.port < 65536:
            raise BadInput(f"FERRY_DATABASE_URL's port {url.port} is out of range (1 to 65535)")
        sslmode = url.query.get("sslmode")
        if sslmode is not None and sslmode not in SSLMODES:
            raise BadInput(
                f"FERRY_DATABASE_URL's sslmode must be one of {', '.join(SSLMODES)}, not {sslmode}"
            )
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
