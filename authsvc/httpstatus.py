"""The one place where errors become HTTP answers, for the TokenService's HTTP edge and for every
HTTP resource server built on :mod:`authsvc.verify` (the ASGI middleware, the PaymentService's
JSON API). The HTTP sibling of :mod:`authsvc.status`; like it, it imports no web framework.

- :func:`token_error`: RFC 6749 §5.2 for the token endpoint (and RFC 7662/7009 client
  authentication): a JSON body ``{"error", "error_description"}``, 400, or 401 with
  ``WWW-Authenticate: Basic`` for ``invalid_client`` when the client used Basic (§5.2 "MUST").
- :func:`bearer_error`: RFC 6750 §3 for a resource server: 401 with
  ``WWW-Authenticate: Bearer error="invalid_token"`` (no error code when the request carried no
  token at all, §3.1), 403 ``insufficient_scope`` with the ``scope`` attribute, 400
  ``invalid_request``.
- :func:`service_error`: any other :class:`~authsvc.core.errors.ServiceError` (a payment's
  ``INVALID_AMOUNT``, a rate limit): the status of its kind, and a JSON body carrying the same
  ``reason`` as the gRPC ``ErrorInfo``.

Anything that is not a ServiceError is a 500 with a generic description; its details belong in
the log only. Every answer says ``Cache-Control: no-store``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from authsvc.core.errors import InvalidToken, OAuthError, ServerError, ServiceError

__all__ = [
    "HTTP_STATUS_BY_ERROR",
    "NO_STORE",
    "HttpAnswer",
    "bearer_error",
    "challenge",
    "service_error",
    "token_error",
]

HTTP_STATUS_BY_ERROR: dict[str, int] = {
    # RFC 6749 §5.2: every token endpoint error is 400, but invalid_client may be 401
    "invalid_request": 400,
    "invalid_client": 401,
    "unauthorized_client": 400,
    "unsupported_grant_type": 400,
    "invalid_scope": 400,
    "invalid_target": 400,  # RFC 8707 §2
    # RFC 6750 §3.1
    "invalid_token": 401,
    "insufficient_scope": 403,
    "access_denied": 403,
    "not_found": 404,
    "rate_limited": 429,
    "temporarily_unavailable": 503,
    "server_error": 500,
    # kinds of the domain errors of services built on authsvc (ServiceError.kind)
    "invalid_argument": 400,
    "failed_precondition": 409,
    "already_exists": 409,
    "unavailable": 503,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
}

_BEARER_ERRORS = frozenset({"invalid_token", "insufficient_scope", "invalid_request"})

NO_STORE: tuple[tuple[str, str], ...] = (("Cache-Control", "no-store"), ("Pragma", "no-cache"))
"""RFC 6749 §5.1: token answers (and their errors) must never be cached."""


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """An HTTP status, a JSON body and the headers to send with it."""

    status: int
    body: dict[str, object]
    headers: tuple[tuple[str, str], ...] = field(default=NO_STORE)


def _quoted(value: str) -> str:
    """An RFC 7230 quoted-string holding only what RFC 6750 §3 allows in ``error_description``
    and ``scope`` (printable ASCII without ``"`` and ``\\``): anything else is dropped, so a
    caller-influenced description can never break out of the header."""
    kept = "".join(c for c in value if 0x20 <= ord(c) <= 0x7E and c not in '"\\')
    return f'"{kept}"'


def challenge(scheme: str, params: Sequence[tuple[str, str]] = ()) -> str:
    """A ``WWW-Authenticate`` value: ``Bearer realm="x", error="invalid_token"``."""
    if not params:
        return scheme
    return scheme + " " + ", ".join(f"{name}={_quoted(value)}" for name, value in params)


def _oauth(exc: BaseException) -> ServiceError:
    return exc if isinstance(exc, ServiceError) else ServerError("internal error")


def _retry_after(exc: ServiceError) -> tuple[tuple[str, str], ...]:
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(retry_after, int | float) and 0 < retry_after < math.inf:
        return (("Retry-After", str(max(1, math.ceil(retry_after)))),)
    return ()


def token_error(exc: BaseException, *, basic: bool, realm: str = "authsvc") -> HttpAnswer:
    """RFC 6749 §5.2 for ``exc`` raised by the token (or introspection, revocation) endpoint.
    ``basic`` says the client authenticated with HTTP Basic."""
    err = _oauth(exc)
    status = HTTP_STATUS_BY_ERROR.get(err.status_key, 500)
    headers = NO_STORE + _retry_after(err)
    if err.error == "invalid_client":
        if basic:
            # §5.2: "MUST respond with an HTTP 401 ... and include the WWW-Authenticate header"
            headers += (("WWW-Authenticate", challenge("Basic", [("realm", realm)])),)
        else:
            status = 401  # no Basic attempted: still 401, without a challenge the client did not use
    body: dict[str, object] = {"error": err.error, "error_description": err.description}
    return HttpAnswer(status, body, headers)


def bearer_error(
    exc: BaseException,
    *,
    required_scopes: Sequence[str] = (),
    token_sent: bool = True,
    realm: str | None = None,
) -> HttpAnswer:
    """RFC 6750 §3 for a refused resource request. ``required_scopes`` go in the ``scope``
    attribute of an ``insufficient_scope`` challenge; with ``token_sent=False`` (the request had
    no credentials at all) the challenge carries no error code (§3.1)."""
    err = _oauth(exc)
    if not isinstance(err, OAuthError) or err.error not in _BEARER_ERRORS:
        return service_error(err)
    status = HTTP_STATUS_BY_ERROR[err.error]
    params: list[tuple[str, str]] = [("realm", realm)] if realm else []
    if isinstance(err, InvalidToken) and not token_sent:
        pass  # §3.1: "SHOULD NOT include an error code or other error information"
    else:
        params += [("error", err.error), ("error_description", err.description)]
        if err.error == "insufficient_scope" and required_scopes:
            params.append(("scope", " ".join(required_scopes)))
    headers = (*NO_STORE, ("WWW-Authenticate", challenge("Bearer", params)))
    body: dict[str, object] = {"error": err.error, "error_description": err.description}
    return HttpAnswer(status, body, headers)


def service_error(exc: BaseException) -> HttpAnswer:
    """Any other ServiceError: its kind's status, a body with the ErrorInfo ``reason``."""
    err = _oauth(exc)
    status = HTTP_STATUS_BY_ERROR.get(err.status_key, 500)
    body: dict[str, object] = {"error": err.error, "reason": err.reason, "error_description": err.description}
    return HttpAnswer(status, body, NO_STORE + _retry_after(err))
