"""The default store: one SQLite database file in the data directory.

WAL mode lets readers proceed while one writer commits; ``synchronous=FULL`` makes every commit
durable before it returns, so a crash loses no committed registration or key. Each thread gets
its own connection; every write transaction takes the database's write lock at once (BEGIN
IMMEDIATE), which also serializes key changes between processes.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from authsvc.files import private_database_file
from authsvc.store.base import StoreUnavailable
from authsvc.store.migrations import MIGRATIONS
from authsvc.store.sql import MIGRATIONS_TABLE, SqlStore, iter_migrations

__all__ = ["SQLiteStore"]

log = logging.getLogger("authsvc.store")


def _set_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL. The switch takes an exclusive lock and does not wait on the busy timeout,
    so processes opening a new database at once retry it briefly."""
    for attempt in range(50):
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 49:
                raise
            time.sleep(0.02 * (1 + attempt % 5))


class SQLiteStore(SqlStore):
    """Clients, keys and service secrets in ``path``. Applies migrations on open."""

    integrity_errors = (sqlite3.IntegrityError,)

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        private_database_file(self.path)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        try:
            self.migrate()
        except BaseException:
            self.close()
            raise

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
            try:
                _set_wal(conn)
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
        try:
            return self._conn().execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailable("the database cannot be read") from exc

    @contextmanager
    def _write(self, *, lock_keys: bool = False) -> Iterator[sqlite3.Connection]:
        try:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailable("the database cannot be written") from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.IntegrityError):
                raise StoreUnavailable("the database cannot be written") from exc
            raise

    def migrate(self) -> None:
        with self._write() as conn:
            conn.execute(MIGRATIONS_TABLE)
            current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0]
            for version, statements in iter_migrations(current, MIGRATIONS):
                for statement in statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                    (version, int(time.time())),
                )

    def schema_version(self) -> int:
        return int(self._query("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")[0][0])

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()
