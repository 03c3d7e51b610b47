"""What the SQL stores share: the queries, written once in portable SQL.

:class:`SqlStore` implements every store operation on top of four primitives that each engine
provides: a read (:meth:`_query`), a write transaction (:meth:`_write`, which serializes key
changes across processes), the placeholder style, and the engine's integrity-error class.
Statements are written with ``?`` placeholders; an engine that wants ``%s`` rewrites them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from authsvc.core.clients import Client, ClientAuthMethod
from authsvc.core.keys import KeyState
from authsvc.core.revocation import Revocation
from authsvc.store.base import (
    UPDATABLE_CLIENT_FIELDS,
    AlreadyExists,
    Reencrypt,
    StaleKek,
    StoredKey,
    StoreError,
)

__all__ = ["CLIENT_COLUMNS", "JTI_PURGE_INTERVAL", "KEY_COLUMNS", "MIGRATIONS_TABLE", "SqlStore"]

CLIENT_COLUMNS = (
    "client_id, secret_hash, allowed_scopes, default_scopes, allowed_audiences, default_audience, "
    "token_ttl, grant_types, enabled, created_at, updated_at, previous_secret_hash, "
    "previous_secret_expires_at, auth_method, jwks, jwks_uri, signing_algs, tls_san_dns, tls_subject_dn"
)
KEY_COLUMNS = (
    "kid, state, public_jwk, private_key_enc, kek_id, created_at, activated_at, retired_at, deactivated_at, "
    "retire_after, revoked_at, origin"
)
MIGRATIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT)"
)
_INSERT_KEY = f"INSERT INTO signing_keys ({KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_CLIENT = f"INSERT INTO clients ({CLIENT_COLUMNS}) VALUES ({', '.join('?' * 19)})"
REVOCATION_COLUMNS = "sequence, jti, client_id, not_before, expires_at"
JTI_PURGE_INTERVAL = 60
"""Seconds between two deletions of expired assertion jtis by one store: often enough to keep the
table to a minute of traffic beyond the assertions' lifetimes, rarely enough that concurrent
requests seldom meet over the same expired rows."""


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
        c.previous_secret_hash,
        c.previous_secret_expires_at,
        c.auth_method.value,
        c.jwks,
        c.jwks_uri,
        json.dumps(c.signing_algs),
        c.tls_san_dns,
        c.tls_subject_dn,
    )


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _client_from_row(row: Sequence[Any]) -> Client:
    return Client(
        client_id=str(row[0]),
        secret_hash=str(row[1]),
        allowed_scopes=tuple(json.loads(row[2])),
        default_scopes=tuple(json.loads(row[3])),
        allowed_audiences=tuple(json.loads(row[4])),
        default_audience=str(row[5]),
        token_ttl=int(row[6]),
        grant_types=tuple(json.loads(row[7])),
        enabled=bool(row[8]),
        created_at=int(row[9]),
        updated_at=int(row[10]),
        previous_secret_hash=_opt_str(row[11]),
        previous_secret_expires_at=_opt_int(row[12]),
        auth_method=ClientAuthMethod(str(row[13])),
        jwks=_opt_str(row[14]),
        jwks_uri=_opt_str(row[15]),
        signing_algs=tuple(json.loads(row[16])),
        tls_san_dns=_opt_str(row[17]),
        tls_subject_dn=_opt_str(row[18]),
    )


def _column_value(name: str, value: object) -> object:
    """A value of :meth:`SqlStore.update_client_fields` as its column holds it."""
    if name == "enabled":
        return bool(value)
    if name == "signing_algs" and isinstance(value, tuple | list):
        return json.dumps(list(value))
    return value


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _key_from_row(row: Sequence[Any]) -> StoredKey:
    return StoredKey(
        kid=str(row[0]),
        state=str(row[1]),
        public_jwk=str(row[2]),
        private_key_enc=bytes(row[3]),
        kek_id=str(row[4]),
        created_at=int(row[5]),
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


class SqlStore:
    """The store operations in portable SQL. Subclasses provide the connection handling."""

    integrity_errors: tuple[type[Exception], ...] = ()
    _next_jti_purge = 0  # when expired assertion jtis are next deleted (epoch seconds)

    # -- what an engine provides ---------------------------------------------------------------

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[Sequence[Any]]:
        """All rows of one read, outside any transaction."""
        raise NotImplementedError

    def _write(self, *, lock_keys: bool = False) -> AbstractContextManager[Any]:
        """A write transaction yielding a connection; ``lock_keys`` serializes it with every other
        key change, across processes."""
        raise NotImplementedError

    def _exec(self, conn: Any, sql: str, params: Sequence[object] = ()) -> Any:
        """Run one statement in a transaction; returns the cursor."""
        return conn.execute(sql, params)

    # -- clients ---------------------------------------------------------------------------------

    def get_client(self, client_id: str) -> Client | None:
        rows = self._query(f"SELECT {CLIENT_COLUMNS} FROM clients WHERE client_id = ?", (client_id,))
        return _client_from_row(rows[0]) if rows else None

    def list_clients(self) -> list[Client]:
        return [
            _client_from_row(r)
            for r in self._query(f"SELECT {CLIENT_COLUMNS} FROM clients ORDER BY client_id")
        ]

    def create_client(self, client: Client) -> None:
        try:
            with self._write() as conn:
                self._exec(conn, _INSERT_CLIENT, _client_row(client))
        except self.integrity_errors as exc:
            raise AlreadyExists(f"client {client.client_id!r} exists already") from exc

    def update_client(self, client: Client) -> bool:
        row = _client_row(client)
        with self._write() as conn:
            cur = self._exec(
                conn,
                "UPDATE clients SET secret_hash = ?, allowed_scopes = ?, default_scopes = ?, "
                "allowed_audiences = ?, default_audience = ?, token_ttl = ?, grant_types = ?, enabled = ?, "
                "created_at = ?, updated_at = ?, previous_secret_hash = ?, previous_secret_expires_at = ?, "
                "auth_method = ?, jwks = ?, jwks_uri = ?, signing_algs = ?, tls_san_dns = ?, "
                "tls_subject_dn = ? WHERE client_id = ?",
                (*row[1:], row[0]),
            )
            return bool(cur.rowcount == 1)

    def update_client_fields(
        self,
        client_id: str,
        fields: Mapping[str, object],
        *,
        expect: Mapping[str, object] | None = None,
    ) -> Client | None:
        expect = expect or {}
        unknown = (set(fields) | set(expect)) - UPDATABLE_CLIENT_FIELDS
        if unknown or not fields:
            raise ValueError(f"cannot update client fields {sorted(unknown) or '(none)'}")
        names = sorted(fields)  # column names come from the fixed set, never from a caller
        assignments = ", ".join(f"{name} = ?" for name in names)
        values = [_column_value(n, fields[n]) for n in names]
        conditions = ["client_id = ?"]
        condition_values: list[object] = [client_id]
        for name in sorted(expect):
            if expect[name] is None:
                conditions.append(f"{name} IS NULL")
            else:
                conditions.append(f"{name} = ?")
                condition_values.append(_column_value(name, expect[name]))
        with self._write() as conn:
            cur = self._exec(
                conn,
                f"UPDATE clients SET {assignments} WHERE {' AND '.join(conditions)}",
                (*values, *condition_values),
            )
            if cur.rowcount != 1:
                return None
            row = self._exec(
                conn, f"SELECT {CLIENT_COLUMNS} FROM clients WHERE client_id = ?", (client_id,)
            ).fetchone()
            return _client_from_row(row)

    # -- client assertions -----------------------------------------------------------------------

    def use_assertion_jti(self, client_id: str, jti: str, *, expires_at: int, now: int) -> bool:
        with self._write() as conn:
            if now >= self._next_jti_purge:
                self._exec(conn, "DELETE FROM client_assertion_jtis WHERE expires_at <= ?", (now,))
                self._next_jti_purge = now + JTI_PURGE_INTERVAL
            # an entry whose assertion has expired is no replay: its row is taken over
            cur = self._exec(
                conn,
                "INSERT INTO client_assertion_jtis (client_id, jti, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (client_id, jti) DO UPDATE SET expires_at = excluded.expires_at "
                "WHERE client_assertion_jtis.expires_at <= ?",
                (client_id, jti, expires_at, now),
            )
            return bool(cur.rowcount == 1)

    # -- keys ------------------------------------------------------------------------------------

    def list_keys(self) -> list[StoredKey]:
        return [
            _key_from_row(r)
            for r in self._query(f"SELECT {KEY_COLUMNS} FROM signing_keys ORDER BY created_at, kid")
        ]

    def _check_kek_ids(self, conn: Any, kek_ids: Collection[str] | None) -> None:
        """Refuse a write by a process that lacks a KEK some stored ciphertext is under. Runs in
        the same key-locked transaction as the write, so a concurrent rewrap cannot slip between."""
        if kek_ids is None:
            return
        rows = self._exec(
            conn, "SELECT kek_id FROM signing_keys UNION SELECT kek_id FROM service_secrets"
        ).fetchall()
        unknown = sorted({str(r[0]) for r in rows} - set(kek_ids))
        if unknown:
            raise StaleKek(
                f"the store holds keys under key-encryption key {', '.join(unknown)}, which this process "
                "was not given; restart it with that KEK first in its list"
            )

    def activate_first_key(self, key: StoredKey, *, kek_ids: Collection[str] | None = None) -> StoredKey:
        with self._write(lock_keys=True) as conn:
            row = self._exec(
                conn, f"SELECT {KEY_COLUMNS} FROM signing_keys WHERE state = ?", (KeyState.ACTIVE.value,)
            ).fetchone()
            if row is not None:
                return _key_from_row(row)
            self._check_kek_ids(conn, kek_ids)
            self._exec(conn, _INSERT_KEY, _key_row(key, KeyState.ACTIVE.value))
            return dataclasses.replace(key, state=KeyState.ACTIVE.value)

    def add_key(
        self, key: StoredKey, *, only_if_no_next: bool = False, kek_ids: Collection[str] | None = None
    ) -> bool:
        try:
            with self._write(lock_keys=True) as conn:
                if (
                    only_if_no_next
                    and self._exec(
                        conn, "SELECT 1 FROM signing_keys WHERE state = ?", (KeyState.NEXT.value,)
                    ).fetchone()
                ):
                    return False
                self._check_kek_ids(conn, kek_ids)
                self._exec(conn, _INSERT_KEY, _key_row(key))
                return True
        except self.integrity_errors as exc:
            raise AlreadyExists(f"key {key.kid} exists already") from exc

    def promote(self, kid: str, *, now: int, retire_after: int) -> bool:
        with self._write(lock_keys=True) as conn:
            row = self._exec(conn, "SELECT state FROM signing_keys WHERE kid = ?", (kid,)).fetchone()
            if row is None or row[0] != KeyState.NEXT.value:
                return False
            self._exec(
                conn,
                "UPDATE signing_keys SET state = ?, deactivated_at = ?, retire_after = ? WHERE state = ?",
                (KeyState.RETIRING.value, now, retire_after, KeyState.ACTIVE.value),
            )
            self._exec(
                conn,
                "UPDATE signing_keys SET state = ?, activated_at = ? WHERE kid = ?",
                (KeyState.ACTIVE.value, now, kid),
            )
            return True

    def retire(self, kid: str, *, now: int) -> bool:
        with self._write(lock_keys=True) as conn:
            cur = self._exec(
                conn,
                "UPDATE signing_keys SET state = ?, retired_at = ? WHERE kid = ? AND state = ?",
                (KeyState.RETIRED.value, now, kid, KeyState.RETIRING.value),
            )
            return bool(cur.rowcount == 1)

    def revoke(self, kid: str, *, now: int) -> StoredKey | None:
        with self._write(lock_keys=True) as conn:
            row = self._exec(conn, f"SELECT {KEY_COLUMNS} FROM signing_keys WHERE kid = ?", (kid,)).fetchone()
            if row is None or row[1] in (KeyState.RETIRED.value, KeyState.REVOKED.value):
                return None
            self._exec(
                conn,
                "UPDATE signing_keys SET state = ?, revoked_at = ? WHERE kid = ?",
                (KeyState.REVOKED.value, now, kid),
            )
            return _key_from_row(row)

    def rewrap(self, reencrypt: Reencrypt, *, new_kek_id: str) -> int:
        changed = 0
        with self._write(lock_keys=True) as conn:
            for kind, table, column, name_column in (
                ("key", "signing_keys", "private_key_enc", "kid"),
                ("secret", "service_secrets", "value_enc", "name"),
            ):
                rows = self._exec(
                    conn,
                    f"SELECT {name_column}, kek_id, {column} FROM {table} WHERE kek_id <> ?",
                    (new_kek_id,),
                ).fetchall()
                for name, kek_id, blob in rows:
                    self._exec(
                        conn,
                        f"UPDATE {table} SET {column} = ?, kek_id = ? WHERE {name_column} = ?",
                        (reencrypt(kind, str(name), str(kek_id), bytes(blob)), new_kek_id, name),
                    )
                    changed += 1
        return changed

    # -- service secrets -------------------------------------------------------------------------

    def list_secrets(self) -> list[tuple[str, bytes, str]]:
        rows = self._query("SELECT name, value_enc, kek_id FROM service_secrets ORDER BY name")
        return [(str(r[0]), bytes(r[1]), str(r[2])) for r in rows]

    def get_or_create_secret(self, name: str, value_enc: bytes, kek_id: str) -> tuple[bytes, str]:
        with self._write(lock_keys=True) as conn:
            row = self._exec(
                conn, "SELECT value_enc, kek_id FROM service_secrets WHERE name = ?", (name,)
            ).fetchone()
            if row is not None:
                return bytes(row[0]), str(row[1])
            self._exec(
                conn,
                "INSERT INTO service_secrets (name, value_enc, kek_id) VALUES (?, ?, ?)",
                (name, value_enc, kek_id),
            )
            return value_enc, kek_id

    # -- revocations -----------------------------------------------------------------------------

    def add_revocation(self, entry: Revocation, *, now: int) -> int:
        with self._write() as conn:
            # the counter's row stays locked until commit, so sequences commit in order: a reader
            # that has seen N never later finds an entry below N appear
            self._exec(conn, "UPDATE revocation_counter SET last = last + 1 WHERE id = 1")
            sequence = int(self._exec(conn, "SELECT last FROM revocation_counter WHERE id = 1").fetchone()[0])
            self._exec(conn, "DELETE FROM revocations WHERE expires_at <= ?", (now,))
            self._exec(
                conn,
                "INSERT INTO revocations (sequence, jti, client_id, not_before, expires_at, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (sequence, entry.jti, entry.client_id, entry.not_before, entry.expires_at, now),
            )
            return sequence

    def revocations_after(self, sequence: int) -> list[tuple[int, Revocation]]:
        rows = self._query(
            f"SELECT {REVOCATION_COLUMNS} FROM revocations WHERE sequence > ? ORDER BY sequence", (sequence,)
        )
        return [(int(r[0]), _revocation_from_row(r)) for r in rows]

    def revocation_snapshot(self, now: int) -> tuple[int, list[Revocation]]:
        # the counter first: an entry committed between the two reads has a higher sequence and is
        # left out, so that a resume from the returned sequence picks it up
        last = int(self._query("SELECT last FROM revocation_counter WHERE id = 1")[0][0])
        rows = self._query(
            f"SELECT {REVOCATION_COLUMNS} FROM revocations WHERE sequence <= ? AND expires_at > ? "
            "ORDER BY sequence",
            (last, now),
        )
        return last, [_revocation_from_row(r) for r in rows]

    def oldest_revocation_sequence(self) -> int:
        return int(self._query("SELECT COALESCE(MIN(sequence), 0) FROM revocations")[0][0])


def _revocation_from_row(row: Sequence[Any]) -> Revocation:
    return Revocation(
        expires_at=int(row[4]),
        jti=None if row[1] is None else str(row[1]),
        client_id=None if row[2] is None else str(row[2]),
        not_before=int(row[3]),
    )


def iter_migrations(
    current: int, migrations: Sequence[tuple[int, list[str]]]
) -> Iterator[tuple[int, list[str]]]:
    """The migrations still to apply over schema version ``current``; refuses a newer schema."""
    latest = migrations[-1][0]
    if current > latest:
        raise StoreError(
            f"the database schema is version {current}, newer than this authsvc knows ({latest}); "
            "upgrade authsvc"
        )
    return iter([(v, s) for v, s in migrations if v > current])
