"""Connections: a SQLAlchemy engine for pooling and URL handling, psycopg 3 for the work.

Chunk transactions need psycopg's COPY and exact control of the transaction,
so callers get the pooled driver connection itself. Engines are kept per
process: a forked Celery child must never reuse its parent's sockets.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import sqlalchemy as sa
from psycopg.rows import DictRow, dict_row

from workers.encryption import connect_options, fingerprint
from workers.settings import Settings

_ENGINES: dict[tuple[int, str, str], sa.Engine] = {}


class Database:
    """A pool of psycopg connections to the migrated database."""

    def __init__(self, settings: Settings, *, pool_size: int = 3) -> None:
        url = settings.sqlalchemy_url()
        secret = settings.encryption_key
        key = (os.getpid(), url.render_as_string(hide_password=False), fingerprint(secret or ""))
        engine = _ENGINES.get(key)
        if engine is None:
            engine = sa.create_engine(
                url,
                pool_size=pool_size,
                max_overflow=4,
                pool_pre_ping=True,
                connect_args={
                    "application_name": "ferry",
                    "connect_timeout": 10,
                    # the encryption key (workers.encryption), after the URL's own options
                    **connect_options(secret, _text(url.query.get("options"))),
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


def _text(value: str | tuple[str, ...] | None) -> str | None:
    return value[-1] if isinstance(value, tuple) else value
