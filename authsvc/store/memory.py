"""An in-memory store: the test fake, and a store for embedding without persistence."""

from __future__ import annotations

import dataclasses
import threading

from authsvc.core.clients import Client
from authsvc.core.keys import KeyState
from authsvc.store.base import AlreadyExists, StoredKey

__all__ = ["MemoryStore"]


class MemoryStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[str, Client] = {}
        self._keys: dict[str, StoredKey] = {}
        self._secrets: dict[str, tuple[bytes, str]] = {}

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

    def list_keys(self) -> list[StoredKey]:
        with self._lock:
            return sorted(self._keys.values(), key=lambda k: (k.created_at, k.kid))

    def activate_first_key(self, key: StoredKey) -> StoredKey:
        with self._lock:
            for existing in self._keys.values():
                if existing.state == KeyState.ACTIVE:
                    return existing
            key = dataclasses.replace(key, state=KeyState.ACTIVE.value)
            self._keys[key.kid] = key
            return key

    def get_or_create_secret(self, name: str, value_enc: bytes, kek_id: str) -> tuple[bytes, str]:
        with self._lock:
            return self._secrets.setdefault(name, (value_enc, kek_id))

    def close(self) -> None:
        pass
