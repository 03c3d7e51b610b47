"""Client authentication methods as small registered classes (RFC 6749 §2.3), beside the grants.

Each client is registered with exactly one method (``Client.auth_method``); a request presents
credentials of one method (:class:`~authsvc.core.client_auth.PresentedCredentials`, read by
the edge). The :class:`~authsvc.core.grants.TokenEndpoint` keeps one handler per presented method
and asks it two things: :meth:`~ClientAuthHandler.precheck` (is the request well formed, before
any lookup) and :meth:`~ClientAuthHandler.check` (do the credentials prove to be this client).
Whether the client's registration accepts the presented method at all is the endpoint's rule,
from the handler's :attr:`~ClientAuthHandler.accepted_registrations`; a request presenting
another method than the registered one is ``invalid_client`` (audit reason
``auth_method_not_allowed``).

Adding a method (``tls_client_auth``, RFC 8705 §2) is adding a class here: a handler whose
``check`` reads what the edge put into the presented credentials (for mTLS, the peer
certificate) and compares it with what the client registered.
"""

from __future__ import annotations

from typing import Protocol

from authsvc.core.client_auth import PresentedCredentials
from authsvc.core.clients import Client, ClientAuthMethod
from authsvc.core.errors import InvalidClient, InvalidRequest, with_detail
from authsvc.core.ports import Clock
from authsvc.core.secrets import MAX_SECRET_LENGTH, SecretHasher

__all__ = ["ClientAuthHandler", "ClientSecretBasic", "ClientSecretPost"]


class ClientAuthHandler(Protocol):
    """One registered client authentication method."""

    method: ClientAuthMethod
    """The method a request presents, which selects this handler."""
    accepted_registrations: frozenset[ClientAuthMethod]
    """The registered methods that accept a request presenting :attr:`method`."""
    signing_algs: tuple[str, ...]
    """JWS algorithms it verifies (RFC 8414 ``token_endpoint_auth_signing_alg_values_supported``)."""
    blocking: bool
    """True if :meth:`check` may wait on I/O (a store write, a key fetch): never run on an event loop."""

    def precheck(self, presented: PresentedCredentials) -> None:
        """Refuse what is missing or malformed before any client is looked up."""

    def check(self, presented: PresentedCredentials, client: Client, *, registered: bool) -> str | None:
        """None if ``presented`` proves to be ``client``, else the internal reason of the failure
        (audit log only). ``registered`` is False when ``client`` is the endpoint's decoy (the id is
        unknown, or registered for another method): do the same work as for a real client, so that
        timing tells nothing, and fail."""


class _ClientSecret:
    """RFC 6749 §2.3.1: a service-generated secret, checked as a keyed hash in constant time.

    The client's current secret is accepted, and its previous one until
    ``previous_secret_expires_at`` (the grace of a rotation), never after. Two keyed-hash
    comparisons run for every request, the second against the decoy hash when there is no previous
    secret, so that timing tells nobody whether a rotation is under way; the grace is checked
    against the clock here, not when the client was cached, so it ends on time whatever the cache
    holds.
    """

    method: ClientAuthMethod
    accepted_registrations: frozenset[ClientAuthMethod]
    signing_algs: tuple[str, ...] = ()
    blocking = False

    def __init__(self, hasher: SecretHasher, clock: Clock) -> None:
        self._hasher = hasher
        self._clock = clock

    def precheck(self, presented: PresentedCredentials) -> None:
        if not presented.client_secret:
            raise with_detail(InvalidClient("client authentication is required"), "no_client_secret")
        if len(presented.client_secret) > MAX_SECRET_LENGTH:
            raise InvalidRequest("client_secret is too long")

    def check(self, presented: PresentedCredentials, client: Client, *, registered: bool) -> str | None:
        secret = presented.client_secret
        stored = client.secret_hash if registered else self._hasher.unknown_client_hash
        ok = self._hasher.verify(secret, stored)
        previous = client.previous_secret_hash if registered else None
        ok_previous = self._hasher.verify(
            secret, previous if previous is not None else self._hasher.unknown_client_hash
        )
        in_grace = registered and client.previous_secret_valid(self._clock.now())
        if ok or (ok_previous and in_grace):
            return None
        return "previous_secret_expired" if ok_previous else "wrong_secret"


class ClientSecretBasic(_ClientSecret):
    """``client_secret_basic``: the secret in an ``Authorization: Basic`` header (§2.3.1)."""

    method = ClientAuthMethod.CLIENT_SECRET_BASIC
    accepted_registrations = frozenset({ClientAuthMethod.CLIENT_SECRET_BASIC})


class ClientSecretPost(_ClientSecret):
    """``client_secret_post``: the secret in the request body (§2.3.1). Accepted from clients
    registered with it and, as before methods were registered, from ``client_secret_basic`` ones."""

    method = ClientAuthMethod.CLIENT_SECRET_POST
    accepted_registrations = frozenset(
        {ClientAuthMethod.CLIENT_SECRET_BASIC, ClientAuthMethod.CLIENT_SECRET_POST}
    )
