"""Attacks on the HTTP verifiers, one named test each: BearerAuthMiddleware in front of a Starlette
app on uvicorn, and HttpJwksSource against a real jwks_uri, both on free ports.

Each refusal asserts the HTTP status and the RFC 6750 error code (the JSON body's ``error``; the
``WWW-Authenticate`` challenge where its form is the point), never the message text. Tokens are
forged by hand with the issuer's real key wherever the point is the content, as in
test_token_verification_attacks.py.

Not supported, by design: a token in the query string or a form body (RFC 6750 §2.2, §2.3): it is
never read, so such a request counts as carrying no token.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import authsvc.verify.asgi
from authsvc.core.keys import jwks_json, public_jwk, rfc7638_thumbprint
from authsvc.logsafe import LogRateLimiter
from authsvc.verify import BearerAuthMiddleware, HttpJwksSource, JwksCache, TokenVerifier, current_principal
from authsvc.verify.jwks import JwksFetchError
from tests.conftest import ISSUER
from tests.keypool import rsa_key as pooled_rsa_key
from tests.security.test_token_verification_attacks import AUDIENCE, CLIENT_ID, Forge, In, hs256
from tests.server.test_serve import self_signed
from tests.verify.http_servers import JWKS_PATH, JwksServer, Reply, serve_asgi, serving

KEY = pooled_rsa_key()
ATTACKER = pooled_rsa_key()
FORGE = Forge(KEY, rfc7638_thumbprint(KEY.public_key()), ATTACKER)
JWKS = jwks_json([public_jwk(KEY.public_key())])
TIMEOUT = 10.0

ACCEPTED = (200, CLIENT_ID)
INVALID_TOKEN = (401, "invalid_token")
INVALID_REQUEST = (400, "invalid_request")


@dataclass
class Gateway:
    url: str
    http: httpx.Client

    def answer(
        self,
        path: str = "/payments",
        *,
        method: str = "GET",
        headers: Mapping[str, str] | list[tuple[str, str]] | None = None,
        data: Mapping[str, str] | None = None,
    ) -> tuple[int, str]:
        """(status, caller) when accepted, (status, RFC 6750 error code) when refused."""
        response = self.http.request(method, self.url + path, headers=headers, data=data, timeout=TIMEOUT)
        self.last = response
        body = response.json()
        return response.status_code, body["caller"] if response.status_code == 200 else body["error"]

    last: httpx.Response | None = None

    def bearer(self, token: str) -> tuple[int, str]:
        return self.answer(headers={"Authorization": f"Bearer {token}"})

    @property
    def challenge(self) -> str:
        assert self.last is not None
        return self.last.headers["www-authenticate"]


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    async def payments(request: Request) -> JSONResponse:
        return JSONResponse({"caller": current_principal().client_id})

    app = Starlette(routes=[Route("/payments", payments, methods=["GET", "POST"])])
    with JwksServer(serving(JWKS)) as jwks:
        verifier = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=HttpJwksSource(jwks.url()))
        assert verifier.keys.refresh()
        routes = {("GET", "/payments"): ["echo:read"], ("POST", "/payments"): ["echo:read"]}
        with serve_asgi(BearerAuthMiddleware(app, verifier, routes=routes)) as url, httpx.Client() as http:
            yield Gateway(url, http)


def test_forged_control_token_is_accepted(gateway: Gateway) -> None:
    """The forge, unchanged, makes tokens the middleware accepts: the refusals below are for the
    reason each test names, not for a broken forge."""
    assert gateway.bearer(FORGE.token()) == ACCEPTED


# -- credentials in the request ------------------------------------------------------------------


def test_two_authorization_headers_are_refused(gateway: Gateway) -> None:
    """Which one would count? Neither: RFC 6750 §3.1 invalid_request, even with two valid tokens."""
    token = FORGE.token()
    headers = [("Authorization", f"Bearer {token}"), ("authorization", f"Bearer {token}")]
    assert gateway.answer(headers=headers) == INVALID_REQUEST
    assert gateway.challenge.startswith('Bearer error="invalid_request"')


def test_bearer_scheme_without_a_token_is_refused(gateway: Gateway) -> None:
    # (trailing spaces are optional whitespace that HTTP parsers strip: "Bearer " arrives as "Bearer")
    for value in ("Bearer", "bearer", "BEARER"):
        assert gateway.answer(headers={"Authorization": value}) == INVALID_TOKEN
        assert gateway.challenge.startswith('Bearer error="invalid_token"')


def test_two_tokens_in_one_header_are_refused(gateway: Gateway) -> None:
    token = FORGE.token()
    assert gateway.answer(headers={"Authorization": f"Bearer {token} {token}"}) == INVALID_TOKEN
    assert gateway.answer(headers={"Authorization": f"Bearer {token}, Bearer {token}"}) == INVALID_TOKEN


def test_basic_credentials_instead_of_bearer_get_a_bare_challenge(gateway: Gateway) -> None:
    """Another scheme is no Bearer credential at all: 401 with the bare challenge (§3.1), and
    the client's Basic secret is neither verified nor echoed."""
    assert gateway.answer(headers={"Authorization": "Basic ZWNoby1yZWFkZXI6c2VjcmV0"}) == INVALID_TOKEN
    assert gateway.challenge == "Bearer"


def test_token_in_the_query_string_is_not_accepted(gateway: Gateway) -> None:
    """RFC 6750 §2.3 (URI query parameter) is not supported: URLs reach logs and proxies."""
    assert gateway.answer(f"/payments?access_token={FORGE.token()}") == INVALID_TOKEN
    assert gateway.challenge == "Bearer", "the token in the query string was read"


def test_token_in_a_form_body_is_not_accepted(gateway: Gateway) -> None:
    """RFC 6750 §2.2 (form-encoded body parameter) is not supported either."""
    assert gateway.answer(method="POST", data={"access_token": FORGE.token()}) == INVALID_TOKEN
    assert gateway.challenge == "Bearer"


def test_oversized_authorization_header_is_refused(gateway: Gateway) -> None:
    assert gateway.bearer("a" * 9000) == INVALID_TOKEN


# -- hostile tokens --------------------------------------------------------------------------------


def test_alg_none_is_refused(gateway: Gateway) -> None:
    unsigned = FORGE.token(header=FORGE.header(alg="none"), sign=lambda data: b"")
    assert gateway.bearer(unsigned) == INVALID_TOKEN
    assert gateway.bearer(unsigned.rstrip(".") + ".") == INVALID_TOKEN


def test_hs256_signed_with_the_public_key_is_refused(gateway: Gateway) -> None:
    pem = KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert gateway.bearer(FORGE.token(header=FORGE.header(alg="HS256"), sign=hs256(pem))) == INVALID_TOKEN


def test_attackers_key_is_refused(gateway: Gateway) -> None:
    assert gateway.bearer(FORGE.token(key=ATTACKER)) == INVALID_TOKEN


def test_expired_token_is_refused(gateway: Gateway) -> None:
    expired = FORGE.token(claims=FORGE.claims(exp=In(-3600), iat=In(-3900), nbf=In(-3900)))
    assert gateway.bearer(expired) == INVALID_TOKEN
    assert gateway.challenge.startswith('Bearer error="invalid_token"')


def test_wrong_audience_is_refused(gateway: Gateway) -> None:
    assert gateway.bearer(FORGE.token(claims=FORGE.claims(aud="other"))) == INVALID_TOKEN


def test_wrong_issuer_is_refused(gateway: Gateway) -> None:
    assert gateway.bearer(FORGE.token(claims=FORGE.claims(iss="https://evil.test"))) == INVALID_TOKEN


def test_insufficient_scope_names_the_required_scope(gateway: Gateway) -> None:
    assert gateway.bearer(FORGE.token(claims=FORGE.claims(scope="echo:write"))) == (403, "insufficient_scope")
    assert 'scope="echo:read"' in gateway.challenge


def test_a_path_with_a_newline_cannot_forge_a_log_line(
    gateway: Gateway, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a fresh log budget: refusals earlier in the session may have spent the shared one
    monkeypatch.setattr(authsvc.verify.asgi, "_REFUSALS", LogRateLimiter(rate=10, burst=50))
    with caplog.at_level(logging.INFO, "authsvc.verify"):
        assert gateway.answer("/payments%0AINFO%20forged") == (403, "access_denied")
    refusals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused")]
    assert refusals, "the refusal was not logged"
    assert all("\n" not in line for line in refusals)


# -- the jwks_uri ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://auth.example/.well-known/jwks.json",
        "http://10.0.0.7:8080/.well-known/jwks.json",
        "http://127.0.0.1.attacker.test/jwks.json",
        "http://localhost.attacker.test/jwks.json",
    ],
)
def test_plaintext_jwks_url_to_a_non_loopback_host_is_refused_at_construction(url: str) -> None:
    with pytest.raises(ValueError):
        HttpJwksSource(url)


def test_jwks_redirect_to_another_origin_is_refused() -> None:
    """Before the keys are installed: a redirect to a host the operator never named could hand
    the verifier an attacker's keys."""
    attacker_jwks = jwks_json([public_jwk(ATTACKER.public_key())])
    with JwksServer(serving(attacker_jwks)) as attacker:

        def redirect(path: str, headers: Mapping[str, str]) -> Reply:
            return Reply(302, headers={"Location": attacker.url()})

        with JwksServer(redirect) as issuer:
            cache = JwksCache(HttpJwksSource(issuer.url()))
            assert cache.refresh() is False
            with pytest.raises(JwksFetchError):
                HttpJwksSource(issuer.url()).fetch()
        # same host, another port is another origin too
        assert attacker.requests == []


def test_jwks_redirect_from_https_to_plaintext_is_refused(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    with JwksServer(serving(JWKS)) as plain:

        def downgrade(path: str, headers: Mapping[str, str]) -> Reply:
            return Reply(301, headers={"Location": plain.url()})

        with JwksServer(downgrade, tls=tls) as issuer, pytest.raises(JwksFetchError):
            HttpJwksSource(issuer.url(), ca_file=cert).fetch()
        assert plain.requests == []


@pytest.mark.parametrize("close_delimited", [False, True], ids=["content_length", "no_content_length"])
def test_oversize_jwks_body_is_refused(close_delimited: bool) -> None:
    """A huge body (declared, or only sent) is refused before it is parsed, and the last good set
    stays in use."""
    replies = [Reply(200, JWKS.encode())]
    with JwksServer(lambda p, h: replies[-1]) as server:
        source = HttpJwksSource(server.url(), max_bytes=64 * 1024)
        cache = JwksCache(source)
        verifier = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=cache)
        assert cache.refresh()
        padding = b" " * (64 * 1024)
        replies.append(Reply(200, JWKS.encode() + padding, close_delimited=close_delimited))
        with pytest.raises(JwksFetchError):
            source.fetch()
        assert cache.refresh() is False
        assert verifier.verify(FORGE.token()).client_id == CLIENT_ID
        assert [p for p, _ in server.requests] == [JWKS_PATH] * 3
