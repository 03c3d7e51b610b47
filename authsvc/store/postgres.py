"""The PostgreSQL store, for several TokenService replicas on one database.

psycopg 3 with a connection pool. The same portable SQL as SQLite (:mod:`authsvc.store.sql`);
what differs is how transactions are serialized: every key change takes one transaction-scoped
advisory lock, so replicas running the key life cycle at once apply each transition once (the
partial unique index on the active key is the last line of defence), and migrations run under
another advisory lock, so replicas starting at once apply each migration once.

An unreachable database raises :class:`StoreUnavailable` (UNAVAILABLE on the wire) after at most
``timeout`` seconds, never a hang; the pool reconnects by itself when the database is back.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from authsvc.pgurl import check_postgres_url
from authsvc.store.base import StoreUnavailable
from authsvc.store.migrations import MIGRATIONS
from authsvc.store.sql import MIGRATIONS_TABLE, SqlStore, iter_migrations

__all__ = ["PostgresStore", "is_postgres_url"]

_MIGRATION_LOCK = 0x6175_7468_0001  # "auth" 1: arbitrary, fixed advisory-lock ids
_KEYS_LOCK = 0x6175_7468_0002


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def _sql(text: str) -> str:
    return text.replace("?", "%s")


class PostgresStore(SqlStore):
    """Clients, keys and service secrets in PostgreSQL at ``url``. Applies migrations on open."""

    integrity_errors = (psycopg.errors.IntegrityError,)

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 8, timeout: float = 3.0) -> None:
        check_postgres_url(url)
        self.url = url
        self._pool = ConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            kwargs={"autocommit": True, "connect_timeout": max(1, int(timeout))},
            check=ConnectionPool.check_connection,
            open=False,
            name="authsvc",
            # retry a lost database every few seconds rather than backing off for minutes
            reconnect_timeout=5.0,
        )
        try:
            self._pool.open(wait=True, timeout=timeout)
            self.migrate()
        except PoolTimeout as exc:
            self._pool.close()
            raise StoreUnavailable("cannot connect to the PostgreSQL database") from exc
        except BaseException:
            self._pool.close()
            raise

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        try:
            with self._pool.connection() as conn:
                yield conn
        except (PoolTimeout, psycopg.OperationalError) as exc:
            raise StoreUnavailable("the database is unreachable") from exc

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[Sequence[Any]]:
        with self._connection() as conn:
            return conn.execute(_sql(sql), params).fetchall()

    @contextmanager
    def _write(self, *, lock_keys: bool = False) -> Iterator[psycopg.Connection[Any]]:
        with self._connection() as conn, conn.transaction():
            if lock_keys:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_KEYS_LOCK,))
            yield conn

    def _exec(self, conn: Any, sql: str, params: Sequence[object] = ()) -> Any:
        return conn.execute(_sql(sql), params)

    def migrate(self) -> None:
        with self._connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute(MIGRATIONS_TABLE)
            row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()
            for version, statements in iter_migrations(int(row[0]) if row else 0, MIGRATIONS):
                for statement in statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (%s, %s)",
                    (version, int(time.time())),
                )

    def schema_version(self) -> int:
        return int(self._query("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")[0][0])

    def close(self) -> None:
        self._pool.close()
