"""The client registry: registering clients, enabling and disabling them, rotating their secrets.
Needs only the store's client interface and the deployment's secret hasher."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from authsvc.core.client_keys import parse_client_jwks
from authsvc.core.clients import (
    DEFAULT_TOKEN_TTL,
    SECRET_METHODS,
    AuthRegistration,
    Client,
    ClientAuthMethod,
    new_client,
    validate_client_id,
)
from authsvc.core.errors import InvalidRequest, NotFound
from authsvc.core.keys import b64url
from authsvc.core.ports import Clock, RandomSource
from authsvc.core.secrets import SecretHasher, generate_client_secret
from authsvc.logsetup import audit
from authsvc.store.base import ClientStore

__all__ = ["MAX_SECRET_GRACE", "ClientRegistry"]

MAX_SECRET_GRACE = 7 * 86_400
"""The longest grace period a rotation may give the previous secret (seconds)."""


def _iso(epoch: int | None) -> str:
    return "-" if epoch is None else datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ClientRegistry:
    """Registered clients. Secrets are generated here, returned once, and stored only as a keyed
    hash; a client that authenticates otherwise (private_key_jwt, tls_client_auth) has none."""

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
        auth: AuthRegistration | None = None,
    ) -> tuple[Client, str]:
        """Register a client that authenticates with a secret (``client_secret_basic`` unless
        ``auth`` says ``client_secret_post``); returns it and its secret, which is not stored and
        cannot be shown again."""
        if auth is not None and auth.method not in SECRET_METHODS:
            raise InvalidRequest(f"a {auth.method.value} client has no secret: register it with register()")
        client, secret = self.register(
            client_id=client_id, scopes=scopes, audiences=audiences, token_ttl=token_ttl, auth=auth
        )
        assert secret is not None
        return client, secret

    def register(
        self,
        *,
        client_id: str | None,
        scopes: list[str],
        audiences: list[str],
        token_ttl: int = DEFAULT_TOKEN_TTL,
        auth: AuthRegistration | None = None,
    ) -> tuple[Client, str | None]:
        """Register a client with the authentication method and data of ``auth`` (default
        ``client_secret_basic``); returns it and, for the secret methods, its secret (shown once),
        else None."""
        if client_id is None:
            client_id = "client_" + b64url(self.random.token_bytes(12))
        auth = auth or AuthRegistration()
        secret = generate_client_secret(self.random) if auth.method in SECRET_METHODS else None
        client = new_client(
            client_id=client_id,
            secret_hash="" if secret is None else self._hasher().hash(secret),
            scopes=scopes,
            audiences=audiences,
            token_ttl=token_ttl,
            now=self._now(),
            auth=auth,
        )
        self.store.create_client(client)
        audit(
            "client.created",
            {"client_id": client.client_id, "scope": " ".join(client.allowed_scopes),
             "audience": list(client.allowed_audiences), "token_ttl": client.token_ttl,
             "auth_method": client.auth_method.value},
        )  # fmt: skip
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
        audit("client.enabled" if enabled else "client.disabled", {"client_id": client.client_id})
        return client

    def rotate_secret(self, client_id: str, *, grace: int = 0, end_grace: bool = False) -> tuple[Client, str]:
        """Give the client a new secret, accepted at once (by a running server within its
        client-cache lifetime). The old secret stays accepted for ``grace`` seconds, then never
        again; with ``grace=0`` it stops at once.

        A client has at most two live secrets: during the grace of a previous rotation a new one
        is refused, unless ``end_grace`` says to stop accepting the oldest secret now. Two
        rotations racing are a compare-and-set on the current secret: one wins, the other is
        refused and changes nothing.
        """
        if not 0 <= grace <= MAX_SECRET_GRACE:
            raise InvalidRequest(f"the grace period must be between 0 and {MAX_SECRET_GRACE} seconds")
        client = self.get_client(client_id)
        if not client.has_secret:
            raise InvalidRequest(
                f"client {client.client_id!r} authenticates with {client.auth_method.value}: it has no secret"
            )
        now = self._now()
        if client.previous_secret_valid(now) and not end_grace:
            raise InvalidRequest(
                f"client {client.client_id!r} is still in the grace period of its last rotation (its "
                f"previous secret is accepted until {_iso(client.previous_secret_expires_at)}); wait, or "
                "pass --end-grace to stop accepting that previous secret now"
            )
        secret = generate_client_secret(self.random)
        updated = self.store.update_client_fields(
            client.client_id,
            {
                "secret_hash": self._hasher().hash(secret),
                "previous_secret_hash": client.secret_hash if grace > 0 else None,
                "previous_secret_expires_at": now + grace if grace > 0 else None,
                "updated_at": now,
            },
            expect={"secret_hash": client.secret_hash},
        )
        if updated is None:
            self.get_client(client.client_id)  # NotFound if it was deleted meanwhile
            raise InvalidRequest(
                f"client {client.client_id!r} was given another secret meanwhile; nothing changed, run again"
            )
        audit(
            "client.secret_rotated",
            {"client_id": updated.client_id, "grace": grace, "ended_grace": end_grace or None},
        )
        return updated, secret

    def set_keys(
        self,
        client_id: str,
        *,
        jwks: str | None = None,
        jwks_uri: str | None = None,
        signing_algs: tuple[str, ...] | None = None,
    ) -> Client:
        """Replace a private_key_jwt client's keys: a JWK Set (``jwks``) or the URL it publishes
        one at (``jwks_uri``), exactly one, checked as at registration
        (:meth:`AuthRegistration.validated`); ``signing_algs`` None keeps the client's algorithms.

        The new keys replace the old ones whole: from the moment a running server reads the
        record again (its client-cache lifetime) an assertion signed with a key that left the set
        is refused. Two replacements racing are a compare-and-set on the stored keys: one wins,
        the other is refused and changes nothing. A client of another method has no keys to set
        (:class:`InvalidRequest`).
        """
        client = self.get_client(client_id)
        if client.auth_method is not ClientAuthMethod.PRIVATE_KEY_JWT:
            raise InvalidRequest(
                f"client {client.client_id!r} authenticates with {client.auth_method.value}: only a "
                "private_key_jwt client has keys to set"
            )
        keys = AuthRegistration(
            method=ClientAuthMethod.PRIVATE_KEY_JWT,
            jwks=jwks,
            jwks_uri=jwks_uri,
            signing_algs=signing_algs or client.signing_algs or None,
        ).validated()
        updated = self.store.update_client_fields(
            client.client_id,
            {"jwks": keys.jwks, "jwks_uri": keys.jwks_uri, "signing_algs": keys.signing_algs,
             "updated_at": self._now()},
            expect={"jwks": client.jwks, "jwks_uri": client.jwks_uri},
        )  # fmt: skip
        if updated is None:
            self.get_client(client.client_id)  # NotFound if it was deleted meanwhile
            raise InvalidRequest(
                f"client {client.client_id!r} was given other keys meanwhile; nothing changed, run again"
            )
        audit(
            "client.keys_set",
            {"client_id": updated.client_id, "keys_from": "jwks" if keys.jwks is not None else "jwks_uri",
             "kids": None if keys.jwks is None else [k[:64] for k in parse_client_jwks(keys.jwks)[0].keys],
             "jwks_uri": None if keys.jwks_uri is None else keys.jwks_uri.partition("?")[0],
             "signing_algs": list(updated.signing_algs)},
        )  # fmt: skip
        return updated
