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

from authsvc.core.errors import InvalidRequest
from authsvc.core.scopes import validate_scope_token

__all__ = [
    "CLIENT_CREDENTIALS",
    "DEFAULT_TOKEN_TTL",
    "MAX_AUDIENCES",
    "MAX_TOKEN_TTL",
    "MIN_TOKEN_TTL",
    "SECRET_METHODS",
    "Client",
    "ClientAuthMethod",
    "new_client",
    "validate_audience",
    "validate_client_id",
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
) -> Client:
    """Validate a registration and return the new :class:`Client`.

    ``default_scopes`` are granted when a request names no scope (RFC 6749 §3.3 "pre-defined
    default value"); they default to all allowed scopes. ``default_audience`` is used when a
    request names no audience; it defaults to the first allowed audience.
    """
    validate_client_id(client_id)
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
    )
