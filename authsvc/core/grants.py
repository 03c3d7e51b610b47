"""The token endpoint and its grants (RFC 6749 §3.2, §4.4, §5).

A grant is a small class registered with the :class:`TokenEndpoint`: it says which
``grant_type`` it handles and turns an authenticated client's request into a
:class:`Grant` decision (scopes, audiences, lifetime). The endpoint does what every grant shares:
request checks, client authentication (§2.3), token construction and signing. Client
authentication methods are registered the same way (:mod:`authsvc.core.auth_methods`). A second
grant or client-authentication method is an addition, not an edit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from authsvc.core.auth_methods import ClientAuthHandler, ClientSecretBasic, ClientSecretPost
from authsvc.core.certs import ClientCertificate, confirmation
from authsvc.core.client_auth import PresentedCredentials
from authsvc.core.clients import (
    CLIENT_CREDENTIALS,
    MAX_AUDIENCES,
    Client,
    ClientAuthMethod,
    validate_audience,
    validate_client_id,
)
from authsvc.core.errors import (
    InvalidClient,
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    OAuthError,
    UnauthorizedClient,
    UnsupportedGrantType,
    refusal_detail,
)
from authsvc.core.errors import with_detail as _detailed
from authsvc.core.keys import b64url
from authsvc.core.ports import Clock, RandomSource
from authsvc.core.scopes import format_scope, parse_scope
from authsvc.core.secrets import SecretHasher
from authsvc.core.tokens import AccessTokenClaims, TokenSigner

__all__ = [
    "ClientAuthMethod",
    "ClientCredentialsGrant",
    "ClientLookup",
    "Grant",
    "GrantHandler",
    "IssuedToken",
    "TokenEndpoint",
    "TokenRequest",
    "refusal_detail",
]

_GRANT_TYPE_MAX = 128


class ClientLookup(Protocol):
    """What the token endpoint needs of the client store: one read by id."""

    def get_client(self, client_id: str) -> Client | None: ...


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """A token request after the transport has extracted the client's credentials."""

    grant_type: str
    client_id: str
    client_secret: str
    scope: str
    audience: tuple[str, ...]
    auth_method: ClientAuthMethod
    # the certificate of a mutual-TLS connection (RFC 8705), verified by the TLS stack: the
    # token issued is bound to it (cnf.x5t#S256, §3.1); None over plain TLS
    client_certificate: ClientCertificate | None = None
    client_assertion: str = ""
    client_assertion_type: str = ""

    def __repr__(self) -> str:  # never show the secret or the assertion
        return (
            f"TokenRequest(grant_type={self.grant_type!r}, client_id={self.client_id!r}, "
            f"client_secret=<redacted>, scope={self.scope!r}, audience={self.audience!r}, "
            f"auth_method={self.auth_method.value!r}, client_assertion=<redacted>)"
        )

    @classmethod
    def of(
        cls,
        credentials: PresentedCredentials,
        *,
        grant_type: str,
        scope: str,
        audience: tuple[str, ...],
    ) -> TokenRequest:
        """The request of a grant with the credentials an edge read (with the client's
        certificate on a mutual-TLS connection: the token will be bound to it)."""
        return cls(
            grant_type=grant_type,
            client_id=credentials.client_id,
            client_secret=credentials.client_secret,
            scope=scope,
            audience=audience,
            auth_method=credentials.method,
            client_assertion=credentials.client_assertion,
            client_assertion_type=credentials.client_assertion_type,
            client_certificate=credentials.client_certificate,
        )

    @property
    def credentials(self) -> PresentedCredentials:
        """What the request presented to authenticate its client."""
        return PresentedCredentials(
            self.auth_method,
            self.client_id,
            self.client_secret,
            client_assertion=self.client_assertion,
            client_assertion_type=self.client_assertion_type,
            client_certificate=self.client_certificate,
        )


@dataclass(frozen=True, slots=True)
class Grant:
    """What a grant handler decided to grant."""

    scopes: tuple[str, ...]
    audiences: tuple[str, ...]
    lifetime: int


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A successful token response (RFC 6749 §5.1) and what to log about it."""

    access_token: str
    token_type: str
    expires_in: int
    scope: str
    jti: str
    client_id: str
    kid: str

    def __repr__(self) -> str:  # the token itself never reaches a log line
        return (
            f"IssuedToken(jti={self.jti!r}, client_id={self.client_id!r}, kid={self.kid!r}, "
            f"scope={self.scope!r}, access_token=<redacted>)"
        )


class GrantHandler(Protocol):
    """A registered grant: the ``grant_type`` it handles and how it decides."""

    grant_type: str

    def decide(self, request: TokenRequest, client: Client) -> Grant: ...


class ClientCredentialsGrant:
    """RFC 6749 §4.4: the client asks for a token on its own behalf.

    Scopes (§3.3): the requested scopes must all be allowed to the client; none requested yields
    the client's default scopes. Audiences (RFC 8707 §2): each requested audience must be allowed;
    none requested yields the client's default audience.
    """

    grant_type = CLIENT_CREDENTIALS

    def decide(self, request: TokenRequest, client: Client) -> Grant:
        requested = parse_scope(request.scope)
        if requested:
            # §3.3: "The authorization server MAY fully or partially ignore the scope requested";
            # we refuse rather than silently narrow, so a caller never holds less than it asked for.
            allowed = set(client.allowed_scopes)
            if any(s not in allowed for s in requested):
                raise _detailed(
                    InvalidScope("a requested scope is not allowed for this client"), "scope_not_allowed"
                )
            scopes = requested
        else:
            scopes = client.default_scopes
        if request.audience:
            allowed_auds = set(client.allowed_audiences)
            if any(a not in allowed_auds for a in request.audience):
                raise _detailed(
                    InvalidTarget("a requested audience is not allowed for this client"),
                    "audience_not_allowed",
                )
            audiences = tuple(dict.fromkeys(request.audience))
        else:
            audiences = (client.default_audience,)
        return Grant(scopes=scopes, audiences=audiences, lifetime=client.token_ttl)


class TokenEndpoint:
    """The token endpoint of RFC 6749 §3.2, independent of any transport.

    ``signer`` is called on every request, so key rotation takes effect without rebuilding the
    endpoint. ``issuer`` is the ``iss`` of every token (RFC 9068 §2.2).
    """

    def __init__(
        self,
        *,
        issuer: str,
        clients: ClientLookup,
        hasher: SecretHasher,
        signer: Callable[[], TokenSigner],
        clock: Clock,
        random: RandomSource,
    ) -> None:
        self._issuer = issuer
        self._clients = clients
        self._hasher = hasher
        self._signer = signer
        self._clock = clock
        self._random = random
        self._grants: dict[str, GrantHandler] = {}
        self._auth_methods: dict[ClientAuthMethod, ClientAuthHandler] = {}
        # What an unknown client id is checked as: enabled, so that every check a known client
        # passes through runs for it too, and holding a hash no secret matches.
        self._unknown_client = Client(
            client_id="",
            secret_hash=hasher.unknown_client_hash,
            allowed_scopes=(),
            default_scopes=(),
            allowed_audiences=(),
            default_audience="",
            token_ttl=0,
            grant_types=(),
            enabled=True,
            created_at=0,
            updated_at=0,
        )

    def register_grant(self, grant: GrantHandler) -> None:
        self._grants[grant.grant_type] = grant

    def register_auth_method(self, handler: ClientAuthHandler) -> None:
        """Accept requests presenting ``handler.method``, checked by ``handler``."""
        self._auth_methods[handler.method] = handler

    @property
    def auth_methods(self) -> tuple[ClientAuthMethod, ...]:
        """The methods a request may present, in registration order (RFC 8414
        ``token_endpoint_auth_methods_supported``)."""
        return tuple(self._auth_methods)

    @property
    def auth_signing_algs(self) -> tuple[str, ...]:
        """The JWS algorithms the registered methods verify (RFC 8414
        ``token_endpoint_auth_signing_alg_values_supported``)."""
        return tuple(dict.fromkeys(a for h in self._auth_methods.values() for a in h.signing_algs))

    def may_block(self, presented: PresentedCredentials) -> bool:
        """True if authenticating ``presented`` may wait on I/O beyond the client lookup."""
        handler = self._auth_methods.get(presented.method)
        return handler is not None and handler.blocking

    def authenticate(self, presented: PresentedCredentials) -> Client:
        """RFC 6749 §2.3: the client the credentials prove to be. Unknown client, credentials that
        do not prove it, a method its registration does not accept and a disabled client all raise
        the same :class:`InvalidClient`, after the same work.

        An unknown id is not a shortcut, nor is a client registered for another method: the
        presented credentials are checked against a decoy client (an enabled client whose stored
        secret hash no secret matches) by the same handler, with the same checks after it, so that
        timing does not tell an attacker which client ids exist or how they authenticate.
        """
        handler = self._auth_methods.get(presented.method)
        if handler is None:
            raise _detailed(
                InvalidClient("this client authentication method is not supported"), "auth_method_unsupported"
            )
        if not presented.client_id:
            raise _detailed(InvalidClient("client authentication is required"), "no_client_id")
        handler.precheck(presented)
        validate_client_id(presented.client_id)
        found = self._clients.get_client(presented.client_id)
        registered = found is not None and found.auth_method in handler.accepted_registrations
        client = found if found is not None and registered else self._unknown_client
        failure = handler.check(presented, client, registered=registered)
        if failure is not None or not registered or not client.enabled:
            # client_known only tells the edge's log whether the id may be written in full
            raise _detailed(
                InvalidClient("client authentication failed", client_known=found is not None),
                "unknown_client"
                if found is None
                else "auth_method_not_allowed"
                if not registered
                else failure or "client_disabled",
            )
        return client

    def issue(self, request: TokenRequest) -> IssuedToken:
        """Run the whole grant. Raises an :class:`~authsvc.core.errors.OAuthError` subclass."""
        if not request.grant_type:
            raise InvalidRequest("grant_type is required")
        if len(request.grant_type) > _GRANT_TYPE_MAX:
            raise InvalidRequest("grant_type is too long")
        handler = self._grants.get(request.grant_type)
        if handler is None:
            raise UnsupportedGrantType("only the client_credentials grant is supported")
        if len(request.audience) > MAX_AUDIENCES:
            raise InvalidRequest(f"at most {MAX_AUDIENCES} audiences may be requested")
        for audience in request.audience:
            validate_audience(audience)
        parse_scope(request.scope)  # a malformed scope is refused before any client lookup
        client = self.authenticate(request.credentials)
        try:
            if handler.grant_type not in client.grant_types:
                raise _detailed(
                    UnauthorizedClient("this client may not use this grant type"), "grant_type_not_allowed"
                )
            grant = handler.decide(request, client)
        except OAuthError as exc:
            exc.client_known = True  # an authenticated client: its id is no secret
            raise

        signer = self._signer()
        now = int(self._clock.now())
        jti = b64url(self._random.token_bytes(16))
        scope = format_scope(grant.scopes)
        claims = AccessTokenClaims(
            iss=self._issuer,
            sub=client.client_id,
            aud=grant.audiences[0] if len(grant.audiences) == 1 else list(grant.audiences),
            exp=now + grant.lifetime,
            iat=now,
            nbf=now,
            jti=jti,
            client_id=client.client_id,
            scope=scope,
        )
        if request.client_certificate is not None:
            # RFC 8705 §3: a token issued over mutual TLS is bound to the client's certificate
            claims["cnf"] = confirmation(request.client_certificate)
        return IssuedToken(
            access_token=signer.sign(claims),
            token_type="Bearer",  # noqa: S106 - the token type name, not a secret
            expires_in=grant.lifetime,
            scope=scope,
            jti=jti,
            client_id=client.client_id,
            kid=signer.key.kid,
        )


def client_credentials_endpoint(
    *,
    issuer: str,
    clients: ClientLookup,
    hasher: SecretHasher,
    signer: Callable[[], TokenSigner],
    clock: Clock,
    random: RandomSource,
) -> TokenEndpoint:
    """A :class:`TokenEndpoint` with the client credentials grant and the client secret methods
    registered."""
    endpoint = TokenEndpoint(
        issuer=issuer, clients=clients, hasher=hasher, signer=signer, clock=clock, random=random
    )
    endpoint.register_grant(ClientCredentialsGrant())
    endpoint.register_auth_method(ClientSecretBasic(hasher, clock))
    endpoint.register_auth_method(ClientSecretPost(hasher, clock))
    return endpoint
