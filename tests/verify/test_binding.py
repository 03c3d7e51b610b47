"""Certificate-bound tokens at the verifier (RFC 8705 §3): the cnf claim, the per-call check on
fresh and cached tokens, and where each edge finds the peer certificate (gRPC's auth context,
the ASGI TLS extension)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, MutableMapping
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from authsvc.core.errors import InvalidToken
from authsvc.core.keys import jwks_json, public_jwk, rfc7638_thumbprint
from authsvc.verify import BearerAuthMiddleware, StaticJwksSource, TokenVerifier, current_principal
from authsvc.verify.asgi import asgi_peer_certificate
from authsvc.verify.binding import (
    DEFER_BINDING,
    bound_thumbprint,
    check_binding,
    check_grpc_binding,
    grpc_peer_certificate,
)
from tests.conftest import ISSUER
from tests.keypool import rsa_key as pooled_rsa_key
from tests.pki import Pki
from tests.security.test_token_verification_attacks import AUDIENCE, CLIENT_ID, Forge
from tests.verify.test_asgi import CountingCache

KEY = pooled_rsa_key()
FORGE = Forge(KEY, rfc7638_thumbprint(KEY.public_key()), pooled_rsa_key())
JWKS = jwks_json([public_jwk(KEY.public_key())])


def verifier() -> TokenVerifier:
    return TokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=StaticJwksSource(JWKS))


def bound_token(thumbprint: str) -> str:
    return FORGE.token(claims=FORGE.claims(cnf={"x5t#S256": thumbprint}))


# -- the cnf claim --------------------------------------------------------------------------------

THUMB = "05FtrRzklS7gIMrpsnFjxOdePHRP7hO33wn8yXf3vmI"


def test_no_cnf_is_unbound() -> None:
    assert bound_thumbprint({"sub": "x"}) is None


def test_x5t_s256_is_the_binding() -> None:
    assert bound_thumbprint({"cnf": {"x5t#S256": THUMB}}) == THUMB


@pytest.mark.parametrize(
    "cnf",
    [
        None,
        "x5t",
        [THUMB],
        {},
        {"x5t#S256": None},
        {"x5t#S256": 7},
        {"x5t#S256": THUMB + "="},  # padded
        {"x5t#S256": THUMB[:-1]},  # 31.x bytes
        {"x5t#S256": THUMB[:-1] + "+"},  # not base64url
        {"x5t#S256": THUMB[:-1] + "J"},  # non-canonical trailing bits
        {"x5t#S256": "A" * 44},  # 33 bytes
    ],
    ids=[
        "null",
        "string",
        "list",
        "empty",
        "null-thumb",
        "number",
        "padded",
        "short",
        "plus",
        "noncanonical",
        "long",
    ],
)
def test_malformed_cnf_is_invalid_token(cnf: object) -> None:
    with pytest.raises(InvalidToken):
        bound_thumbprint({"cnf": cnf})


@pytest.mark.parametrize(
    "cnf",
    [{"jkt": THUMB}, {"jwk": {"kty": "EC"}}, {"x5t#S256": THUMB, "jkt": THUMB}, {"x5t": THUMB}],
    ids=["dpop-jkt", "jwk", "x5t-and-jkt", "sha1-x5t"],
)
def test_unknown_confirmation_methods_are_refused(cnf: object) -> None:
    with pytest.raises(InvalidToken, match="confirmation method"):
        bound_thumbprint({"cnf": cnf})


def test_check_binding(pki: Pki) -> None:
    check_binding(pki.client.thumbprint, pki.client.der)
    with pytest.raises(InvalidToken, match="another client certificate"):
        check_binding(pki.client.thumbprint, pki.other_client.der)
    with pytest.raises(InvalidToken, match="mutual TLS"):
        check_binding(pki.client.thumbprint, None)


# -- the verifier -----------------------------------------------------------------------------------


def test_bound_token_needs_its_certificate(pki: Pki) -> None:
    v = verifier()
    token = bound_token(pki.client.thumbprint)
    principal = v.verify(token, peer_certificate=pki.client.der)
    assert principal.certificate_thumbprint == pki.client.thumbprint
    for presented in (None, pki.other_client.der, pki.foreign_client.der):
        with pytest.raises(InvalidToken):
            v.verify(token, peer_certificate=presented)


def test_the_binding_is_checked_on_cache_hits_too(pki: Pki) -> None:
    cache = CountingCache(StaticJwksSource(JWKS))
    v = TokenVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=cache)
    token = bound_token(pki.client.thumbprint)
    v.verify(token, peer_certificate=pki.client.der)  # verified and cached
    assert cache.finds == 1
    with pytest.raises(InvalidToken):
        v.verify(token, peer_certificate=pki.other_client.der)  # cached, but not this caller's
    with pytest.raises(InvalidToken):
        v.verify(token)
    assert v.verify(token, peer_certificate=pki.client.der).client_id == CLIENT_ID
    assert cache.finds == 1  # every call after the first was a cache hit


def test_a_refused_first_use_does_not_open_the_cache(pki: Pki) -> None:
    v = verifier()
    token = bound_token(pki.client.thumbprint)
    with pytest.raises(InvalidToken):
        v.verify(token, peer_certificate=pki.other_client.der)
    with pytest.raises(InvalidToken):
        v.verify(token, peer_certificate=pki.other_client.der)
    assert v.verify(token, peer_certificate=pki.client.der).client_id == CLIENT_ID


def test_defer_binding_accepts_and_reports(pki: Pki) -> None:
    principal = verifier().verify(bound_token(pki.client.thumbprint), peer_certificate=DEFER_BINDING)
    assert principal.certificate_thumbprint == pki.client.thumbprint


def test_unbound_token_works_with_or_without_a_certificate(pki: Pki) -> None:
    v = verifier()
    token = FORGE.token()
    assert v.verify(token).certificate_thumbprint is None
    assert v.verify(token, peer_certificate=pki.client.der).client_id == CLIENT_ID


# -- where the edges find the certificate ---------------------------------------------------------


def test_grpc_peer_certificate_from_the_auth_context(pki: Pki) -> None:
    assert grpc_peer_certificate({"x509_pem_cert": [pki.client.cert_pem]}) == pki.client.der
    assert grpc_peer_certificate({"transport_security_type": [b"ssl"]}) is None
    assert grpc_peer_certificate({}) is None
    with pytest.raises(InvalidToken):
        grpc_peer_certificate(
            {"x509_pem_cert": [b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----"]}
        )


def test_check_grpc_binding(pki: Pki) -> None:
    right = {"x509_pem_cert": [pki.client.cert_pem]}
    for _ in range(2):  # the second time from the remembered thumbprint
        check_grpc_binding(pki.client.thumbprint, right)
        with pytest.raises(InvalidToken, match="another client certificate"):
            check_grpc_binding(pki.client.thumbprint, {"x509_pem_cert": [pki.other_client.cert_pem]})
    with pytest.raises(InvalidToken, match="mutual TLS"):
        check_grpc_binding(pki.client.thumbprint, {"transport_security_type": [b"ssl"]})
    garbage = {"x509_pem_cert": [b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----"]}
    for _ in range(2):
        with pytest.raises(InvalidToken):
            check_grpc_binding(pki.client.thumbprint, garbage)


def _scope(tls: object = None, headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": "http",
        "method": "GET",
        "path": "/items",
        "headers": headers or [],
    }
    if tls is not None:
        scope["extensions"] = {"tls": tls}
    return scope


def test_asgi_peer_certificate_from_the_tls_extension(pki: Pki) -> None:
    chain = [pki.client.cert_pem.decode(), pki.ca.cert_pem.decode()]
    assert (
        asgi_peer_certificate(_scope({"client_cert_chain": chain, "client_cert_error": None}))
        == pki.client.der
    )
    assert asgi_peer_certificate(_scope({"client_cert_chain": chain})) == pki.client.der


@pytest.mark.parametrize(
    "tls",
    [
        None,
        {},
        {"client_cert_chain": []},
        {"client_cert_chain": "not a list"},
        {"client_cert_chain": [7]},
        {"client_cert_chain": ["garbage"]},
        "tls",
    ],
    ids=["no-extension", "no-chain", "empty-chain", "string", "not-pem", "garbage", "malformed-extension"],
)
def test_asgi_peer_certificate_absent(tls: object) -> None:
    assert asgi_peer_certificate(_scope(tls)) is None


def test_asgi_certificate_that_failed_verification_counts_as_none(pki: Pki) -> None:
    tls = {"client_cert_chain": [pki.client.cert_pem.decode()], "client_cert_error": "unknown CA"}
    assert asgi_peer_certificate(_scope(tls)) is None


async def _app(scope: Any, receive: Any, send: Any) -> None:
    body = json.dumps({"caller": current_principal().client_id}).encode()
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": body})


def _call(middleware: BearerAuthMiddleware, scope: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    asyncio.run(middleware(dict(scope), receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body)


def test_asgi_middleware_accepts_a_bound_token_with_its_certificate(pki: Pki) -> None:
    middleware = BearerAuthMiddleware(_app, verifier(), routes={("GET", "/items"): ["echo:read"]})
    auth = [(b"authorization", f"Bearer {bound_token(pki.client.thumbprint)}".encode())]
    chain = {"client_cert_chain": [pki.client.cert_pem.decode()], "client_cert_error": None}
    assert _call(middleware, _scope(chain, auth)) == (200, {"caller": CLIENT_ID})
    other = {"client_cert_chain": [pki.other_client.cert_pem.decode()], "client_cert_error": None}
    status, body = _call(middleware, _scope(other, auth))  # the same token, cached, another caller
    assert (status, body["error"]) == (401, "invalid_token")


def test_asgi_middleware_refuses_a_bound_token_without_the_extension(pki: Pki) -> None:
    middleware = BearerAuthMiddleware(_app, verifier(), routes={("GET", "/items"): ["echo:read"]})
    auth = [(b"authorization", f"Bearer {bound_token(pki.client.thumbprint)}".encode())]
    status, body = _call(middleware, _scope(None, auth))
    assert (status, body["error"]) == (401, "invalid_token")
    unbound = [(b"authorization", f"Bearer {FORGE.token()}".encode())]
    assert _call(middleware, _scope(None, unbound)) == (200, {"caller": CLIENT_ID})


def test_uvicorn_over_mutual_tls_still_refuses_bound_tokens(pki: Pki) -> None:
    """uvicorn asks for and verifies the client certificate, but does not hand it to the app (no
    ASGI TLS extension): the middleware cannot check the binding, so it refuses, and unbound
    tokens keep working. A real server on a free port, real TLS."""
    import socket
    import ssl
    import threading

    async def items(request: Request) -> JSONResponse:
        return JSONResponse({"caller": current_principal().client_id})

    app = BearerAuthMiddleware(
        Starlette(routes=[Route("/items", items)]), verifier(), routes={("GET", "/items"): ["echo:read"]}
    )
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        ssl_certfile=str(pki.server.cert_path),
        ssl_keyfile=str(pki.server.key_path),
        ssl_ca_certs=str(pki.ca.cert_path),
        ssl_cert_reqs=ssl.CERT_REQUIRED,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        context = ssl.create_default_context(cafile=str(pki.ca.cert_path))
        context.load_cert_chain(pki.client.cert_path, pki.client.key_path)
        with httpx.Client(verify=context, timeout=10) as http:
            url = f"https://localhost:{port}/items"
            bound = http.get(url, headers={"Authorization": f"Bearer {bound_token(pki.client.thumbprint)}"})
            assert (bound.status_code, bound.json()["error"]) == (401, "invalid_token")
            plain = http.get(url, headers={"Authorization": f"Bearer {FORGE.token()}"})
            assert (plain.status_code, plain.json()) == (200, {"caller": CLIENT_ID})
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
