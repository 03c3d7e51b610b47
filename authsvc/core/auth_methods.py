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

Adding a method is adding a class here: :class:`TlsClientAuth` (RFC 8705 §2) is one, a handler
whose ``check`` reads what the edge put into the presented credentials (the peer certificate of a
mutual-TLS connection) and compares it with what the client registered.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

from authsvc.core.client_assertion import (
    CLIENT_ASSERTION_TYPE,
    HEADER_MEMBERS,
    MAX_ASSERTION_LENGTH,
    MAX_JTI_LENGTH,
    MAX_KID_LENGTH,
    TYPES,
    AssertionPolicy,
    AssertionReplayGuard,
    ClientKeyLookup,
    ClientKeysUnavailable,
    ParsedAssertion,
    assertion_number,
    parse_assertion,
)
from authsvc.core.client_auth import PresentedCredentials
from authsvc.core.client_keys import SUPPORTED_ALGS, decoy_key, verify_signature
from authsvc.core.clients import Client, ClientAuthMethod
from authsvc.core.errors import InvalidClient, InvalidRequest, with_detail
from authsvc.core.ports import Clock
from authsvc.core.secrets import MAX_SECRET_LENGTH, SecretHasher

__all__ = ["ClientAuthHandler", "ClientSecretBasic", "ClientSecretPost", "PrivateKeyJwt", "TlsClientAuth"]


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


class PrivateKeyJwt:
    """``private_key_jwt`` (RFC 7523 §2.2, §3), checked as :mod:`authsvc.core.client_assertion`
    says. ``keys`` gives a client's keys, ``replay`` records the ``jti`` of every accepted
    assertion; authenticating writes to the store, so it never runs on an event loop
    (:attr:`blocking`)."""

    method = ClientAuthMethod.PRIVATE_KEY_JWT
    accepted_registrations = frozenset({ClientAuthMethod.PRIVATE_KEY_JWT})
    signing_algs: tuple[str, ...] = SUPPORTED_ALGS
    blocking = True

    def __init__(
        self, *, keys: ClientKeyLookup, replay: AssertionReplayGuard, policy: AssertionPolicy, clock: Clock
    ) -> None:
        self._keys = keys
        self._replay = replay
        self.policy = policy
        self._clock = clock

    def precheck(self, presented: PresentedCredentials) -> None:
        if presented.client_assertion_type != CLIENT_ASSERTION_TYPE:
            raise with_detail(
                InvalidClient(f"client_assertion_type must be {CLIENT_ASSERTION_TYPE}"),
                "assertion_type_unsupported",
            )
        if not presented.client_assertion:
            raise with_detail(InvalidClient("client authentication is required"), "no_client_assertion")
        if len(presented.client_assertion) > MAX_ASSERTION_LENGTH:
            raise InvalidRequest("client_assertion is too long")

    def check(self, presented: PresentedCredentials, client: Client, *, registered: bool) -> str | None:
        try:
            parsed = parse_assertion(presented.client_assertion)
        except InvalidClient:
            return "assertion_malformed"
        alg = parsed.alg
        if alg not in SUPPORTED_ALGS:
            return "alg_not_supported"  # none, HS256, ...: no key is ever tried with it
        now = self._clock.now()
        failure = self._header_failure(parsed) or self._claims_failure(
            parsed.claims, presented.client_id, now
        )
        pinned = registered and alg in client.signing_algs
        key = None
        if pinned:
            try:
                key = self._keys.keys_for(client, parsed.kid).select(parsed.kid, alg)
            except ClientKeysUnavailable:
                failure = failure or "client_keys_unavailable"
            if key is None:
                failure = failure or "unknown_kid"
        # the signature is checked whatever failed before, against a decoy key when there is no
        # real one, so that the time a refusal takes tells nothing of the client
        signature_ok = verify_signature(key or decoy_key(alg), alg, parsed.signing_input, parsed.signature)
        if not registered:
            return "unknown_client"
        if not pinned:
            return "alg_not_allowed"
        if failure is not None:
            return failure
        if not signature_ok:
            return "bad_signature"
        expires_at = math.ceil(float(parsed.claims["exp"])) + self.policy.leeway
        if not self._replay.use_assertion_jti(
            client.client_id, parsed.claims["jti"], expires_at=expires_at, now=int(now)
        ):
            return "jti_replayed"
        return None

    @staticmethod
    def _header_failure(parsed: ParsedAssertion) -> str | None:
        header = parsed.header
        if set(header) - HEADER_MEMBERS:
            return "header_member_not_allowed"
        typ = header.get("typ")
        if typ is not None and (
            not isinstance(typ, str) or typ.lower().removeprefix("application/") not in TYPES
        ):
            return "typ_not_allowed"
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or not 0 < len(kid) <= MAX_KID_LENGTH):
            return "kid_malformed"
        return None

    def _claims_failure(self, claims: dict[str, Any], client_id: str, now: float) -> str | None:
        policy = self.policy
        for name in ("sub", "iss"):  # sub names the client (a client_id parameter must agree), iss too
            value = claims.get(name)
            if value is None:
                return f"missing_{name}"
            if value != client_id:
                return f"{name}_mismatch"
        audience = policy.audience_failure(claims.get("aud"))
        if audience is not None:
            return audience
        if "exp" not in claims:
            return "missing_exp"
        exp = assertion_number(claims["exp"])
        if exp is None:
            return "exp_malformed"
        if now >= exp + policy.leeway:
            return "expired"
        if exp > now + policy.max_lifetime + policy.leeway:
            return "exp_too_far_ahead"
        for name, reason in (("nbf", "not_yet_valid"), ("iat", "issued_in_the_future")):
            if name in claims:
                value = assertion_number(claims[name])
                if value is None:
                    return f"{name}_malformed"
                if value > now + policy.leeway:
                    return reason
        jti = claims.get("jti")
        if jti is None:
            return "missing_jti"
        if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_LENGTH or not jti.isprintable():
            return "jti_malformed"
        return None


class TlsClientAuth:
    """``tls_client_auth`` (RFC 8705 §2.1): the client proves itself with the certificate of the
    mutual-TLS connection, which the TLS stack has already verified against ``--client-ca``. The
    certificate must carry what the client registered (§2.1.2): its ``tls_client_auth_san_dns``
    as one of its dNSName entries, matched exactly (DNS names compare case-insensitively; no
    wildcards), or its ``tls_client_auth_subject_dn`` as its subject, the RFC 4514 string
    compared exactly. A request without a certificate (a plain port) never gets here as this
    method (:func:`~authsvc.core.client_auth.presented_credentials`), and is refused if it does."""

    method = ClientAuthMethod.TLS_CLIENT_AUTH
    accepted_registrations = frozenset({ClientAuthMethod.TLS_CLIENT_AUTH})
    signing_algs: tuple[str, ...] = ()
    blocking = False

    def precheck(self, presented: PresentedCredentials) -> None:
        if presented.client_certificate is None:
            raise with_detail(
                InvalidClient("tls_client_auth needs a client certificate (the mutual-TLS port)"),
                "no_client_certificate",
            )

    def check(self, presented: PresentedCredentials, client: Client, *, registered: bool) -> str | None:
        certificate = presented.client_certificate
        if certificate is None:
            return "no_client_certificate"
        # the decoy registers neither: the same comparisons run, and fail
        san_dns = client.tls_san_dns if registered else None
        subject_dn = client.tls_subject_dn if registered else None
        dns_ok = san_dns is not None and any(name.lower() == san_dns.lower() for name in certificate.san_dns)
        dn_ok = subject_dn is not None and certificate.subject_dn == subject_dn
        return None if dns_ok or dn_ok else "certificate_mismatch"
