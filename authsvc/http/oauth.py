"""The TokenService's HTTP edge: the OAuth endpoints every standard client and ``jwks_uri``
verifier speaks, translated to the same application layer as gRPC.

- ``POST /oauth2/token``: RFC 6749 §4.4.2, a form body; ``client_secret_basic`` (§2.3.1
  form-urlencoded id and secret), ``client_secret_post`` or ``private_key_jwt`` (RFC 7523 §2.2,
  ``client_assertion_type`` and ``client_assertion``); §5.1 answers, §5.2 errors
  (:func:`authsvc.httpstatus.token_error`; a rate limit is 429 with ``Retry-After``).
  ``audience`` (or RFC 8707 ``resource``) may repeat; no other parameter may (§3.2).
- ``GET /.well-known/jwks.json``: the keyring's published set, ``Cache-Control: max-age`` =
  the JWKS max age, an ``ETag``, and 304 for ``If-None-Match``.
- ``GET /.well-known/oauth-authorization-server``: RFC 8414 metadata, URLs built from the issuer.
- ``POST /oauth2/introspect``: RFC 7662, for an authenticated client; a token it may not see,
  or one that is invalid or expired, is ``{"active": false}``.
- ``POST /oauth2/revoke``: RFC 7009, for an authenticated client, on its own tokens only; the
  token joins the revocation list (issue 11), pushed to verifiers by ``WatchRevocations``.
- ``GET /oauth2/revocations``: the revocation list for verifiers that poll over HTTP
  (:class:`authsvc.verify.HttpRevocationSource`), for a client holding ``authsvc:revocations``
  (Basic only); the whole current list, ``Cache-Control: no-store``, an ``ETag`` of its
  sequence and 304 for ``If-None-Match``. Not standard: named in the metadata as
  ``revocation_list_endpoint``.

Over mutual TLS (``authsvc serve --mtls-http-listen``, RFC 8705) the same endpoints run on a
listener that requires a client certificate: a token issued there is bound to it
(``cnf.x5t#S256``), the metadata says so (``tls_client_certificate_bound_access_tokens``) and
names those endpoints in ``mtls_endpoint_aliases`` (§5), and introspection reports a token's
``cnf`` (§3.2).

Routes live under the issuer's path, if it has one (``https://auth.example/tenant`` serves
``/tenant/oauth2/token``); the metadata document is also served where RFC 8414 §3 puts it
(``/.well-known/oauth-authorization-server/tenant``).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from aiohttp import web

from authsvc.authority.keyring import Keyring
from authsvc.authority.revocations import RevocationFeed, RevocationRegistry
from authsvc.authority.tokens import TokenIssuer
from authsvc.core.certs import ClientCertificate
from authsvc.core.client_auth import PresentedCredentials, presented_credentials
from authsvc.core.clients import Client
from authsvc.core.errors import InvalidRequest, InvalidToken, OAuthError, RateLimited, UnauthorizedClient
from authsvc.core.grants import TokenRequest
from authsvc.core.revocation import REVOCATIONS_SCOPE, Revocation
from authsvc.httpstatus import NO_STORE, HttpAnswer, token_error
from authsvc.logsafe import loggable
from authsvc.serving import peer_certificate
from authsvc.verify import Principal, TokenVerifier, verify_on_event_loop
from authsvc.verify.binding import DEFER_BINDING

__all__ = ["INTROSPECT_SCOPE", "MAX_FORM_BYTES", "OAuthHttp"]

log = logging.getLogger("authsvc.http")

MAX_FORM_BYTES = 16 * 1024
"""A token request is a few hundred bytes; a larger body is refused before it is parsed."""
INTROSPECT_SCOPE = "authsvc:introspect"
"""A client holding this scope may introspect any token; others only their own."""
_REPEATABLE = frozenset({"audience", "resource"})
_FORM = "application/x-www-form-urlencoded"
_JSON = "application/json"


@dataclass(frozen=True)
class _Form:
    """A parsed form body: each parameter once, except the repeatable ones."""

    single: Mapping[str, str]
    repeated: Mapping[str, Sequence[str]]

    def get(self, name: str) -> str:
        return self.single.get(name, "")


def _answer(answer: HttpAnswer) -> web.Response:
    return web.json_response(answer.body, status=answer.status, headers=dict(answer.headers))


def _ok(body: Mapping[str, object]) -> web.Response:
    return web.json_response(dict(body), headers=dict(NO_STORE))


async def _form(request: web.Request) -> _Form:
    """RFC 6749 §3.2 / Appendix B: an ``application/x-www-form-urlencoded`` body, UTF-8, each
    parameter at most once."""
    if request.content_type != _FORM:
        raise InvalidRequest(f"the request body must be {_FORM}")
    body = await request.content.read(MAX_FORM_BYTES + 1)
    if len(body) > MAX_FORM_BYTES:
        raise InvalidRequest("the request body is too large")
    try:
        pairs = parse_qsl(
            body.decode("ascii"),
            keep_blank_values=True,
            strict_parsing=bool(body),
            encoding="utf-8",
            errors="strict",
            max_num_fields=64,
        )
    except (UnicodeError, ValueError) as exc:
        raise InvalidRequest("the request body is not a valid form") from exc
    single: dict[str, str] = {}
    repeated: dict[str, list[str]] = {}
    for name, value in pairs:
        if name in _REPEATABLE:
            repeated.setdefault(name, []).append(value)
        elif name in single:
            raise InvalidRequest(f"the parameter {name} is repeated")
        else:
            single[name] = value
    return _Form(single, repeated)


class OAuthHttp:
    """The OAuth HTTP endpoints of one TokenService process.

    ``introspection`` verifies tokens for RFC 7662 (the issuer's own keys, any audience, no
    leeway); ``jwks_max_age`` is what ``Cache-Control`` tells jwks_uri clients.
    """

    def __init__(
        self,
        *,
        issuer_url: str,
        issuer: TokenIssuer,
        keyring: Keyring,
        introspection: TokenVerifier,
        jwks_max_age: int,
        revocations: RevocationRegistry | None = None,
        revocation_feed: RevocationFeed | None = None,
        certificate_bound: bool = False,
    ) -> None:
        self.issuer_url = issuer_url.rstrip("/")
        # RFC 8705: some listener (gRPC or HTTP) issues certificate-bound tokens; and the public
        # origin of the HTTP one, for mtls_endpoint_aliases (set once it is bound)
        self.certificate_bound = certificate_bound
        self.mtls_base_url: str | None = None
        self._issuer = issuer
        self._keyring = keyring
        self._introspection = introspection
        self._jwks_max_age = jwks_max_age
        self._revocations = revocations
        self._feed = revocation_feed
        self._prefix = urlsplit(self.issuer_url).path.rstrip("/")
        self._jwks_cache: tuple[str, bytes, str] | None = None  # (jwks text, body, etag)

    # -- the application -------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_FORM_BYTES)
        p = self._prefix
        app.router.add_post(f"{p}/oauth2/token", self.token)
        app.router.add_post(f"{p}/oauth2/introspect", self.introspect)
        app.router.add_post(f"{p}/oauth2/revoke", self.revoke)
        if self._feed is not None:
            app.router.add_get(f"{p}/oauth2/revocations", self.revocation_list)
        app.router.add_get(f"{p}/.well-known/jwks.json", self.jwks)
        app.router.add_get(f"{p}/.well-known/oauth-authorization-server", self.metadata)
        if p:
            app.router.add_get(f"/.well-known/oauth-authorization-server{p}", self.metadata)
        return app

    def url(self, path: str) -> str:
        return self.issuer_url + path

    # -- client authentication -------------------------------------------------------------

    @staticmethod
    def _credentials(request: web.Request, form: _Form) -> PresentedCredentials:
        return presented_credentials(
            request.headers.getall("Authorization", []),
            client_id=form.get("client_id"),
            client_secret=form.get("client_secret"),
            client_assertion=form.get("client_assertion"),
            client_assertion_type=form.get("client_assertion_type"),
            client_certificate=_client_certificate(request),
        )

    async def _client(self, request: web.Request, form: _Form) -> Client:
        return await self._issuer.authenticate(self._credentials(request, form), peer=request.remote)

    # -- endpoints -------------------------------------------------------------------------

    async def token(self, request: web.Request) -> web.Response:
        """RFC 6749 §4.4.2 and §5."""
        basic = "Authorization" in request.headers
        client_id = ""
        try:
            form = await _form(request)
            presented = self._credentials(request, form)
            client_id = presented.client_id
            token_request = TokenRequest.of(
                presented,
                grant_type=form.get("grant_type"),
                scope=form.get("scope"),
                audience=tuple(form.repeated.get("audience", ())) + tuple(form.repeated.get("resource", ())),
            )
        except OAuthError as exc:
            self._issuer.refused(client_id, exc, peer=request.remote)
            return _answer(token_error(exc, basic=basic))
        try:
            issued = await self._issuer.issue(token_request, peer=request.remote)
        except Exception as exc:  # logged by the issuer
            return _answer(token_error(exc, basic=basic))
        return _ok(
            {
                "access_token": issued.access_token,
                "token_type": issued.token_type,
                "expires_in": issued.expires_in,
                "scope": issued.scope,
            }
        )

    async def jwks(self, request: web.Request) -> web.Response:
        """The published JWK Set (RFC 7517 §5), cacheable for the JWKS max age."""
        text = self._keyring.jwks
        cached = self._jwks_cache
        if cached is None or cached[0] != text:
            body = text.encode()
            cached = self._jwks_cache = (text, body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
        _, body, etag = cached
        headers = {"Cache-Control": f"public, max-age={self._jwks_max_age}", "ETag": etag}
        if etag in [t.strip() for t in request.headers.get("If-None-Match", "").split(",")]:
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, content_type=_JSON, headers=headers)

    async def metadata(self, request: web.Request) -> web.Response:
        """RFC 8414 §2 authorization server metadata."""
        methods = [m.value for m in self._issuer.endpoint.auth_methods]
        document: dict[str, object] = {
            "issuer": self.issuer_url,
            "token_endpoint": self.url("/oauth2/token"),
            "jwks_uri": self.url("/.well-known/jwks.json"),
            "introspection_endpoint": self.url("/oauth2/introspect"),
            "revocation_endpoint": self.url("/oauth2/revoke"),
            "grant_types_supported": ["client_credentials"],
            "response_types_supported": [],
            "token_endpoint_auth_methods_supported": methods,
            "introspection_endpoint_auth_methods_supported": methods,
            "revocation_endpoint_auth_methods_supported": methods,
        }
        algs = list(self._issuer.endpoint.auth_signing_algs)
        if algs:  # RFC 8414 §2: for private_key_jwt (and client_secret_jwt, not offered)
            for endpoint in ("token", "introspection", "revocation"):
                document[f"{endpoint}_endpoint_auth_signing_alg_values_supported"] = algs
        if self._feed is not None:  # not RFC 8414: authsvc's list for verifiers that poll
            document["revocation_list_endpoint"] = self.url("/oauth2/revocations")
        if self.certificate_bound:  # RFC 8705 §3.3
            document["tls_client_certificate_bound_access_tokens"] = True
        if self.mtls_base_url is not None:  # RFC 8705 §5: where a client doing mutual TLS goes
            base = self.mtls_base_url.rstrip("/") + self._prefix
            document["mtls_endpoint_aliases"] = {
                "token_endpoint": base + "/oauth2/token",
                "introspection_endpoint": base + "/oauth2/introspect",
                "revocation_endpoint": base + "/oauth2/revoke",
            }
        return web.json_response(document, headers={"Cache-Control": f"public, max-age={self._jwks_max_age}"})

    async def introspect(self, request: web.Request) -> web.Response:
        """RFC 7662 §2. The caller authenticates as a client; it sees the claims of its own tokens,
        or of any token if it holds ``authsvc:introspect``. Everything else is inactive."""
        basic = "Authorization" in request.headers
        try:
            form = await _form(request)
            caller = await self._client(request, form)
            token = form.get("token")
            if not token:
                raise InvalidRequest("the token parameter is required")
        except (OAuthError, RateLimited) as exc:
            return _answer(token_error(exc, basic=basic))
        try:
            principal = await self._verify(token)
        except (InvalidToken, OAuthError):
            return _ok({"active": False})
        if principal.client_id != caller.client_id and INTROSPECT_SCOPE not in caller.allowed_scopes:
            return _ok({"active": False})
        if self._revoked(principal):  # RFC 7662 §2.2: a revoked token is not active
            return _ok({"active": False})
        claims = principal.claims
        # RFC 8705 §3.2; the claims are read-only mappings, which JSON cannot encode: a dict again
        bound = {} if principal.certificate_thumbprint is None else {"cnf": dict(claims["cnf"])}
        return _ok(
            {
                **bound,
                "active": True,
                "scope": claims["scope"],
                "client_id": principal.client_id,
                "token_type": "Bearer",
                "exp": claims["exp"],
                "iat": claims["iat"],
                "nbf": claims["nbf"],
                "sub": principal.subject,
                "aud": claims["aud"],
                "iss": principal.issuer,
                "jti": principal.jti,
            }
        )

    async def revoke(self, request: web.Request) -> web.Response:
        """RFC 7009 §2. A token that is invalid or unknown answers 200 (§2.2); a client may
        revoke only its own tokens (§2.1). The token's jti joins the revocation list, which
        WatchRevocations pushes to every verifier within seconds."""
        basic = "Authorization" in request.headers
        try:
            form = await _form(request)
            caller = await self._client(request, form)
            token = form.get("token")
            if not token:
                raise InvalidRequest("the token parameter is required")
            try:
                principal = await self._verify(token)
            except (InvalidToken, OAuthError):
                return web.Response(status=200, headers=dict(NO_STORE))
            if principal.client_id != caller.client_id:
                raise UnauthorizedClient("a client may revoke only its own tokens")
        except (OAuthError, RateLimited) as exc:
            return _answer(token_error(exc, basic=basic))
        if self._revocations is None:
            log.warning(
                "revocation requested: jti=%s, but this server keeps no list", loggable(principal.jti)
            )
        else:
            # a store write: off the loop; the feed then pushes it to watchers at once
            await asyncio.to_thread(
                self._revocations.revoke_token, principal.jti, expires_at=math.ceil(principal.expires_at)
            )
            if self._feed is not None:
                self._feed.notify()
        return web.Response(status=200, headers=dict(NO_STORE))

    async def revocation_list(self, request: web.Request) -> web.Response:
        """The revocation list, whole, for a verifier polling over HTTP (the sibling of
        ``WatchRevocations``): only for a client holding ``authsvc:revocations``, authenticated
        with Basic (a GET has no body), since the list reveals which clients were disabled and
        which tokens stolen. 401 ``invalid_client`` without valid credentials, 403
        ``unauthorized_client`` without the scope. The list is small by construction, so every
        answer is the whole of it; the ``ETag`` is its sequence, and an ``If-None-Match`` that
        names it is answered 304 (after authentication, like everything else)."""
        assert self._feed is not None  # the route exists only with a feed
        basic = "Authorization" in request.headers
        client_id = ""
        try:
            presented = presented_credentials(request.headers.getall("Authorization", []))
        except OAuthError as exc:
            self._issuer.refused(client_id, exc, peer=request.remote)
            return _answer(token_error(exc, basic=basic))
        client_id = presented.client_id
        try:
            client = await self._issuer.authenticate(presented, peer=request.remote)  # logs refusals
        except (OAuthError, RateLimited) as exc:
            return _answer(token_error(exc, basic=basic))
        if REVOCATIONS_SCOPE not in client.allowed_scopes:
            refusal = UnauthorizedClient(f"reading the revocation list needs the scope {REVOCATIONS_SCOPE}")
            self._issuer.refused(client_id, refusal, peer=request.remote)
            answer = token_error(refusal, basic=basic)
            return _answer(HttpAnswer(403, answer.body, answer.headers))
        current = self._feed.set
        etag = f'"{current.sequence}"'
        headers = {**dict(NO_STORE), "ETag": etag}
        if etag in [t.strip() for t in request.headers.get("If-None-Match", "").split(",")]:
            return web.Response(status=304, headers=headers)
        body = {"sequence": current.sequence, "revocations": [_entry(e) for e in current.entries()]}
        return web.json_response(body, headers=headers)

    def _revoked(self, principal: Principal) -> bool:
        feed = self._feed
        return feed is not None and feed.set.refuses(
            jti=principal.jti, client_id=principal.client_id, issued_at=principal.issued_at
        )

    async def _verify(self, token: str) -> Principal:
        """The token's principal, never blocking the loop (the keys come from the keyring's memory;
        the rare fetch runs in the key cache's thread). A certificate-bound token's binding is
        reported (introspection) or irrelevant (revocation), not enforced: the caller is a client
        asking about a token, not its bearer using it."""
        return await verify_on_event_loop(
            self._introspection, token, where="introspection", peer_certificate=DEFER_BINDING
        )


def _client_certificate(request: web.Request) -> ClientCertificate | None:
    """The client's certificate on a mutual-TLS listener (RFC 8705), None elsewhere: only the
    listener started with a client CA asks for one. InvalidClient if it does not parse."""
    der = peer_certificate(request)
    return None if der is None else _parse_certificate(der)


@functools.lru_cache(maxsize=1024)
def _parse_certificate(der: bytes) -> ClientCertificate:
    # the same certificate on every request of a client: parsed once (a failure is not remembered)
    return ClientCertificate.from_der(der)


def _entry(entry: Revocation) -> dict[str, object]:
    """One entry of ``GET /oauth2/revocations``, as ``WatchRevocations`` carries it."""
    if entry.jti is not None:
        return {"jti": entry.jti, "expires_at": entry.expires_at}
    return {"client_id": entry.client_id, "not_before": entry.not_before, "expires_at": entry.expires_at}
