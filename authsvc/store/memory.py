"""An in-memory store: the test fake, and a store for embedding without persistence."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Collection, Mapping

from authsvc.core.clients import Client
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

__all__ = ["MemoryStore"]


class MemoryStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[str, Client] = {}
        self._keys: dict[str, StoredKey] = {}
        self._secrets: dict[str, tuple[bytes, str]] = {}
        self._revocations: dict[int, Revocation] = {}  # insertion order is sequence order
        self._last_sequence = 0
        self._assertion_jtis: dict[tuple[str, str], int] = {}

    def get_client(self, client_id: str) -> Client | None:
        with self._lock:
            return self._clients.get(client_id)

    def list_clients(self) -> list[Client]:
        with self._lock:
            return [self._clients[k] for k in sorted(self._clients)]

    def create_client(self, client: Client) -> None:
        with self._lock:
            if client.client_id in self._clients:
                raise AlreadyExists(f"client {client.client_id!r} exists already")
            self._clients[client.client_id] = client

    def update_client(self, client: Client) -> bool:
        with self._lock:
            if client.client_id not in self._clients:
                return False
            self._clients[client.client_id] = client
            return True

    def update_client_fields(
        self,
        client_id: str,
        fields: Mapping[str, object],
        *,
        expect: Mapping[str, object] | None = None,
    ) -> Client | None:
        expect = expect or {}
        if (set(fields) | set(expect)) - UPDATABLE_CLIENT_FIELDS or not fields:
            raise ValueError("cannot update those client fields")
        with self._lock:
            client = self._clients.get(client_id)
            if client is None:
                return None
            if any(getattr(client, name) != value for name, value in expect.items()):
                return None
            client = client.with_changes(**fields)
            self._clients[client_id] = client
            return client

    def list_keys(self) -> list[StoredKey]:
        with self._lock:
            return sorted(self._keys.values(), key=lambda k: (k.created_at, k.kid))

    def _check_kek_ids(self, kek_ids: Collection[str] | None) -> None:
        if kek_ids is None:
            return
        stored = {k.kek_id for k in self._keys.values()} | {kek_id for _, kek_id in self._secrets.values()}
        unknown = sorted(stored - set(kek_ids))
        if unknown:
            raise StaleKek(
                f"the store holds keys under key-encryption key {', '.join(unknown)}, which this process "
                "was not given; restart it with that KEK first in its list"
            )

    def activate_first_key(self, key: StoredKey, *, kek_ids: Collection[str] | None = None) -> StoredKey:
        with self._lock:
            for existing in self._keys.values():
                if existing.state == KeyState.ACTIVE:
                    return existing
            self._check_kek_ids(kek_ids)
            key = dataclasses.replace(key, state=KeyState.ACTIVE.value)
            self._keys[key.kid] = key
            return key

    def add_key(
        self, key: StoredKey, *, only_if_no_next: bool = False, kek_ids: Collection[str] | None = None
    ) -> bool:
        with self._lock:
            if key.kid in self._keys:
                raise AlreadyExists(f"key {key.kid} exists already")
            if key.state == KeyState.ACTIVE and any(k.state == KeyState.ACTIVE for k in self._keys.values()):
                raise StoreError("a second active key")
            if only_if_no_next and any(k.state == KeyState.NEXT for k in self._keys.values()):
                return False
            self._check_kek_ids(kek_ids)
            self._keys[key.kid] = key
            return True

    def promote(self, kid: str, *, now: int, retire_after: int) -> bool:
        with self._lock:
            key = self._keys.get(kid)
            if key is None or key.state != KeyState.NEXT:
                return False
            for other in list(self._keys.values()):
                if other.state == KeyState.ACTIVE:
                    self._keys[other.kid] = dataclasses.replace(
                        other, state=KeyState.RETIRING.value, deactivated_at=now, retire_after=retire_after
                    )
            self._keys[kid] = dataclasses.replace(key, state=KeyState.ACTIVE.value, activated_at=now)
            return True

    def retire(self, kid: str, *, now: int) -> bool:
        with self._lock:
            key = self._keys.get(kid)
            if key is None or key.state != KeyState.RETIRING:
                return False
            self._keys[kid] = dataclasses.replace(key, state=KeyState.RETIRED.value, retired_at=now)
            return True

    def revoke(self, kid: str, *, now: int) -> StoredKey | None:
        with self._lock:
            key = self._keys.get(kid)
            if key is None or key.state in (KeyState.RETIRED, KeyState.REVOKED):
                return None
            self._keys[kid] = dataclasses.replace(key, state=KeyState.REVOKED.value, revoked_at=now)
            return key

    def rewrap(self, reencrypt: Reencrypt, *, new_kek_id: str) -> int:
        with self._lock:
            keys = {
                kid: reencrypt("key", kid, k.kek_id, k.private_key_enc)
                for kid, k in self._keys.items()
                if k.kek_id != new_kek_id
            }
            secrets = {
                name: reencrypt("secret", name, kek_id, blob)
                for name, (blob, kek_id) in self._secrets.items()
                if kek_id != new_kek_id
            }
            for kid, blob in keys.items():
                self._keys[kid] = dataclasses.replace(
                    self._keys[kid], private_key_enc=blob, kek_id=new_kek_id
                )
            for name, blob in secrets.items():
                self._secrets[name] = (blob, new_kek_id)
            return len(keys) + len(secrets)

    def list_secrets(self) -> list[tuple[str, bytes, str]]:
        with self._lock:
            return [(name, blob, kek_id) for name, (blob, kek_id) in sorted(self._secrets.items())]

    def get_or_create_secret(self, name: str, value_enc: bytes, kek_id: str) -> tuple[bytes, str]:
        with self._lock:
            return self._secrets.setdefault(name, (value_enc, kek_id))

    def add_revocation(self, entry: Revocation, *, now: int) -> int:
        with self._lock:
            self._last_sequence += 1
            for sequence in [s for s, e in self._revocations.items() if e.expires_at <= now]:
                del self._revocations[sequence]
            self._revocations[self._last_sequence] = entry
            return self._last_sequence

    def revocations_after(self, sequence: int) -> list[tuple[int, Revocation]]:
        with self._lock:
            return [(s, e) for s, e in self._revocations.items() if s > sequence]

    def revocation_snapshot(self, now: int) -> tuple[int, list[Revocation]]:
        with self._lock:
            return self._last_sequence, [e for e in self._revocations.values() if e.expires_at > now]

    def oldest_revocation_sequence(self) -> int:
        with self._lock:
            return next(iter(self._revocations), 0)

    def use_assertion_jti(self, client_id: str, jti: str, *, expires_at: int, now: int) -> bool:
        with self._lock:
            for key in [k for k, exp in self._assertion_jtis.items() if exp <= now]:
                del self._assertion_jtis[key]
            if (client_id, jti) in self._assertion_jtis:
                return False
            self._assertion_jtis[(client_id, jti)] = expires_at
            return True

    def close(self) -> None:
        pass
