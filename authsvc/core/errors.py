"""The error tree of the protocol core.

Every error the core raises is an :class:`OAuthError` that carries the OAuth error code of the
specification that defines it (RFC 6749 §5.2, RFC 6750 §3.1, RFC 8707 §2) and a description
that is safe to show to the caller. The gRPC edge maps the code to a status in one place
(:mod:`authsvc.status`); nothing else decides what goes on the wire.

Descriptions never contain secrets, tokens, key material or internal identifiers. Keep the
underlying cause with ``raise ... from exc``: it reaches the logs, not the caller.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TypeVar

__all__ = [
    "AccessDenied",
    "ConfigurationError",
    "InsufficientScope",
    "InvalidClient",
    "InvalidRequest",
    "InvalidScope",
    "InvalidTarget",
    "InvalidToken",
    "NotFound",
    "OAuthError",
    "RateLimited",
    "ServerError",
    "ServiceError",
    "TemporarilyUnavailable",
    "UnauthorizedClient",
    "UnsupportedGrantType",
    "refusal_detail",
    "with_detail",
]


class ServiceError(Exception):
    """Base class of every error that reaches a caller, from authsvc or from a service built on it.

    ``error`` is the error code in lower snake case (for OAuth errors, as the RFCs spell it);
    ``reason`` is the same code in upper snake case, as it appears in
    ``google.rpc.ErrorInfo.reason``. ``kind`` names the class of failure that decides the status
    code (``authsvc.status.STATUS_BY_ERROR``); it defaults to ``error``, so OAuth errors map by
    their own code and a domain error such as ``refund_exceeds_balance`` says
    ``kind = "failed_precondition"``.

    ``metadata`` is the machine-readable detail of the refusal, for a program rather than a person
    (``google.rpc.ErrorInfo.metadata`` on gRPC), e.g. ``scope`` for ``insufficient_scope`` as in
    RFC 6750 §3. Like the description it reaches the caller: never a secret, a token or internal
    state, only what the caller may know (the scopes a method requires). Keys are lower camel or
    snake case ASCII, as ErrorInfo asks.
    """

    error: str = "server_error"
    kind: str | None = None

    def __init__(self, description: str, *, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(description)
        self.description = description
        self.metadata: Mapping[str, str] = MappingProxyType(dict(metadata or {}))

    @property
    def reason(self) -> str:
        return self.error.upper()

    @property
    def status_key(self) -> str:
        return self.kind or self.error


class OAuthError(ServiceError):
    """An error defined by an OAuth specification.

    ``client_known`` says whether the request named a registered client, so that the edge may
    log its id in full; when False (the default, and whenever the core has not looked the client
    up), the id is logged only as a prefix and a hash (:func:`authsvc.logsafe.client_id_for_log`),
    because a caller may have sent a secret as the id. It never reaches the wire: unknown client
    and wrong secret answer the same.
    """

    def __init__(
        self, description: str, *, client_known: bool = False, metadata: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(description, metadata=metadata)
        self.client_known = client_known


class InvalidRequest(OAuthError):
    """RFC 6749 §5.2: the request is missing a parameter, repeats one, or is malformed."""

    error = "invalid_request"


class InvalidClient(OAuthError):
    """RFC 6749 §5.2: client authentication failed (unknown client, wrong secret, no or
    unsupported authentication). Unknown client and wrong secret must be indistinguishable."""

    error = "invalid_client"


class UnauthorizedClient(OAuthError):
    """RFC 6749 §5.2: the authenticated client may not use this grant type."""

    error = "unauthorized_client"


class UnsupportedGrantType(OAuthError):
    """RFC 6749 §5.2: the grant type is not supported by this authorization server."""

    error = "unsupported_grant_type"


class InvalidScope(OAuthError):
    """RFC 6749 §5.2: the requested scope is invalid, unknown, malformed, or exceeds the scope
    granted to the client."""

    error = "invalid_scope"


class InvalidTarget(OAuthError):
    """RFC 8707 §2: the requested audience (resource) is invalid or not allowed for the client."""

    error = "invalid_target"


class InvalidToken(OAuthError):
    """RFC 6750 §3.1: the access token is missing, malformed, expired, or otherwise invalid."""

    error = "invalid_token"


class InsufficientScope(OAuthError):
    """RFC 6750 §3.1: the access token lacks a scope that the called method requires."""

    error = "insufficient_scope"


class AccessDenied(OAuthError):
    """RFC 6749 §4.1.2.1: the request is refused whatever the token, e.g. a method that declares
    no policy (deny by default)."""

    error = "access_denied"


class TemporarilyUnavailable(OAuthError):
    """RFC 6749 §4.1.2.1: the server cannot handle the request now (e.g. keys unreachable)."""

    error = "temporarily_unavailable"


class ServerError(OAuthError):
    """RFC 6749 §4.1.2.1: an unexpected condition. The description stays generic."""

    error = "server_error"


class NotFound(OAuthError):
    """An administrative lookup (client, key) found nothing. Never used on the token endpoint,
    where an unknown client is :class:`InvalidClient`."""

    error = "not_found"


class RateLimited(ServiceError):
    """The caller holds or asks for more than a limit allows (too many concurrent streams, too many
    requests); RESOURCE_EXHAUSTED with reason ``RATE_LIMITED`` (DESIGN.md §2). Not an OAuth error:
    no RFC defines it.

    ``retry_after`` (seconds), when known, is when the caller may try again: a
    ``google.rpc.RetryInfo`` detail and the ``grpc-retry-pushback-ms`` trailer on gRPC,
    ``Retry-After`` over HTTP. ``limit`` names the limit that refused (``client``, ``peer``,
    ``failed_auth``; None for a cap on streams), for the audit log and the metrics.
    """

    error = "rate_limited"

    def __init__(
        self,
        description: str,
        *,
        retry_after: float | None = None,
        limit: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(description, metadata=metadata)
        self.retry_after = retry_after if retry_after is not None and retry_after > 0 else None
        self.limit = limit


_E = TypeVar("_E", bound=OAuthError)


def with_detail(exc: _E, detail: str) -> _E:
    """``exc`` with its precise internal reason attached (:func:`refusal_detail`)."""
    exc.detail = detail  # type: ignore[attr-defined]
    return exc


def refusal_detail(exc: OAuthError) -> str | None:
    """The precise internal reason of a refusal the core raised, for the audit log only
    (``unknown_client``, ``wrong_secret``, ``client_disabled``, ``scope_not_allowed``, ...); never
    sent on the wire, where unknown client and wrong secret answer the same. None when unknown."""
    detail = getattr(exc, "detail", None)
    return detail if isinstance(detail, str) else None


class ConfigurationError(Exception):
    """Start-up configuration is invalid or inconsistent (not a caller's error)."""
