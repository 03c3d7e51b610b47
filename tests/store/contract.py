"""Shared values for the store contract suite (every :class:`~authsvc.store.base.Store`)."""

from __future__ import annotations

from authsvc.core.clients import Client, new_client
from authsvc.core.keys import KeyState
from authsvc.store.base import StoredKey

__all__ = ["make_client", "make_key"]


def make_client(client_id: str = "shop", *, now: int = 1_700_000_000) -> Client:
    return new_client(
        client_id=client_id,
        secret_hash=f"hmac-sha256${client_id}-digest",
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
