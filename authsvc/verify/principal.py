"""From a Bearer credential to the verified caller, for any transport: no grpc and no web framework
here, so that the gRPC interceptors, the ASGI middleware and any other resource-server edge (an
aiohttp handler, the PaymentService's HTTP API) share one parser, one non-blocking verification and
one :func:`current_principal`.

- :func:`bearer_token` (gRPC metadata) and :func:`http_bearer_token` (HTTP ``Authorization``
  headers): RFC 6750 §2.1 ``credentials = "Bearer" 1*SP b64token``, exactly one of them.
- :func:`verify_token` and :func:`verify_on_event_loop`: the verifier's answer as a clean
  :class:`~authsvc.core.errors.OAuthError`; the second never blocks an event loop on a key fetch.
- :func:`current_principal` and :func:`bound_principal`: the verified caller, carried to the
  handler in a :class:`contextvars.ContextVar`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Iterable, Iterator, Sequence

from authsvc.core.errors import InvalidRequest, InvalidToken, OAuthError
from authsvc.logsafe import loggable
from authsvc.verify.binding import DeferBinding
from authsvc.verify.jwks import WouldBlock
from authsvc.verify.outcomes import KEYS_UNAVAILABLE, UNKNOWN_KID, Refused, Unavailable, outcome_of
from authsvc.verify.verifier import MAX_TOKEN_BYTES, Principal, TokenVerifier

__all__ = [
    "bearer_token",
    "bound_principal",
    "current_principal",
    "http_bearer_token",
    "verify_after_fetch",
    "verify_on_event_loop",
    "verify_token",
]

log = logging.getLogger("authsvc.verify")

_PRINCIPAL: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "authsvc_principal", default=None
)

_SCHEME_AND_SPACE = len("Bearer ")


def current_principal() -> Principal:
    """The verified caller of the request being handled (a gRPC call through an interceptor, an
    HTTP request through :class:`~authsvc.verify.asgi.BearerAuthMiddleware`). Raises LookupError
    in a public method or route, or outside a request that went through one."""
    principal = _PRINCIPAL.get()
    if principal is None:
        raise LookupError(
            "no verified caller: the method or route is public, or no AuthInterceptor or "
            "BearerAuthMiddleware is installed"
        )
    return principal


@contextlib.contextmanager
def bound_principal(principal: Principal | None) -> Iterator[None]:
    """Within the block (in this task or thread), :func:`current_principal` returns ``principal``;
    None means "no caller" (a public route), which also hides any caller of an enclosing context.
    For an edge that calls its handler itself, e.g. an aiohttp resource server::

        with bound_principal(await verify_on_event_loop(verifier, token)):
            return await handler(request)
    """
    reset = _PRINCIPAL.set(principal)
    try:
        yield
    finally:
        _PRINCIPAL.reset(reset)


def _token_of(value: str, where: str) -> str | None:
    """The token of one credentials value; None when its scheme is not Bearer."""
    if len(value) > MAX_TOKEN_BYTES + _SCHEME_AND_SPACE:
        raise InvalidToken(f"the {where} is too long")
    scheme, sep, rest = value.partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = rest.lstrip(" ")
    if not sep or not token or " " in token:
        raise InvalidToken("the Bearer token is empty or has spaces")
    return token


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """RFC 6750 §2.1 in gRPC metadata: the token of exactly one ``authorization: Bearer <token>``
    entry: ``credentials = "Bearer" 1*SP b64token``. The scheme is case-insensitive; one or more
    spaces separate it from the token, which has none itself. Raises InvalidToken otherwise."""
    value: str | bytes | None = None
    for key, entry in metadata or ():
        if key == "authorization":
            if value is not None:
                raise InvalidToken("more than one authorization metadata entry")
            value = entry
    if value is None:
        raise InvalidToken("no access token: send metadata authorization: Bearer <token>")
    if isinstance(value, bytes):
        raise InvalidToken("the authorization metadata entry is malformed")
    # the common spelling, "Bearer " and a token without spaces, is what _token_of finds too
    if (
        value.startswith("Bearer ")
        and len(value) <= MAX_TOKEN_BYTES + _SCHEME_AND_SPACE
        and (token := value[_SCHEME_AND_SPACE:])
        and " " not in token
    ):
        return token
    found = _token_of(value, "authorization metadata entry")
    if found is None:
        raise InvalidToken("the authorization metadata entry is not a Bearer token")
    return found


def http_bearer_token(authorization: Sequence[str]) -> str | None:
    """RFC 6750 §2.1 over HTTP: the token of a request whose ``Authorization`` header values (every
    one the request carried, e.g. aiohttp's ``request.headers.getall("Authorization", [])``) are
    exactly one ``Bearer 1*SP token``.

    None when the request carries no Bearer credentials: no ``Authorization`` header, or another
    scheme such as Basic. §3.1 then wants a challenge without an error code
    (``bearer_error(..., token_sent=False)``). Raises InvalidRequest (400, §3.1 "repeats the same
    parameter") for more than one header, and InvalidToken for a malformed Bearer value.

    Only the header is read: a token in a form body or the query string (§2.2, §2.3) is never
    accepted, since URLs end up in logs, proxies and browser history.
    """
    if not authorization:
        return None
    if len(authorization) > 1:
        raise InvalidRequest("more than one Authorization header")
    return _token_of(authorization[0], "Authorization header")


def verify_token(
    verifier: TokenVerifier,
    token: str,
    *,
    block: bool = True,
    where: str = "",
    peer_certificate: bytes | DeferBinding | None = None,
) -> Principal:
    """``verifier.verify(token, block=block, peer_certificate=...)`` (the DER certificate the
    caller presented over mutual TLS, or None: a certificate-bound token needs it, RFC 8705 §3),
    where anything but an OAuthError (or, with
    ``block=False``, :class:`~authsvc.verify.jwks.WouldBlock`) becomes InvalidToken, logged: a
    verifier bug must still answer a clean refusal, never a 500 or UNKNOWN with a traceback.
    ``where`` (the method or path, caller-supplied) only names the request in that log line."""
    try:
        return verifier.verify(token, block=block, peer_certificate=peer_certificate)
    except (OAuthError, WouldBlock):
        raise
    except Exception as exc:
        log.exception("token verification failed unexpectedly on %s", loggable(where))
        raise InvalidToken("the access token could not be verified") from exc


async def verify_on_event_loop(
    verifier: TokenVerifier,
    token: str,
    *,
    where: str = "",
    peer_certificate: bytes | DeferBinding | None = None,
) -> Principal:
    """Verify ``token`` on a running event loop without ever blocking it, for every asyncio edge
    (the grpc.aio interceptor, the ASGI middleware, an aiohttp handler). ``peer_certificate`` is
    the DER certificate the caller presented on this request's connection, if any: without it a
    certificate-bound token (RFC 8705 §3) is refused (:meth:`TokenVerifier.verify`).

    A token whose key is cached costs what :meth:`TokenVerifier.verify` costs (a hash lookup when
    seen before, one RSA verification otherwise), on the loop. A token whose key must be fetched
    first (an unknown kid, at most once per cooldown; or the very first set) awaits that fetch,
    which runs in the key cache's own thread, for at most ``verifier.keys.fetch_timeout``: it
    takes no executor thread, and the await is shielded, so a caller giving up (a client
    disconnecting) never cancels the fetch for the others. It then decides with what the fetch
    brought, and never waits twice.

    Raises InvalidToken (including a kid still unknown after the fetch), or TemporarilyUnavailable
    when no key set could ever be fetched. Scopes are the caller's to check
    (:meth:`TokenVerifier.require_scopes`). Call ``verifier.keys.refresh()`` at start-up so that
    the first request does not wait for the initial fetch.
    """
    try:
        return verify_token(verifier, token, block=False, where=where, peer_certificate=peer_certificate)
    except WouldBlock as pending:
        return await verify_after_fetch(
            verifier, token, pending, where=where, peer_certificate=peer_certificate
        )


async def verify_after_fetch(
    verifier: TokenVerifier,
    token: str,
    pending: WouldBlock,
    *,
    where: str = "",
    peer_certificate: bytes | DeferBinding | None = None,
) -> Principal:
    """The rest of :func:`verify_on_event_loop` once ``verify_token(..., block=False)`` raised
    ``pending``: await its fetch (shielded, bounded), then decide with what it brought, never
    waiting twice. For an edge that tries the synchronous verification itself first, so that a
    token whose key is cached costs no coroutine."""
    fetched = asyncio.shield(asyncio.wrap_future(pending.future))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(fetched, verifier.keys.fetch_timeout)
    try:
        return verify_token(verifier, token, block=False, where=where, peer_certificate=peer_certificate)
    except WouldBlock as exc:
        # the fetch waited for did not bring the kid, and another one started: never wait twice
        refusal: OAuthError = (
            Refused(UNKNOWN_KID, "the token is signed with an unknown key")
            if verifier.keys.has_keys
            else Unavailable(KEYS_UNAVAILABLE, "the issuer's keys are unreachable and none are cached")
        )
        if verifier.metrics is not None:  # decided here, not by the verifier: counted here
            verifier.metrics.refused(outcome_of(refusal), False)
        raise refusal from exc
