"""The default store: one SQLite database file in the data directory.

WAL mode lets readers proceed while one writer commits; ``synchronous=FULL`` makes every commit
durable before it returns, so a crash loses no committed registration or key. Each thread gets
its own connection.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from authsvc.core.clients import Client
from authsvc.core.keys import KeyState
from authsvc.store.base import AlreadyExists, StoredKey, StoreError
from authsvc.store.migrations import MIGRATIONS, SCHEMA_VERSION

__all__ = ["SQLiteStore"]

_CLIENT_COLUMNS = (
    "client_id, secret_hash, allowed_scopes, default_scopes, allowed_audiences, default_audience, "
    "token_ttl, grant_types, enabled, created_at, updated_at"
)
_MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT)"
)
_KEY_COLUMNS = "kid, state, public_jwk, private_key_enc, kek_id, created_at, activated_at, retired_at"


def _client_row(c: Client) -> tuple[object, ...]:
    return (
        c.client_id,
        c.secret_hash,
        json.dumps(c.allowed_scopes),
        json.dumps(c.default_scopes),
        json.dumps(c.allowed_audiences),
        c.default_audience,
        c.token_ttl,
        json.dumps(c.grant_types),
        bool(c.enabled),
        c.created_at,
        c.updated_at,
    )


def _client_from_row(row: tuple[object, ...]) -> Client:
    return Client(
        client_id=str(row[0]),
        secret_hash=str(row[1]),
        allowed_scopes=tuple(json.loads(str(row[2]))),
        default_scopes=tuple(json.loads(str(row[3]))),
        allowed_audiences=tuple(json.loads(str(row[4]))),
        default_audience=str(row[5]),
        token_ttl=int(row[6]),  # type: ignore[call-overload]
        grant_types=tuple(json.loads(str(row[7]))),
        enabled=bool(row[8]),
        created_at=int(row[9]),  # type: ignore[call-overload]
        updated_at=int(row[10]),  # type: ignore[call-overload]
    )


def _key_from_row(row: tuple[object, ...]) -> StoredKey:
    return StoredKey(
        kid=str(row[0]),
        state=str(row[1]),
        public_jwk=str(row[2]),
        private_key_enc=bytes(row[3]),  # type: ignore[call-overload]
        kek_id=str(row[4]),
        created_at=int(row[5]),  # type: ignore[call-overload]
        activated_at=None if row[6] is None else int(row[6]),  # type: ignore[call-overload]
        retired_at=None if row[7] is None else int(row[7]),  # type: ignore[call-overload]
    )


class SQLiteStore:
    """Clients, keys and service secrets in ``path``. Applies migrations on open."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
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
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the database's write lock at once (BEGIN IMMEDIATE)."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def migrate(self) -> None:
        with self._write() as conn:
            conn.execute(_MIGRATIONS_TABLE)
            current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0]
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"the database schema is version {current}, newer than this authsvc knows "
                    f"({SCHEMA_VERSION}); upgrade authsvc"
                )
            for version, statements in MIGRATIONS:
                if version <= current:
                    continue
                for statement in statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, strftime('%s','now'))",
                    (version,),
                )

    def schema_version(self) -> int:
        return int(
            self._conn().execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0]
        )

    # -- clients ---------------------------------------------------------------------------

    def get_client(self, client_id: str) -> Client | None:
        row = (
            self._conn()
            .execute(f"SELECT {_CLIENT_COLUMNS} FROM clients WHERE client_id = ?", (client_id,))
            .fetchone()
        )
        return None if row is None else _client_from_row(row)

    def list_clients(self) -> list[Client]:
        rows = self._conn().execute(f"SELECT {_CLIENT_COLUMNS} FROM clients ORDER BY client_id").fetchall()
        return [_client_from_row(r) for r in rows]

    def create_client(self, client: Client) -> None:
        try:
            with self._write() as conn:
                conn.execute(
                    f"INSERT INTO clients ({_CLIENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    _client_row(client),
                )
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(f"client {client.client_id!r} exists already") from exc

    def update_client(self, client: Client) -> bool:
        row = _client_row(client)
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE clients SET secret_hash = ?, allowed_scopes = ?, default_scopes = ?, "
                "allowed_audiences = ?, default_audience = ?, token_ttl = ?, grant_types = ?, enabled = ?, "
                "created_at = ?, updated_at = ? WHERE client_id = ?",
                (*row[1:], row[0]),
            )
            return cur.rowcount == 1

    # -- keys ------------------------------------------------------------------------------

    def list_keys(self) -> list[StoredKey]:
        rows = (
            self._conn()
            .execute(f"SELECT {_KEY_COLUMNS} FROM signing_keys ORDER BY created_at, kid")
            .fetchall()
        )
        return [_key_from_row(r) for r in rows]

    def activate_first_key(self, key: StoredKey) -> StoredKey:
        with self._write() as conn:
            row = conn.execute(
                f"SELECT {_KEY_COLUMNS} FROM signing_keys WHERE state = ?", (KeyState.ACTIVE.value,)
            ).fetchone()
            if row is not None:
                return _key_from_row(row)
            conn.execute(
                f"INSERT INTO signing_keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key.kid,
                    KeyState.ACTIVE.value,
                    key.public_jwk,
                    key.private_key_enc,
                    key.kek_id,
                    key.created_at,
                    key.activated_at,
                    key.retired_at,
                ),
            )
            return dataclasses.replace(key, state=KeyState.ACTIVE.value)

    # -- service secrets -------------------------------------------------------------------

    def get_or_create_secret(self, name: str, value_enc: bytes, kek_id: str) -> tuple[bytes, str]:
        with self._write() as conn:
            row = conn.execute(
                "SELECT value_enc, kek_id FROM service_secrets WHERE name = ?", (name,)
            ).fetchone()
            if row is not None:
                return bytes(row[0]), str(row[1])
            conn.execute(
                "INSERT INTO service_secrets (name, value_enc, kek_id) VALUES (?, ?, ?)",
                (name, value_enc, kek_id),
            )
            return value_enc, kek_id

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()
