"""The narrow interfaces every store implements (SQLite, in-memory, later PostgreSQL).

Stores persist values and enforce uniqueness; they know nothing of OAuth or cryptography.
Private keys and the secret-hashing pepper reach a store only as ciphertext.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from authsvc.core.clients import Client

__all__ = ["AlreadyExists", "ClientStore", "KeyStore", "SecretStore", "Store", "StoreError", "StoredKey"]


class StoreError(Exception):
    """Base of the errors a store raises."""


class AlreadyExists(StoreError):
    """A row with this identity exists already."""


@dataclass(frozen=True, slots=True)
class StoredKey:
    """A signing key as persisted: public JWK in JSON, private key encrypted under ``kek_id``."""

    kid: str
    state: str
    public_jwk: str
    private_key_enc: bytes
    kek_id: str
    created_at: int
    activated_at: int | None = None
    retired_at: int | None = None


class ClientStore(Protocol):
    def get_client(self, client_id: str) -> Client | None: ...

    def list_clients(self) -> list[Client]: ...

    def create_client(self, client: Client) -> None:
        """Insert; raises :class:`AlreadyExists` if the id is taken."""

    def update_client(self, client: Client) -> bool:
        """Replace the row with the same id; returns False if there is none."""


class KeyStore(Protocol):
    def list_keys(self) -> list[StoredKey]: ...

    def activate_first_key(self, key: StoredKey) -> StoredKey:
        """Insert ``key`` (state ``active``) unless an active key exists; return the active key.
        Atomic, so that processes starting at once agree on one key."""


class SecretStore(Protocol):
    def get_or_create_secret(self, name: str, value_enc: bytes, kek_id: str) -> tuple[bytes, str]:
        """Return the encrypted service secret ``name`` and its KEK id, storing the given one
        first if there is none. Atomic."""


class Store(ClientStore, KeyStore, SecretStore, Protocol):
    def close(self) -> None: ...
