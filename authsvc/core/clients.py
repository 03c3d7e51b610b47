"""Registered OAuth clients (RFC 6749 §2) and the rules for registering them.

A client is a confidential client (§2.1) registered with exactly one client authentication
method (:class:`ClientAuthMethod`, RFC 7591 §2 ``token_endpoint_auth_method``); by default a
service-generated secret (§2.3.1). It may use the client credentials grant (§4.4), and is allowed
a fixed set of scopes and audiences; a token request may ask for a subset of them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from authsvc.core.client_keys import DEFAULT_SIGNING_ALGS, validate_client_jwks, validate_signing_algs
from authsvc.core.errors import InvalidRequest
from authsvc.core.scopes import validate_scope_token

__all__ = [
    "CLIENT_CREDENTIALS",
    "DEFAULT_TOKEN_TTL",
    "MAX_AUDIENCES",
    "MAX_TOKEN_TTL",
    "MIN_TOKEN_TTL",
    "SECRET_METHODS",
    "AuthRegistration",
    "Client",
    "ClientAuthMethod",
    "new_client",
    "validate_audience",
    "validate_client_id",
    "validate_dns_name",
    "validate_jwks_uri",
    "validate_subject_dn",
]

CLIENT_CREDENTIALS = "client_credentials"

DEFAULT_TOKEN_TTL = 300
"""Default access-token lifetime in seconds: short-lived, as RFC 9068 §5 advises."""
MIN_TOKEN_TTL = 30
MAX_TOKEN_TTL = 86_400
MAX_AUDIENCES = 16


class ClientAuthMethod(StrEnum):
    """How a client authenticates at the token endpoint (RFC 7591 §2 ``token_endpoint_auth_method``
    names): what a client is registered with, and what a request presents."""

    CLIENT_SECRET_BASIC = "client_secret_basic"  # noqa: S105 - a method name, not a secret
    """RFC 6749 §2.3.1, the secret in an ``Authorization: Basic`` header. A client registered with
    it also accepts ``client_secret_post``, as every client did before methods were registered."""
    CLIENT_SECRET_POST = "client_secret_post"  # noqa: S105 - a method name, not a secret
    """RFC 6749 §2.3.1, the secret in the request body."""
    PRIVATE_KEY_JWT = "private_key_jwt"
    """RFC 7523 §2.2, a JWT signed with a key that never leaves the client; registered with its
    public keys (``jwks``) or where it publishes them (``jwks_uri``), and the algorithms it signs
    with (``signing_algs``)."""
    TLS_CLIENT_AUTH = "tls_client_auth"
    """RFC 8705 §2.1, the client's certificate on a mutual-TLS connection; registered with the
    certificate's DNS name (``tls_san_dns``) or its subject (``tls_subject_dn``)."""


SECRET_METHODS = frozenset({ClientAuthMethod.CLIENT_SECRET_BASIC, ClientAuthMethod.CLIENT_SECRET_POST})
"""The registered methods that hold a client secret."""

_CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]{0,127}")
_AUDIENCE = re.compile(r"[\x21-\x7e]{1,256}")


def validate_client_id(client_id: str) -> str:
    """Return ``client_id`` if well formed: 1 to 128 of ``A-Z a-z 0-9 . _ ~ -``, starting with a
    letter or digit. Anything else (spaces, colons, control characters, non-ASCII look-alikes)
    can name no client and is refused with :class:`InvalidRequest`."""
    if not _CLIENT_ID.fullmatch(client_id):
        raise InvalidRequest("client_id must be 1 to 128 characters of A-Z a-z 0-9 . _ ~ -")
    return client_id


def validate_audience(audience: str) -> str:
    """Return ``audience`` if it is 1 to 256 printable ASCII characters without spaces."""
    if not _AUDIENCE.fullmatch(audience):
        raise InvalidRequest("an audience is 1 to 256 printable ASCII characters without spaces")
    return audience


@dataclass(frozen=True, slots=True)
class Client:
    """A registered client. ``secret_hash`` is the keyed hash of its secret, never the secret;
    ``auth_method`` the one way it authenticates."""

    client_id: str
    secret_hash: str
    allowed_scopes: tuple[str, ...]
    default_scopes: tuple[str, ...]
    allowed_audiences: tuple[str, ...]
    default_audience: str
    token_ttl: int
    grant_types: tuple[str, ...]
    enabled: bool
    created_at: int
    updated_at: int
    previous_secret_hash: str | None = None
    """The keyed hash of the secret a rotation replaced, accepted until ``previous_secret_expires_at``
    (the grace period); None when there is none."""
    previous_secret_expires_at: int | None = None
    auth_method: ClientAuthMethod = ClientAuthMethod.CLIENT_SECRET_BASIC
    jwks: str | None = None
    """private_key_jwt: the client's public JWK Set (compact JSON), or None for ``jwks_uri``."""
    jwks_uri: str | None = None
    """private_key_jwt: the HTTPS URL the client publishes its JWK Set at, so it rotates keys alone."""
    signing_algs: tuple[str, ...] = ()
    """private_key_jwt: the JWS algorithms its assertions may be signed with."""
    tls_san_dns: str | None = None
    """tls_client_auth: the dNSName its certificate must carry."""
    tls_subject_dn: str | None = None
    """tls_client_auth: the subject DN its certificate must have (RFC 4514 string)."""

    @property
    def has_secret(self) -> bool:
        """Whether the client authenticates with a secret (and so may have it rotated)."""
        return self.auth_method in SECRET_METHODS

    def previous_secret_valid(self, now: float) -> bool:
        """True while the previous secret's grace period lasts (it ends at, not after, its time)."""
        return (
            self.previous_secret_hash is not None
            and self.previous_secret_expires_at is not None
            and now < self.previous_secret_expires_at
        )

    def with_changes(self, **changes: object) -> Client:
        """Return a copy with the given fields replaced."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


_MAX_URI = 2048
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_MAX_DN = 1024


def validate_jwks_uri(uri: str) -> str:
    """A client's ``jwks_uri``: an absolute ``https://`` URL with a host, without credentials or
    fragment, of printable ASCII. Whether its host may be fetched from (not an internal address)
    is decided when it is fetched, against the addresses it resolves to."""
    if not uri or len(uri) > _MAX_URI or not uri.isascii() or not uri.isprintable() or " " in uri:
        raise InvalidRequest(f"a jwks_uri is 1 to {_MAX_URI} printable ASCII characters without spaces")
    try:
        parts = urlsplit(uri)
        bad_port = parts.port == 0  # a port that does not parse raises ValueError
    except ValueError as exc:
        raise InvalidRequest("the jwks_uri is not a valid URL") from exc
    if parts.scheme != "https" or not parts.hostname or bad_port:
        raise InvalidRequest("the jwks_uri must be an https:// URL with a host")
    if parts.username is not None or parts.password is not None or parts.fragment:
        raise InvalidRequest("the jwks_uri must not carry credentials or a fragment")
    return uri


def validate_dns_name(name: str) -> str:
    """A certificate's dNSName as ``tls_client_auth`` registers it: lower-case LDH labels, at most
    253 characters, no wildcard (RFC 8705 §2.1.2 matches it exactly)."""
    labels = name.split(".")
    if not 0 < len(name) <= 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise InvalidRequest("--tls-san-dns must be a DNS name: lower-case letters, digits, '-' and '.'")
    return name


def validate_subject_dn(dn: str) -> str:
    """A certificate subject as ``tls_client_auth`` registers it: an RFC 4514 string (``CN=shop,O=Example``)
    of printable characters, at most 1024."""
    if not 0 < len(dn) <= _MAX_DN or not dn.isprintable() or "=" not in dn:
        raise InvalidRequest(
            "--tls-subject-dn must be an RFC 4514 distinguished name such as CN=shop,O=Example"
        )
    return dn


@dataclass(frozen=True, slots=True)
class AuthRegistration:
    """How a new client authenticates, and the data its method needs (:func:`new_client`)."""

    method: ClientAuthMethod = ClientAuthMethod.CLIENT_SECRET_BASIC
    jwks: str | None = None
    jwks_uri: str | None = None
    signing_algs: tuple[str, ...] | None = None
    tls_san_dns: str | None = None
    tls_subject_dn: str | None = None

    def validated(self) -> AuthRegistration:
        """The registration with its data checked (and the JWK Set in compact form); each method
        takes exactly the data it needs (RFC 7591 §2, RFC 8705 §2.1.2) and nothing else."""
        method = self.method
        key_data = self.jwks is not None or self.jwks_uri is not None or self.signing_algs is not None
        tls_data = self.tls_san_dns is not None or self.tls_subject_dn is not None
        if method is ClientAuthMethod.PRIVATE_KEY_JWT:
            if tls_data:
                raise InvalidRequest("--tls-san-dns and --tls-subject-dn are for tls_client_auth")
            if (self.jwks is None) == (self.jwks_uri is None):
                raise InvalidRequest(
                    "a private_key_jwt client needs its keys: --jwks-file or --jwks-uri, one of them"
                )
            algs = validate_signing_algs(
                DEFAULT_SIGNING_ALGS if self.signing_algs is None else self.signing_algs
            )
            return AuthRegistration(
                method=method,
                jwks=None if self.jwks is None else validate_client_jwks(self.jwks, algs),
                jwks_uri=None if self.jwks_uri is None else validate_jwks_uri(self.jwks_uri),
                signing_algs=algs,
            )
        if key_data:
            raise InvalidRequest("--jwks-file, --jwks-uri and --signing-alg are for private_key_jwt")
        if method is ClientAuthMethod.TLS_CLIENT_AUTH:
            if (self.tls_san_dns is None) == (self.tls_subject_dn is None):
                raise InvalidRequest(
                    "a tls_client_auth client needs --tls-san-dns or --tls-subject-dn, exactly one of them"
                )
            return AuthRegistration(
                method=method,
                tls_san_dns=None if self.tls_san_dns is None else validate_dns_name(self.tls_san_dns),
                tls_subject_dn=None
                if self.tls_subject_dn is None
                else validate_subject_dn(self.tls_subject_dn),
            )
        if tls_data:
            raise InvalidRequest("--tls-san-dns and --tls-subject-dn are for tls_client_auth")
        return AuthRegistration(method=method)


def new_client(
    *,
    client_id: str,
    secret_hash: str,
    scopes: Iterable[str],
    audiences: Iterable[str],
    now: int,
    default_scopes: Iterable[str] | None = None,
    default_audience: str | None = None,
    token_ttl: int = DEFAULT_TOKEN_TTL,
    auth: AuthRegistration | None = None,
) -> Client:
    """Validate a registration and return the new :class:`Client`.

    ``default_scopes`` are granted when a request names no scope (RFC 6749 §3.3 "pre-defined
    default value"); they default to all allowed scopes. ``default_audience`` is used when a
    request names no audience; it defaults to the first allowed audience. ``auth`` says how the
    client authenticates (default ``client_secret_basic``); ``secret_hash`` is the hash of its
    secret for the secret methods, and empty for the others, which have none.
    """
    validate_client_id(client_id)
    auth = (auth or AuthRegistration()).validated()
    if (auth.method in SECRET_METHODS) != bool(secret_hash):
        raise InvalidRequest(
            f"a {auth.method.value} client {'needs' if not secret_hash else 'has no'} secret"
        )
    allowed = tuple(dict.fromkeys(validate_scope_token(s) for s in scopes))
    defaults = allowed if default_scopes is None else tuple(dict.fromkeys(default_scopes))
    if not set(defaults) <= set(allowed):
        raise InvalidRequest("default scopes must be among the allowed scopes")
    auds = tuple(dict.fromkeys(validate_audience(a) for a in audiences))
    if not auds:
        raise InvalidRequest("a client needs at least one audience")
    if len(auds) > MAX_AUDIENCES:
        raise InvalidRequest(f"a client may have at most {MAX_AUDIENCES} audiences")
    default_aud = auds[0] if default_audience is None else default_audience
    if default_aud not in auds:
        raise InvalidRequest("the default audience must be one of the allowed audiences")
    if not MIN_TOKEN_TTL <= token_ttl <= MAX_TOKEN_TTL:
        raise InvalidRequest(f"token lifetime must be between {MIN_TOKEN_TTL} and {MAX_TOKEN_TTL} seconds")
    return Client(
        client_id=client_id,
        secret_hash=secret_hash,
        allowed_scopes=allowed,
        default_scopes=defaults,
        allowed_audiences=auds,
        default_audience=default_aud,
        token_ttl=token_ttl,
        grant_types=(CLIENT_CREDENTIALS,),
        enabled=True,
        created_at=now,
        updated_at=now,
        auth_method=auth.method,
        jwks=auth.jwks,
        jwks_uri=auth.jwks_uri,
        signing_algs=auth.signing_algs or (),
        tls_san_dns=auth.tls_san_dns,
        tls_subject_dn=auth.tls_subject_dn,
    )
