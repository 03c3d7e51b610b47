"""The PaymentService's SQLite store.

Every write is one transaction that takes the write lock first (BEGIN IMMEDIATE), so concurrent
requests are serialized by the database, and commits with ``synchronous=FULL`` in WAL mode, so a
payment whose response was sent survives a crash of the process. Idempotency rests on a unique
constraint on (client_id, idempotency_key), not on a check-then-insert.

This service depends on ``authsvc.verify`` only, as any resource server would, so it keeps its
own small database plumbing rather than borrowing authsvc's store.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from payments_svc.domain import CreatePayment, Payment, PaymentStatus, apply_refund
from payments_svc.errors import IdempotencyKeyReused, PaymentNotFound
from payments_svc.money import parse_amount

__all__ = ["PaymentStore"]

_MIGRATIONS: list[tuple[int, list[str]]] = [
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


def _payment(row: tuple[object, ...]) -> Payment:
    return Payment(
        transaction_id=str(row[0]),
        client_id=str(row[1]),
        status=PaymentStatus(str(row[2])),
        amount_minor=int(row[3]),  # type: ignore[call-overload]
        refunded_minor=int(row[4]),  # type: ignore[call-overload]
        currency=str(row[5]),
        payment_method=str(row[6]),
        description=str(row[7]),
        create_time_us=int(row[8]),  # type: ignore[call-overload]
    )


class PaymentStore:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _migrate(self) -> None:
        with self._write() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)")
            current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0]
            if current > _MIGRATIONS[-1][0]:
                raise RuntimeError(f"the payments database schema is version {current}, newer than this code")
            for version, statements in _MIGRATIONS:
                if version > current:
                    for statement in statements:
                        conn.execute(statement)
                    conn.execute("INSERT INTO schema_migrations (version) VALUES (?)", (version,))

    def create(self, client_id: str, request: CreatePayment, *, transaction_id: str, now_us: int) -> Payment:
        """Insert the payment, or return the one created before with the same idempotency key and
        the same request; the same key with another request raises IdempotencyKeyReused."""
        fingerprint = request.fingerprint()
        with self._write() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS}, request_hash FROM payments WHERE client_id = ? AND idempotency_key = ?",
                (client_id, request.idempotency_key),
            ).fetchone()
            if row is not None:
                if row[-1] != fingerprint:
                    raise IdempotencyKeyReused("this idempotency_key was used for a different payment")
                return _payment(row[:-1])
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
            conn.execute(
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

    def get(self, client_id: str, transaction_id: str) -> Payment:
        row = (
            self._conn()
            .execute(
                f"SELECT {_COLUMNS} FROM payments WHERE transaction_id = ? AND client_id = ?",
                (transaction_id, client_id),
            )
            .fetchone()
        )
        if row is None:
            raise PaymentNotFound("no such payment")
        return _payment(row)

    def list(self, client_id: str, *, limit: int, before: tuple[int, str] | None) -> list[Payment]:
        """The client's payments, newest first, strictly before the ``(create_time_us, id)`` cursor."""
        if before is None:
            rows = (
                self._conn()
                .execute(
                    f"SELECT {_COLUMNS} FROM payments WHERE client_id = ? "
                    "ORDER BY create_time_us DESC, transaction_id DESC LIMIT ?",
                    (client_id, limit),
                )
                .fetchall()
            )
        else:
            rows = (
                self._conn()
                .execute(
                    f"SELECT {_COLUMNS} FROM payments WHERE client_id = ? AND "
                    "(create_time_us < ? OR (create_time_us = ? AND transaction_id < ?)) "
                    "ORDER BY create_time_us DESC, transaction_id DESC LIMIT ?",
                    (client_id, before[0], before[0], before[1], limit),
                )
                .fetchall()
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
        """Refund within one transaction; a repeated idempotency key returns the payment as it is."""
        with self._write() as conn:
            payment = self._get_in(conn, client_id, transaction_id)
            # the same refund whatever its spelling ("10" and "10.00"); "" is "all that is left"
            requested = "rest" if amount == "" else str(parse_amount(amount, payment.currency))
            fingerprint = f"{transaction_id}:{requested}"
            if idempotency_key:
                row = conn.execute(
                    "SELECT request_hash FROM refunds WHERE client_id = ? AND idempotency_key = ?",
                    (client_id, idempotency_key),
                ).fetchone()
                if row is not None:
                    if row[0] != fingerprint:
                        raise IdempotencyKeyReused("this idempotency_key was used for a different refund")
                    return payment
            updated, minor = apply_refund(payment, amount)
            conn.execute(
                "UPDATE payments SET refunded_minor = ?, status = ? "
                "WHERE transaction_id = ? AND client_id = ?",
                (updated.refunded_minor, updated.status.value, transaction_id, client_id),
            )
            conn.execute(
                "INSERT INTO refunds (refund_id, transaction_id, client_id, amount_minor, create_time_us, "
                "idempotency_key, request_hash) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (refund_id, transaction_id, client_id, minor, now_us, idempotency_key or None, fingerprint),
            )
            return updated

    @staticmethod
    def _get_in(conn: sqlite3.Connection, client_id: str, transaction_id: str) -> Payment:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM payments WHERE transaction_id = ? AND client_id = ?",
            (transaction_id, client_id),
        ).fetchone()
        if row is None:
            raise PaymentNotFound("no such payment")
        return _payment(row)

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()
