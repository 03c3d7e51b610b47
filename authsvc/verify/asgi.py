"""Bearer token verification for HTTP resource servers on ASGI (Starlette, FastAPI, any ASGI app).

::

    from authsvc.verify import PUBLIC, BearerAuthMiddleware, HttpJwksSource, TokenVerifier

    verifier = TokenVerifier(issuer="https://auth.example", audience="payments",
                             jwks=HttpJwksSource("https://auth.example/.well-known/jwks.json"))
    app = BearerAuthMiddleware(app, verifier, routes={
        ("POST", "/api/v1/payments"): ["payments:write"],
        ("GET", "/api/v1/payments/{transaction_id}"): ["payments:read"],
        ("GET", "/healthz"): PUBLIC,
    })

Pure ASGI (not Starlette's ``BaseHTTPMiddleware``, which runs the app in another task and so loses
context variables): the app runs in the request's own task, where
:func:`~authsvc.verify.current_principal` returns the verified caller, in async and sync
(threadpool) handlers alike. Imports no web framework.

The same rules as the gRPC interceptors, answered as RFC 6750 §3 through
:func:`authsvc.httpstatus.bearer_error`, with a JSON body:

- deny by default: a request whose method and path match no route is 403 ``access_denied``,
  whatever its token; :data:`~authsvc.verify.PUBLIC` routes need none;
- no Bearer credentials (no ``Authorization`` header, or another scheme such as Basic): 401 with a
  bare ``WWW-Authenticate: Bearer`` challenge (§3.1: no error code);
- a malformed, expired, forged or foreign token: 401 ``Bearer error="invalid_token"``; more than
  one ``Authorization`` header: 400 ``invalid_request``;
- a valid token without a route's scope: 403 ``error="insufficient_scope", scope="..."``;
- no key set ever fetched: 503 ``temporarily_unavailable``.

A token bound to a client certificate (RFC 8705 §3, ``cnf.x5t#S256``) is accepted only when the
request's connection presented that certificate, which the ASGI server reports through the
`TLS extension <https://asgi.readthedocs.io/en/latest/specs/tls.html>`_
(``scope["extensions"]["tls"]["client_cert_chain"]``, with no ``client_cert_error``). A server
that does not implement the extension (uvicorn, at the time of writing), TLS ended at a proxy, or
plain TLS without a client certificate: every bound token is refused 401 ``invalid_token`` (deny
by default); unbound tokens work as always. Certificates forwarded in headers by a proxy are never
trusted.

Only the ``Authorization`` header is read: a token in the query string or a form body (RFC 6750
§2.2, §2.3) is not supported and counts as no token at all. Verification never blocks the event
loop (:func:`~authsvc.verify.verify_on_event_loop`). ``http`` requests are checked, ``lifespan``
passes through, a ``websocket`` is refused (closed before its handshake completes, which the
server answers 403) unless its route, keyed by the method ``"WEBSOCKET"``, is PUBLIC.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import Any, TypeAlias

from authsvc.core.errors import AccessDenied, InvalidToken, OAuthError
from authsvc.httpstatus import HttpAnswer, bearer_error
from authsvc.logsafe import LogRateLimiter, loggable
from authsvc.verify.binding import pem_to_der
from authsvc.verify.policy import PUBLIC, Public, Rule
from authsvc.verify.principal import bound_principal, http_bearer_token, verify_on_event_loop
from authsvc.verify.verifier import TokenVerifier

__all__ = ["ASGIApp", "BearerAuthMiddleware", "RoutePolicy", "RouteRules", "asgi_peer_certificate"]

log = logging.getLogger("authsvc.verify")
_REFUSALS = LogRateLimiter(rate=10, burst=50)

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]

RouteRules: TypeAlias = (
    Mapping[tuple[str, str], Sequence[str] | Public] | Callable[[str, str], Sequence[str] | Public | None]
)
"""``{(method, path_pattern): scopes or PUBLIC}``, or a callable ``(method, path) -> rule | None``."""

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "WEBSOCKET"})
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(:path)?\}")
_NO_POLICY = AccessDenied("this route declares no authorization policy")
_MAX_CACHED = 10_000


def _compile(pattern: str) -> re.Pattern[str]:
    """``/a/{id}`` matches one non-empty path segment for ``{id}``, ``{rest:path}`` the rest of
    the path (one or more characters, slashes included); everything else is literal."""
    if not pattern.startswith("/"):
        raise ValueError(f"route paths start with /, not {pattern!r}")
    parts, end = [], 0
    for m in _PARAM.finditer(pattern):
        parts.append(re.escape(pattern[end : m.start()]))
        parts.append(".+" if m.group(2) else "[^/]+")
        end = m.end()
    parts.append(re.escape(pattern[end:]))
    regex = "".join(parts)
    if "\\{" in regex or "\\}" in regex:
        raise ValueError(f"malformed path parameter in {pattern!r}")
    return re.compile(regex)


def _merge(rules: Sequence[Rule]) -> Rule | None:
    """One rule for a request several routes match: PUBLIC only if all of them are, otherwise
    every scope any of them requires, since the policy cannot know which one the app picks."""
    if not rules:
        return None
    if all(isinstance(r, Public) for r in rules):
        return PUBLIC
    scopes: dict[str, None] = {}
    for rule in rules:
        if not isinstance(rule, Public):
            scopes.update(dict.fromkeys(rule))
    return tuple(scopes)


class RoutePolicy:
    """Which scopes each ``(method, path)`` requires, or None (deny).

    Patterns match the request's whole path as the ASGI server gives it (``scope["path"]``,
    percent-decoded, including any ``root_path``); a ``{name}`` stands for one path segment and
    a ``{name:path}`` for the rest of the path. Where several routes match one request, the
    request needs every scope any of them requires (PUBLIC only if all are PUBLIC), so that an
    overlap between a public and a protected route never opens the protected one, whichever the
    app serves. A ``HEAD`` without a route of its own follows the ``GET`` route, as frameworks
    serve it. A callable decides on its own; if it raises, the request is denied.
    """

    def __init__(self, routes: RouteRules) -> None:
        self._callable: Callable[[str, str], Sequence[str] | Public | None] | None = None
        self._routes: list[tuple[str, re.Pattern[str], Rule]] = []
        if callable(routes):
            self._callable = routes
        else:
            for (method, pattern), rule in routes.items():
                if method not in _METHODS:
                    raise ValueError(f"unknown route method {method!r}: use one of {sorted(_METHODS)}")
                if isinstance(rule, str):
                    raise TypeError(f"the rule of {method} {pattern} must be a list of scopes, not a string")
                self._routes.append(
                    (method, _compile(pattern), rule if isinstance(rule, Public) else tuple(rule))
                )
        self._cache: dict[tuple[str, str], Rule | None] = {}
        self._lock = threading.Lock()

    def rule(self, method: str, path: str) -> Rule | None:
        if self._callable is not None:
            return self._call(method, path)
        key = (method, path)
        if key in self._cache:
            return self._cache[key]
        rule = self._match(method, path)
        if rule is None and method == "HEAD":
            rule = self._match("GET", path)
        with self._lock:
            if len(self._cache) < _MAX_CACHED:  # paths come from the wire: bound what we remember
                self._cache[key] = rule
        return rule

    def _match(self, method: str, path: str) -> Rule | None:
        return _merge([rule for m, regex, rule in self._routes if m == method and regex.fullmatch(path)])

    def _call(self, method: str, path: str) -> Rule | None:
        assert self._callable is not None
        try:
            rule = self._callable(method, path)
        except Exception:
            log.exception("the route policy failed on %s %s; denying", loggable(method), loggable(path))
            return None
        if rule is None or isinstance(rule, Public):
            return rule
        if isinstance(rule, str):
            log.error(
                "the route policy gave a string for %s %s, not a list of scopes; denying",
                loggable(method, 16),
                loggable(path),
            )
            return None
        return tuple(rule)


class BearerAuthMiddleware:
    """ASGI middleware that verifies the Bearer token of every HTTP request against its route's
    scopes before ``app`` sees it; see the module docstring for the answers.

    ``routes`` is a :data:`RouteRules` mapping or callable, or a :class:`RoutePolicy`. ``realm``,
    if given, goes in every challenge. Call ``verifier.keys.refresh()`` at start-up so that the
    first request does not wait for the initial key fetch.
    """

    def __init__(
        self,
        app: ASGIApp,
        verifier: TokenVerifier,
        *,
        routes: RouteRules | RoutePolicy,
        realm: str | None = None,
    ) -> None:
        self.app = app
        self.verifier = verifier
        self.policy = routes if isinstance(routes, RoutePolicy) else RoutePolicy(routes)
        self.realm = realm

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        if kind == "websocket":
            if isinstance(self.policy.rule("WEBSOCKET", path), Public):
                with bound_principal(None):
                    await self.app(scope, receive, send)
                return
            self._log_refusal("WEBSOCKET", path, _NO_POLICY)
            await send({"type": "websocket.close", "code": 1008})  # policy violation; the server says 403
            return
        if kind != "http":
            raise ValueError(f"BearerAuthMiddleware refuses the unknown ASGI scope type {kind!r}")
        method = str(scope.get("method", ""))
        rule = self.policy.rule(method, path)
        if isinstance(rule, Public):
            with bound_principal(None):  # no caller, whatever an enclosing context held
                await self.app(scope, receive, send)
            return
        if rule is None:
            await self._refuse(send, method, path, _NO_POLICY)
            return
        authorization = [
            value.decode("latin-1") for name, value in scope["headers"] if name == b"authorization"
        ]
        try:
            token = http_bearer_token(authorization)
            if token is None:
                await self._refuse(
                    send, method, path, InvalidToken("no access token: send Authorization: Bearer <token>"),
                    token_sent=False,
                )  # fmt: skip
                return
            principal = await verify_on_event_loop(
                self.verifier, token, where=path, peer_certificate=asgi_peer_certificate(scope)
            )
            TokenVerifier.require_scopes(principal, rule)
        except OAuthError as exc:
            await self._refuse(send, method, path, exc, required=rule)
            return
        with bound_principal(principal):
            await self.app(scope, receive, send)

    def _log_refusal(self, method: str, path: str, exc: OAuthError) -> None:
        # forged tokens cost the caller nothing: a flood of them writes a bounded amount of log
        _REFUSALS.log(
            log, logging.INFO, "request refused", "refused %s %s: %s (%s)",
            loggable(method, 16), loggable(path), exc.error, exc.description,
        )  # fmt: skip

    async def _refuse(
        self,
        send: Send,
        method: str,
        path: str,
        exc: OAuthError,
        *,
        required: Sequence[str] = (),
        token_sent: bool = True,
    ) -> None:
        self._log_refusal(method, path, exc)
        answer = bearer_error(exc, required_scopes=required, token_sent=token_sent, realm=self.realm)
        await _send_json(send, answer)


def asgi_peer_certificate(scope: Scope) -> bytes | None:
    """The DER certificate the client presented on this request's connection, from the ASGI TLS
    extension (the first of ``client_cert_chain``, PEM), or None: no extension, no certificate,
    or one the server reports it could not verify (``client_cert_error``)."""
    extensions = scope.get("extensions")
    tls = extensions.get("tls") if isinstance(extensions, Mapping) else None
    if not isinstance(tls, Mapping) or tls.get("client_cert_error") is not None:
        return None
    chain = tls.get("client_cert_chain")
    if not isinstance(chain, Sequence) or isinstance(chain, str | bytes) or not chain:
        return None
    first = chain[0]
    if not isinstance(first, str | bytes):
        return None
    try:
        return pem_to_der(first)
    except OAuthError:
        return None


async def _send_json(send: Send, answer: HttpAnswer) -> None:
    body = json.dumps(answer.body, separators=(",", ":")).encode("utf-8")
    headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers]
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode("ascii"))]
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
