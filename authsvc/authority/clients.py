"""The client registry: registering clients, enabling and disabling them, rotating their secrets.
Needs only the store's client interface and the deployment's secret hasher."""

from __future__ import annotations

from collections.abc import Callable

from authsvc.core.clients import DEFAULT_TOKEN_TTL, Client, new_client, validate_client_id
from authsvc.core.errors import NotFound
from authsvc.core.keys import b64url
from authsvc.core.ports import Clock, RandomSource
from authsvc.core.secrets import SecretHasher, generate_client_secret
from authsvc.store.base import ClientStore

__all__ = ["ClientRegistry"]


class ClientRegistry:
    """Registered clients. Secrets are generated here, returned once, and stored only as a keyed
    hash."""

    def __init__(
        self, store: ClientStore, hasher: Callable[[], SecretHasher], *, clock: Clock, random: RandomSource
    ) -> None:
        self.store = store
        self._hasher = hasher
        self.clock = clock
        self.random = random

    def _now(self) -> int:
        return int(self.clock.now())

    def create_client(
        self,
        *,
        client_id: str | None,
        scopes: list[str],
        audiences: list[str],
        token_ttl: int = DEFAULT_TOKEN_TTL,
    ) -> tuple[Client, str]:
        """Register a client; returns it and its secret, which is not stored and cannot be
        shown again."""
        if client_id is None:
            client_id = "client_" + b64url(self.random.token_bytes(12))
        secret = generate_client_secret(self.random)
        client = new_client(
            client_id=client_id,
            secret_hash=self._hasher().hash(secret),
            scopes=scopes,
            audiences=audiences,
            token_ttl=token_ttl,
            now=self._now(),
        )
        self.store.create_client(client)
        return client, secret

    def get_client(self, client_id: str) -> Client:
        client = self.store.get_client(validate_client_id(client_id))
        if client is None:
            raise NotFound(f"no client {client_id!r}")
        return client

    def list_clients(self) -> list[Client]:
        return self.store.list_clients()

    def set_enabled(self, client_id: str, enabled: bool) -> Client:
        """Enable or disable a client. Only that column changes, so a concurrent secret rotation
        cannot undo a disable."""
        client = self.store.update_client_fields(
            validate_client_id(client_id), {"enabled": enabled, "updated_at": self._now()}
        )
        if client is None:
            raise NotFound(f"no client {client_id!r}")
        return client

    def rotate_secret(self, client_id: str) -> tuple[Client, str]:
        """Give the client a new secret; the old one stops working at once (within the
        servers' client-cache lifetime)."""
        secret = generate_client_secret(self.random)
        client = self.store.update_client_fields(
            validate_client_id(client_id),
            {"secret_hash": self._hasher().hash(secret), "updated_at": self._now()},
        )
        if client is None:
            raise NotFound(f"no client {client_id!r}")
        return client, secret
