"""Connections: a SQLAlchemy engine for pooling and URL handling, psycopg 3 for the work.

Chunk transactions need psycopg's COPY and exact control of the transaction,
so callers get the pooled driver connection itself. Engines are kept per
process: a forked Celery child must never reuse its parent's sockets.

Every connection Ferry opens has its session settings pinned (``PINNED``), as
libpq startup options, which win over ``ALTER DATABASE/ROLE ... SET``, the
server's configuration and the user's own PGOPTIONS: key bounds and staged
values travel as text, written by one session (the coordinator) and read by
another (a worker), so their text form must not depend on where they were
written. A date key bound written under ``DateStyle=SQL, DMY`` as
``06/01/2024`` was read by a worker as June 1st.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg.conninfo
import sqlalchemy as sa
from psycopg.rows import DictRow, dict_row

from workers.encryption import connect_options, fingerprint
from workers.settings import Settings

# The session settings that decide how values look as text, on every connection Ferry opens.
PINNED: tuple[tuple[str, str], ...] = (
    ("DateStyle", "ISO,MDY"),  # the order too: it decides how 01/06 is read
    ("IntervalStyle", "postgres"),
    ("TimeZone", "UTC"),
    ("extra_float_digits", "3"),
    ("standard_conforming_strings", "on"),
)
PINNED_OPTIONS = " ".join(f"-c {name}={value}" for name, value in PINNED)

_ENGINES: dict[tuple[int, str, str], sa.Engine] = {}


class Database:
    """A pool of psycopg connections to the migrated database."""

    def __init__(self, settings: Settings, *, pool_size: int = 3) -> None:
        url = settings.sqlalchemy_url()
        secret = settings.encryption_key
        key = (os.getpid(), url.render_as_string(hide_password=False), fingerprint(secret or ""))
        engine = _ENGINES.get(key)
        if engine is None:
            options = pinned_options(_text(url.query.get("options")))
            engine = sa.create_engine(
                url,
                pool_size=pool_size,
                max_overflow=4,
                pool_pre_ping=True,
                connect_args={
                    "application_name": "ferry",
                    "connect_timeout": 10,
                    # the URL's own options (or PGOPTIONS), then the pinned settings, then
                    # the encryption key (workers.encryption): later options win
                    "options": options,
                    **connect_options(secret, options),
                },
            )
            _ENGINES[key] = engine
        self.engine = engine

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection[DictRow]]:
        """A driver connection, outside any transaction; rolled back when returned."""
        proxy = self.engine.raw_connection()
        try:
            conn = proxy.driver_connection
            assert isinstance(conn, psycopg.Connection)
            conn.row_factory = dict_row
            yield conn
        finally:
            proxy.close()

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[DictRow]]:
        """One READ COMMITTED transaction, committed when the block ends cleanly."""
        with self.connect() as conn:
            try:
                yield conn
                conn.commit()
            except BaseException:
                conn.rollback()
                raise

    def dispose(self) -> None:
        self.engine.dispose()


def pinned_options(given: str | None = None) -> str:
    """libpq ``options``: ``given`` (else the environment's PGOPTIONS, which an explicit
    ``options`` would otherwise silently replace), then ``PINNED``, which win."""
    if given is None:
        given = os.environ.get("PGOPTIONS") or None
    return f"{given} {PINNED_OPTIONS}" if given else PINNED_OPTIONS


def connect(url: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """``psycopg.connect`` with the pinned session settings, for the few connections made
    outside a ``Database`` (creating the demo database, filling it)."""
    return psycopg.connect(url, options=pinned_options(_url_options(url)), **kwargs)


def _url_options(url: str) -> str | None:
    value = psycopg.conninfo.conninfo_to_dict(url).get("options")
    return None if value is None else str(value)


def _text(value: str | tuple[str, ...] | None) -> str | None:
    return value[-1] if isinstance(value, tuple) else value
