"""The PaymentService's stores: the queries, written once in portable SQL, and the SQLite engine.

:class:`SqlPaymentStore` implements every operation on top of a few primitives that each engine
provides: a read outside any transaction (:meth:`~SqlPaymentStore._query`), a write transaction
(:meth:`~SqlPaymentStore._write`), the placeholder style (statements are written with ``?``; an
engine that wants ``%s`` rewrites them in :meth:`~SqlPaymentStore._exec`), the row-lock clause and
the engine's unique-violation error. :class:`PaymentStore` is the SQLite engine (the default, one
file in the data directory); ``payments_svc.store_postgres.PostgresPaymentStore`` is PostgreSQL,
for several replicas on one database.

Idempotency rests on the unique constraint on (client_id, idempotency_key), not on a
check-then-insert: two transactions (two replicas) may both find no row, and the loser's insert
then fails with a unique violation, after which the winner's row is read and compared. Refunds
lock the payment's row for the whole read-modify-write, so concurrent refunds never lose an
update; the CHECK on ``refunded_minor`` is the last line of defence.

SQLite: every write is one transaction that takes the write lock first (BEGIN IMMEDIATE), so
concurrent requests are serialized by the database, and commits with ``synchronous=FULL`` in WAL
mode, so a payment whose response was sent survives a crash of the process.

This service depends on ``authsvc.verify`` only, as any resource server would, so it keeps its
own small database plumbing rather than borrowing authsvc's store.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from authsvc.files import private_database_file
from payments_svc.domain import CreatePayment, Payment, PaymentStatus, apply_refund
from payments_svc.errors import IdempotencyKeyReused, PaymentNotFound
from payments_svc.money import parse_amount

__all__ = ["MIGRATIONS", "PaymentStore", "SqlPaymentStore"]

log = logging.getLogger("payments_svc.store")

# Versioned, append-only (an applied migration is never edited), the same for every engine: types
# and syntax that SQLite and PostgreSQL both accept.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            """CREATE TABLE payments (
                transaction_id   VARCHAR(32) PRIMARY KEY,
                client_id        VARCHAR(128) NOT NULL,
                status           VARCHAR(32) NOT NULL,
                amount_minor     BIGINT NOT NULL CHECK (amount_minor > 0),
                refunded_minor   BIGINT NOT NULL
                                 CHECK (refunded_minor >= 0 AND refunded_minor <= amount_minor),
                currency         CHAR(3) NOT NULL,
                payment_method   VARCHAR(64) NOT NULL,
                description      TEXT NOT NULL,
                create_time_us   BIGINT NOT NULL,
                idempotency_key  VARCHAR(255) NOT NULL,
                request_hash     CHAR(64) NOT NULL,
                UNIQUE (client_id, idempotency_key)
            )""",
            "CREATE INDEX payments_by_client ON payments (client_id, create_time_us, transaction_id)",
            """CREATE TABLE refunds (
                refund_id        VARCHAR(32) PRIMARY KEY,
                transaction_id   VARCHAR(32) NOT NULL REFERENCES payments (transaction_id),
                client_id        VARCHAR(128) NOT NULL,
                amount_minor     BIGINT NOT NULL CHECK (amount_minor > 0),
                create_time_us   BIGINT NOT NULL,
                idempotency_key  VARCHAR(255),
                request_hash     CHAR(64) NOT NULL,
                UNIQUE (client_id, idempotency_key)
            )""",
        ],
    ),
]

_COLUMNS = (
    "transaction_id, client_id, status, amount_minor, refunded_minor, currency, payment_method, description, "
    "create_time_us"
)
_BY_ID = f"SELECT {_COLUMNS} FROM payments WHERE transaction_id = ? AND client_id = ?"
_BY_KEY = f"SELECT {_COLUMNS}, request_hash FROM payments WHERE client_id = ? AND idempotency_key = ?"
_REFUND_BY_KEY = "SELECT request_hash FROM refunds WHERE client_id = ? AND idempotency_key = ?"


def _payment(row: Sequence[Any]) -> Payment:
    return Payment(
        transaction_id=str(row[0]),
        client_id=str(row[1]),
        status=PaymentStatus(str(row[2])),
        amount_minor=int(row[3]),
        refunded_minor=int(row[4]),
        currency=str(row[5]),
        payment_method=str(row[6]),
        description=str(row[7]),
        create_time_us=int(row[8]),
    )


def _hash(value: Any) -> str:
    """A stored request fingerprint. The column is CHAR(64): PostgreSQL pads shorter values (a
    refund's fingerprint) with blanks, SQLite does not; no fingerprint ends in a blank."""
    return str(value).rstrip(" ")


def _replay(row: Sequence[Any], fingerprint: str) -> Payment:
    """The payment stored under the request's idempotency key, if the request is the same."""
    if _hash(row[-1]) != fingerprint:
        raise IdempotencyKeyReused("this idempotency_key was used for a different payment")
    return _payment(row[:-1])


class SqlPaymentStore:
    """The store operations in portable SQL. Subclasses provide the connection handling."""

    #: the engine's error for a violated UNIQUE constraint (a concurrent insert won the race)
    unique_violations: tuple[type[Exception], ...] = ()
    #: appended to the read of the payment a refund changes, where the engine needs a row lock
    lock_row = ""
    #: the table of applied migration versions
    migrations_table = "schema_migrations"

    # -- what an engine provides ---------------------------------------------------------------

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[Sequence[Any]]:
        """All rows of one read, outside any transaction."""
        raise NotImplementedError

    def _write(self) -> AbstractContextManager[Any]:
        """A write transaction yielding a connection: committed on exit, rolled back on error."""
        raise NotImplementedError

    def _exec(self, conn: Any, sql: str, params: Sequence[object] = ()) -> Any:
        """Run one statement in a transaction; returns the cursor."""
        return conn.execute(sql, params)

    def close(self) -> None:
        raise NotImplementedError

    # -- schema ----------------------------------------------------------------------------------

    def _migrate_in(self, conn: Any) -> None:
        """Apply the missing migrations inside the caller's transaction, which holds a lock that
        serializes this with every other process migrating the same database."""
        table = self.migrations_table
        self._exec(conn, f"CREATE TABLE IF NOT EXISTS {table} (version INTEGER PRIMARY KEY)")
        current = int(self._exec(conn, f"SELECT COALESCE(MAX(version), 0) FROM {table}").fetchone()[0])
        if current > MIGRATIONS[-1][0]:
            raise RuntimeError(f"the payments database schema is version {current}, newer than this code")
        for version, statements in MIGRATIONS:
            if version > current:
                for statement in statements:
                    self._exec(conn, statement)
                self._exec(conn, f"INSERT INTO {table} (version) VALUES (?)", (version,))

    def schema_version(self) -> int:
        return int(self._query(f"SELECT COALESCE(MAX(version), 0) FROM {self.migrations_table}")[0][0])

    # -- payments --------------------------------------------------------------------------------

    def create(self, client_id: str, request: CreatePayment, *, transaction_id: str, now_us: int) -> Payment:
        """Insert the payment, or return the one created before with the same idempotency key and
        the same request; the same key with another request raises IdempotencyKeyReused."""
        fingerprint = request.fingerprint()
        payment = Payment(
            transaction_id=transaction_id,
            client_id=client_id,
            status=PaymentStatus.SUCCEEDED,
            amount_minor=request.amount.minor,
            refunded_minor=0,
            currency=request.amount.currency,
            payment_method=request.payment_method,
            description=request.description,
            create_time_us=now_us,
        )
        try:
            with self._write() as conn:
                row = self._exec(conn, _BY_KEY, (client_id, request.idempotency_key)).fetchone()
                if row is not None:
                    return _replay(row, fingerprint)
                self._exec(
                    conn,
                    f"INSERT INTO payments ({_COLUMNS}, idempotency_key, request_hash) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        payment.transaction_id,
                        payment.client_id,
                        payment.status.value,
                        payment.amount_minor,
                        payment.refunded_minor,
                        payment.currency,
                        payment.payment_method,
                        payment.description,
                        payment.create_time_us,
                        request.idempotency_key,
                        fingerprint,
                    ),
                )
                return payment
        except self.unique_violations:
            # Another transaction inserted this key after our read and committed first (our
            # transaction is rolled back): the winner's row decides.
            rows = self._query(_BY_KEY, (client_id, request.idempotency_key))
            if not rows:
                raise
            return _replay(rows[0], fingerprint)

    def get(self, client_id: str, transaction_id: str) -> Payment:
        rows = self._query(_BY_ID, (transaction_id, client_id))
        if not rows:
            raise PaymentNotFound("no such payment")
        return _payment(rows[0])

    def list(self, client_id: str, *, limit: int, before: tuple[int, str] | None) -> list[Payment]:
        """The client's payments, newest first, strictly before the ``(create_time_us, id)`` cursor."""
        if before is None:
            rows = self._query(
                f"SELECT {_COLUMNS} FROM payments WHERE client_id = ? "
                "ORDER BY create_time_us DESC, transaction_id DESC LIMIT ?",
                (client_id, limit),
            )
        else:
            rows = self._query(
                f"SELECT {_COLUMNS} FROM payments WHERE client_id = ? AND "
                "(create_time_us < ? OR (create_time_us = ? AND transaction_id < ?)) "
                "ORDER BY create_time_us DESC, transaction_id DESC LIMIT ?",
                (client_id, before[0], before[0], before[1], limit),
            )
        return [_payment(r) for r in rows]

    def refund(
        self,
        client_id: str,
        transaction_id: str,
        amount: str,
        *,
        idempotency_key: str | None,
        refund_id: str,
        now_us: int,
    ) -> Payment:
        """Refund within one transaction that holds the payment's row lock; a repeated idempotency
        key returns the payment as it is."""
        fingerprint = ""
        try:
            with self._write() as conn:
                row = self._exec(conn, _BY_ID + self.lock_row, (transaction_id, client_id)).fetchone()
                if row is None:
                    raise PaymentNotFound("no such payment")
                payment = _payment(row)
                # the same refund whatever its spelling ("10" and "10.00"); "" is "all that is left"
                requested = "rest" if amount == "" else str(parse_amount(amount, payment.currency))
                fingerprint = f"{transaction_id}:{requested}"
                if idempotency_key:
                    row = self._exec(conn, _REFUND_BY_KEY, (client_id, idempotency_key)).fetchone()
                    if row is not None:
                        if _hash(row[0]) != fingerprint:
                            raise IdempotencyKeyReused("this idempotency_key was used for a different refund")
                        return payment
                updated, minor = apply_refund(payment, amount)
                self._exec(
                    conn,
                    "UPDATE payments SET refunded_minor = ?, status = ? "
                    "WHERE transaction_id = ? AND client_id = ?",
                    (updated.refunded_minor, updated.status.value, transaction_id, client_id),
                )
                self._exec(
                    conn,
                    "INSERT INTO refunds (refund_id, transaction_id, client_id, amount_minor, "
                    "create_time_us, idempotency_key, request_hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        refund_id,
                        transaction_id,
                        client_id,
                        minor,
                        now_us,
                        idempotency_key or None,
                        fingerprint,
                    ),
                )
                return updated
        except self.unique_violations:
            # The row lock serializes refunds of one payment, so this is a concurrent refund of
            # another payment of the client's under the same key that committed first.
            if not idempotency_key or not fingerprint:
                raise
            rows = self._query(_REFUND_BY_KEY, (client_id, idempotency_key))
            if not rows:
                raise
            if _hash(rows[0][0]) != fingerprint:
                raise IdempotencyKeyReused("this idempotency_key was used for a different refund") from None
            return self.get(client_id, transaction_id)


class PaymentStore(SqlPaymentStore):
    """Payments in the SQLite database file ``path``. Applies migrations on open."""

    unique_violations = (sqlite3.IntegrityError,)

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        private_database_file(self.path)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        try:
            with self._write() as conn:
                self._migrate_in(conn)
        except BaseException:
            self.close()
            raise

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
            try:
                # switching to WAL takes an exclusive lock without waiting on the busy timeout:
                # processes opening a new database at once retry it briefly
                for attempt in range(50):
                    try:
                        conn.execute("PRAGMA journal_mode=WAL")
                        break
                    except sqlite3.OperationalError as exc:
                        if "locked" not in str(exc) or attempt == 49:
                            raise
                        time.sleep(0.02 * (1 + attempt % 5))
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA foreign_keys=ON")
            except BaseException:
                conn.close()
                raise
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[Sequence[Any]]:
        return self._conn().execute(sql, params).fetchall()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE takes the database's write lock at once: writers, in this process or
        another, run one at a time, which also makes the payment's read-modify-write safe."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()
