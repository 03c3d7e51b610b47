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
_KEY_COLUMNS = (
    "kid, state, public_jwk, private_key_enc, kek_id, created_at, activated_at, retired_at, deactivated_at, "
    "retire_after, revoked_at, origin"
)
_INSERT_KEY = f"INSERT INTO signing_keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


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


def _opt_int(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


def _key_from_row(row: tuple[object, ...]) -> StoredKey:
    return StoredKey(
        kid=str(row[0]),
        state=str(row[1]),
        public_jwk=str(row[2]),
        private_key_enc=bytes(row[3]),  # type: ignore[call-overload]
        kek_id=str(row[4]),
        created_at=int(row[5]),  # type: ignore[call-overload]
        activated_at=_opt_int(row[6]),
        retired_at=_opt_int(row[7]),
        deactivated_at=_opt_int(row[8]),
        retire_after=_opt_int(row[9]),
        revoked_at=_opt_int(row[10]),
        origin=str(row[11]),
    )


def _key_row(key: StoredKey, state: str | None = None) -> tuple[object, ...]:
    return (
        key.kid,
        state or key.state,
        key.public_jwk,
        key.private_key_enc,
        key.kek_id,
        key.created_at,
        key.activated_at,
        key.retired_at,
        key.deactivated_at,
        key.retire_after,
        key.revoked_at,
        key.origin,
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
            conn.execute(_INSERT_KEY, _key_row(key, KeyState.ACTIVE.value))
            return dataclasses.replace(key, state=KeyState.ACTIVE.value)

    def add_key(self, key: StoredKey, *, only_if_no_next: bool = False) -> bool:
        try:
            with self._write() as conn:
                if (
                    only_if_no_next
                    and conn.execute(
                        "SELECT 1 FROM signing_keys WHERE state = ?", (KeyState.NEXT.value,)
                    ).fetchone()
                ):
                    return False
                conn.execute(_INSERT_KEY, _key_row(key))
                return True
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(f"key {key.kid} exists already") from exc

    def promote(self, kid: str, *, now: int, retire_after: int) -> bool:
        with self._write() as conn:
            row = conn.execute("SELECT state FROM signing_keys WHERE kid = ?", (kid,)).fetchone()
            if row is None or row[0] != KeyState.NEXT.value:
                return False
            conn.execute(
                "UPDATE signing_keys SET state = ?, deactivated_at = ?, retire_after = ? WHERE state = ?",
                (KeyState.RETIRING.value, now, retire_after, KeyState.ACTIVE.value),
            )
            conn.execute(
                "UPDATE signing_keys SET state = ?, activated_at = ? WHERE kid = ?",
                (KeyState.ACTIVE.value, now, kid),
            )
            return True

    def retire(self, kid: str, *, now: int) -> bool:
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE signing_keys SET state = ?, retired_at = ? WHERE kid = ? AND state = ?",
                (KeyState.RETIRED.value, now, kid, KeyState.RETIRING.value),
            )
            return cur.rowcount == 1

    def revoke(self, kid: str, *, now: int) -> StoredKey | None:
        with self._write() as conn:
            row = conn.execute(f"SELECT {_KEY_COLUMNS} FROM signing_keys WHERE kid = ?", (kid,)).fetchone()
            if row is None or row[1] in (KeyState.RETIRED.value, KeyState.REVOKED.value):
                return None
            conn.execute(
                "UPDATE signing_keys SET state = ?, revoked_at = ? WHERE kid = ?",
                (KeyState.REVOKED.value, now, kid),
            )
            return _key_from_row(row)

    def rewrap(
        self,
        keys: list[tuple[str, bytes]],
        secrets: list[tuple[str, bytes]],
        *,
        old_kek_id: str,
        new_kek_id: str,
    ) -> None:
        with self._write() as conn:
            for table, column, name_column, items in (
                ("signing_keys", "private_key_enc", "kid", keys),
                ("service_secrets", "value_enc", "name", secrets),
            ):
                for name, blob in items:
                    cur = conn.execute(
                        f"UPDATE {table} SET {column} = ?, kek_id = ? WHERE {name_column} = ? AND kek_id = ?",
                        (blob, new_kek_id, name, old_kek_id),
                    )
                    if cur.rowcount != 1:
                        raise StoreError(
                            f"{name_column} {name} is no longer under key-encryption key {old_kek_id}"
                        )

    def list_secrets(self) -> list[tuple[str, bytes, str]]:
        rows = (
            self._conn()
            .execute("SELECT name, value_enc, kek_id FROM service_secrets ORDER BY name")
            .fetchall()
        )
        return [(str(r[0]), bytes(r[1]), str(r[2])) for r in rows]

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
