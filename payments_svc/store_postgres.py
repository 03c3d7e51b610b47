"""The PaymentService's PostgreSQL store, for several replicas on one database.

psycopg 3 with a connection pool; the queries are :class:`~payments_svc.store.SqlPaymentStore`'s,
the same as SQLite's. What differs is how concurrent transactions meet: an idempotency key that
two replicas insert at once is settled by the UNIQUE constraint (the loser's insert raises a
unique violation, it rolls back and reads the winner's row), a refund locks its payment's row
(``SELECT … FOR UPDATE``), and migrations run under an advisory lock, so replicas starting at once
apply each migration once.

An unreachable database raises :class:`~payments_svc.errors.DatabaseUnavailable` (UNAVAILABLE
on the wire) after at most about ``timeout`` seconds, never a hang; the pool reconnects by itself
when the database is back.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from authsvc.core.dburl import redact_database_url as redact_url
from authsvc.pgurl import check_postgres_url
from payments_svc.errors import DatabaseUnavailable
from payments_svc.store import SqlPaymentStore

__all__ = ["PostgresPaymentStore", "redact_url"]

log = logging.getLogger("payments_svc.store")

_MIGRATION_LOCK = 0x7061_796D_0001  # "paym" 1: an arbitrary, fixed advisory-lock id (authsvc has its own)


def _sql(text: str) -> str:
    return text.replace("?", "%s")


class PostgresPaymentStore(SqlPaymentStore):
    """Payments in the PostgreSQL database at ``url``. Applies migrations on open.

    ``timeout`` bounds the wait for a connection (and each connection attempt);
    ``reconnect_timeout`` bounds one chain of background reconnection attempts, whose back-off
    grows (1 s, 2 s, 4 s, …): once it gives up, the next request starts a new chain at once, so
    the store is back within a few seconds of the database, however long it was away.
    """

    unique_violations = (psycopg.errors.UniqueViolation,)
    lock_row = " FOR UPDATE"
    # not authsvc's ``schema_migrations``: both services may share one database
    migrations_table = "payments_schema_migrations"

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = 3.0,
        reconnect_timeout: float = 5.0,
    ) -> None:
        check_postgres_url(url)
        self.url = url
        self._pool = ConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            reconnect_timeout=reconnect_timeout,
            kwargs={"autocommit": True, "connect_timeout": max(1, round(timeout))},
            check=ConnectionPool.check_connection,
            open=False,
            name="payments_svc",
        )
        try:
            self._pool.open(wait=True, timeout=timeout)
            with self._connection() as conn, conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                self._migrate_in(conn)
        except PoolTimeout as exc:
            self._pool.close()
            raise DatabaseUnavailable("cannot connect to the PostgreSQL database") from exc
        except BaseException:
            self._pool.close()
            raise

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        try:
            with self._pool.connection() as conn:
                yield conn
        except (PoolTimeout, psycopg.OperationalError) as exc:
            log.warning(
                "payments database unavailable: %s", (str(exc).strip().splitlines() or [repr(exc)])[0]
            )
            raise DatabaseUnavailable() from exc

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[Sequence[Any]]:
        with self._connection() as conn:
            return conn.execute(_sql(sql), params).fetchall()

    @contextmanager
    def _write(self) -> Iterator[psycopg.Connection[Any]]:
        with self._connection() as conn, conn.transaction():
            yield conn

    def _exec(self, conn: Any, sql: str, params: Sequence[object] = ()) -> Any:
        return conn.execute(_sql(sql), params)

    def close(self) -> None:
        self._pool.close()
