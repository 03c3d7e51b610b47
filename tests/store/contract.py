"""Shared values for the store contract suite (every :class:`~authsvc.store.base.Store`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from authsvc.core.clients import SECRET_METHODS, AuthRegistration, Client, new_client
from authsvc.core.keys import KeyState
from authsvc.store.base import Store, StoredKey
from authsvc.store.memory import MemoryStore
from authsvc.store.sqlite import SQLiteStore

__all__ = ["STORE_KINDS", "make_client", "make_key", "open_store"]

STORE_KINDS = ["memory", "sqlite", "postgres"]


def open_store(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Store:
    """A fresh, empty store of ``kind`` (PostgreSQL: the run's database, schema emptied)."""
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        return SQLiteStore(tmp_path / "authsvc.db")
    from authsvc.store.postgres import PostgresStore

    return PostgresStore(request.getfixturevalue("pg_url"))


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Each kind of store in turn, fresh and empty, closed afterwards (import it into a module
    to run its tests on every store)."""
    s = open_store(request.param, tmp_path, request)
    try:
        yield s
    finally:
        s.close()


def make_client(
    client_id: str = "shop", *, now: int = 1_700_000_000, auth: AuthRegistration | None = None
) -> Client:
    """A client; ``auth`` registers another method than client_secret_basic (no secret but for
    the secret methods)."""
    has_secret = auth is None or auth.method in SECRET_METHODS
    return new_client(
        client_id=client_id,
        secret_hash=f"hmac-sha256${client_id}-digest" if has_secret else "",
        auth=auth,
        scopes=["payments:read", "payments:write"],
        default_scopes=["payments:read"],
        audiences=["payments", "ledger"],
        token_ttl=600,
        now=now,
    )


def make_key(kid: str, *, created_at: int = 1_700_000_000, state: KeyState = KeyState.ACTIVE) -> StoredKey:
    return StoredKey(
        kid=kid,
        state=state.value,
        public_jwk=f'{{"kid":"{kid}"}}',
        private_key_enc=b"\x00ciphertext-of-" + kid.encode(),
        kek_id="kek-1",
        created_at=created_at,
        activated_at=created_at,
    )
