"""The TokenService over HTTP, driven by the standard clients a user would pick: curl, Authlib's
OAuth2Session and AsyncOAuth2Client, requests-oauthlib's BackendApplicationClient; the token then
verifies against the jwks_uri with PyJWT's PyJWKClient, a verifier that knows nothing of authsvc.

One real TokenService (gRPC and HTTPS on free ports, a self-signed certificate the clients are
told to trust) per module; each test registers its own clients.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.integrations.requests_client import OAuth2Session
from oauthlib.oauth2 import BackendApplicationClient
from requests_oauthlib import OAuth2Session as RequestsOAuth2Session

from authsvc.server.app import RunningServer, open_authority, start_server
from tests.conftest import ISSUER, RegisteredClient, TokenServer, serve_config
from tests.helpers import ServerThread
from tests.server.test_serve import self_signed

TIMEOUT = 10


@dataclass
class Https:
    """The module's TokenService, its HTTPS base URL and the certificate that signs it."""

    server: TokenServer
    url: str
    ca: Path


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tls: tuple[Path, Path]) -> Iterator[TokenServer]:
    cert, key = tls
    config = serve_config(
        tmp_path_factory.mktemp("http") / "data", http_listen="127.0.0.1:0", tls_cert=cert, tls_key=key
    )
    thread: ServerThread[RunningServer] = ServerThread(
        lambda: start_server(config, authority=open_authority(config))
    )
    CA["path"] = str(cert)
    running = thread.start()
    try:
        yield TokenServer(running, config, thread)
    finally:
        thread.stop(grace=0)


def register(
    server: TokenServer, scopes: tuple[str, ...] = ("payments:read", "payments:write")
) -> RegisteredClient:
    return server.register(f"shop-{secrets.token_hex(4)}", scopes=scopes, audiences=("payments", "ledger"))


CA: dict[str, str] = {}  # the module's certificate, set by the server fixture


def base(server: TokenServer) -> str:
    return f"https://127.0.0.1:{server.running.http_port}"


def ca() -> str:
    return CA["path"]


def token_url(server: TokenServer) -> str:
    return base(server) + "/oauth2/token"


def claims_via_jwks_uri(server: TokenServer, token: str) -> dict[str, Any]:
    """Verify ``token`` as any jwks_uri verifier would: PyJWT fetches the set over HTTP."""
    keys = jwt.PyJWKClient(
        base(server) + "/.well-known/jwks.json", ssl_context=ssl.create_default_context(cafile=ca())
    )
    key = keys.get_signing_key_from_jwt(token)
    claims: dict[str, Any] = jwt.decode(
        token,
        key.key,
        algorithms=["RS256"],
        audience="payments",
        issuer=ISSUER,
        options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]},
    )
    return claims


def post(server: TokenServer, path: str, data: Any, **kwargs: Any) -> requests.Response:
    return requests.post(base(server) + path, data=data, timeout=TIMEOUT, verify=ca(), **kwargs)


# -- standard clients -----------------------------------------------------------------------------


def test_curl_with_basic_gets_a_token(server: TokenServer) -> None:
    shop = register(server)
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--cacert",
            ca(),
            "--fail-with-body",
            "-u",
            f"{shop.client_id}:{shop.secret}",
            "-d",
            "grant_type=client_credentials",
            "-d",
            "scope=payments:write",
            token_url(server),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    answer = json.loads(out.stdout)
    assert answer["token_type"] == "Bearer"
    assert answer["scope"] == "payments:write"
    assert 0 < answer["expires_in"] <= 300
    claims = claims_via_jwks_uri(server, answer["access_token"])
    assert claims["client_id"] == shop.client_id and claims["scope"] == "payments:write"


@pytest.mark.parametrize("auth_method", ["client_secret_basic", "client_secret_post"])
def test_authlib_oauth2_session(server: TokenServer, auth_method: str) -> None:
    shop = register(server)
    with OAuth2Session(
        shop.client_id, shop.secret, token_endpoint_auth_method=auth_method, scope="payments:read"
    ) as session:
        token = session.fetch_token(token_url(server), grant_type="client_credentials", verify=ca())
    assert token["token_type"] == "Bearer" and token["scope"] == "payments:read"
    assert claims_via_jwks_uri(server, token["access_token"])["sub"] == shop.client_id


def test_authlib_async_oauth2_client(server: TokenServer) -> None:
    shop = register(server)

    async def fetch() -> dict[str, Any]:
        async with AsyncOAuth2Client(
            shop.client_id,
            shop.secret,
            scope="payments:write",
            verify=ssl.create_default_context(cafile=ca()),
        ) as client:
            token: dict[str, Any] = await client.fetch_token(
                token_url(server), grant_type="client_credentials"
            )
            return token

    token = asyncio.run(fetch())
    assert claims_via_jwks_uri(server, token["access_token"])["scope"] == "payments:write"


def test_requests_oauthlib_backend_application_client(server: TokenServer) -> None:
    shop = register(server)
    session = RequestsOAuth2Session(client=BackendApplicationClient(client_id=shop.client_id))
    token = session.fetch_token(
        verify=ca(), token_url=token_url(server), client_id=shop.client_id, client_secret=shop.secret
    )
    assert claims_via_jwks_uri(server, token["access_token"])["client_id"] == shop.client_id


def test_audience_and_resource_parameters_select_the_audience(server: TokenServer) -> None:
    shop = register(server)
    for name in ("audience", "resource"):
        answer = post(
            server,
            "/oauth2/token",
            [("grant_type", "client_credentials"), (name, "ledger")],
            auth=(shop.client_id, shop.secret),
        )
        assert answer.status_code == 200, answer.text
        token = answer.json()["access_token"]
        assert jwt.decode(token, options={"verify_signature": False})["aud"] == "ledger"


def test_token_answer_is_never_cached_and_logged_by_jti(
    server: TokenServer, caplog: pytest.LogCaptureFixture
) -> None:
    shop = register(server)
    caplog.set_level(logging.INFO, logger="authsvc.token")
    answer = post(
        server, "/oauth2/token", {"grant_type": "client_credentials"}, auth=(shop.client_id, shop.secret)
    )
    assert answer.status_code == 200
    assert answer.headers["Cache-Control"] == "no-store" and answer.headers["Pragma"] == "no-cache"
    assert answer.headers["Content-Type"].startswith("application/json")
    jti = jwt.decode(answer.json()["access_token"], options={"verify_signature": False})["jti"]
    lines = [r.getMessage() for r in caplog.records if r.name == "authsvc.token"]
    assert any(f"jti={jti}" in line for line in lines)
    assert not any(answer.json()["access_token"] in line for line in lines)


# -- errors (RFC 6749 §5.2) ----------------------------------------------------------------------


def test_errors_follow_rfc6749_section_5_2(server: TokenServer) -> None:
    shop = register(server)
    auth = (shop.client_id, shop.secret)
    cases = [
        ({}, auth, 400, "invalid_request"),
        ({"grant_type": "password"}, auth, 400, "unsupported_grant_type"),
        ({"grant_type": "client_credentials", "scope": "payments:refund"}, auth, 400, "invalid_scope"),
        ({"grant_type": "client_credentials", "audience": "other"}, auth, 400, "invalid_target"),
        ({"grant_type": "client_credentials"}, (shop.client_id, "wrong"), 401, "invalid_client"),
    ]
    for data, basic, status, error in cases:
        answer = post(server, "/oauth2/token", data, auth=basic)
        assert (answer.status_code, answer.json()["error"]) == (status, error), data
        assert set(answer.json()) == {"error", "error_description"}
        assert answer.headers["Cache-Control"] == "no-store"


def test_invalid_client_with_basic_challenges_and_without_does_not(server: TokenServer) -> None:
    shop = register(server)
    with_basic = post(
        server, "/oauth2/token", {"grant_type": "client_credentials"}, auth=(shop.client_id, "x")
    )
    assert with_basic.status_code == 401
    assert with_basic.headers["WWW-Authenticate"] == 'Basic realm="authsvc"'
    in_body = post(
        server,
        "/oauth2/token",
        {"grant_type": "client_credentials", "client_id": shop.client_id, "client_secret": "x"},
    )
    assert in_body.status_code == 401 and "WWW-Authenticate" not in in_body.headers


# -- keys and metadata ---------------------------------------------------------------------------


def test_jwks_is_cacheable_with_etag(server: TokenServer) -> None:
    url = base(server) + "/.well-known/jwks.json"
    first = requests.get(url, timeout=TIMEOUT, verify=ca())
    assert first.status_code == 200
    assert first.headers["Cache-Control"] == f"public, max-age={server.config.jwks_max_age}"
    assert json.loads(first.text) == json.loads(server.running.keyring.jwks)
    again = requests.get(url, headers={"If-None-Match": first.headers["ETag"]}, timeout=TIMEOUT, verify=ca())
    assert again.status_code == 304 and again.content == b""


def test_rfc8414_metadata_builds_urls_from_the_issuer(server: TokenServer) -> None:
    answer = requests.get(
        base(server) + "/.well-known/oauth-authorization-server", timeout=TIMEOUT, verify=ca()
    )
    document = answer.json()
    assert document["issuer"] == ISSUER
    assert document["token_endpoint"] == ISSUER + "/oauth2/token"
    assert document["jwks_uri"] == ISSUER + "/.well-known/jwks.json"
    assert document["introspection_endpoint"] == ISSUER + "/oauth2/introspect"
    assert document["revocation_endpoint"] == ISSUER + "/oauth2/revoke"
    assert document["grant_types_supported"] == ["client_credentials"]
    assert set(document["token_endpoint_auth_methods_supported"]) == {
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
    }
    assert document["token_endpoint_auth_signing_alg_values_supported"] == ["RS256", "PS256", "ES256"]


def test_an_issuer_with_a_path_serves_under_it(tmp_path: Path) -> None:
    config = serve_config(tmp_path / "data", http_listen="127.0.0.1:0", issuer="https://auth.test/tenant-a")
    thread: ServerThread[RunningServer] = ServerThread(
        lambda: start_server(config, authority=open_authority(config))
    )
    running = thread.start()
    try:
        base = f"http://127.0.0.1:{running.http_port}"
        for path in (
            "/.well-known/oauth-authorization-server/tenant-a",
            "/tenant-a/.well-known/oauth-authorization-server",
        ):
            document = requests.get(base + path, timeout=TIMEOUT).json()
            assert document["token_endpoint"] == "https://auth.test/tenant-a/oauth2/token"
        assert requests.get(base + "/tenant-a/.well-known/jwks.json", timeout=TIMEOUT).status_code == 200
    finally:
        thread.stop(grace=0)


# -- introspection (RFC 7662) and revocation (RFC 7009) ---------------------------------------


def _token(server: TokenServer, shop: RegisteredClient) -> str:
    answer = post(
        server, "/oauth2/token", {"grant_type": "client_credentials"}, auth=(shop.client_id, shop.secret)
    )
    token: str = answer.json()["access_token"]
    return token


def test_introspection_shows_own_tokens_and_hides_others(server: TokenServer) -> None:
    shop, other = register(server), register(server)
    mine = _token(server, shop)
    answer = post(server, "/oauth2/introspect", {"token": mine}, auth=(shop.client_id, shop.secret)).json()
    assert answer["active"] is True
    assert answer["client_id"] == shop.client_id and answer["aud"] == "payments"
    assert answer["iss"] == ISSUER and answer["token_type"] == "Bearer"
    assert post(
        server, "/oauth2/introspect", {"token": mine}, auth=(other.client_id, other.secret)
    ).json() == {"active": False}
    auditor = register(server, scopes=("authsvc:introspect",))
    seen = post(
        server, "/oauth2/introspect", {"token": mine}, auth=(auditor.client_id, auditor.secret)
    ).json()
    assert seen["active"] is True and seen["client_id"] == shop.client_id


@pytest.mark.parametrize(
    "token",
    ["garbage", "a.b.c", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."],
    ids=["garbage", "three-segments", "alg-none"],
)
def test_introspection_of_an_invalid_token_is_inactive(server: TokenServer, token: str) -> None:
    shop = register(server)
    answer = post(server, "/oauth2/introspect", {"token": token}, auth=(shop.client_id, shop.secret))
    assert answer.status_code == 200 and answer.json() == {"active": False}


def test_introspection_and_revocation_need_client_authentication(server: TokenServer) -> None:
    shop = register(server)
    token = _token(server, shop)
    for path in ("/oauth2/introspect", "/oauth2/revoke"):
        answer = post(server, path, {"token": token})
        assert (answer.status_code, answer.json()["error"]) == (401, "invalid_client")
        wrong = post(server, path, {"token": token}, auth=(shop.client_id, "wrong"))
        assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"].startswith("Basic")


def test_revocation_of_own_unknown_and_foreign_tokens(server: TokenServer) -> None:
    shop, other = register(server), register(server)
    token = _token(server, shop)
    assert (
        post(server, "/oauth2/revoke", {"token": token}, auth=(shop.client_id, shop.secret)).status_code
        == 200
    )
    assert (
        post(server, "/oauth2/revoke", {"token": "unknown"}, auth=(shop.client_id, shop.secret)).status_code
        == 200
    )
    foreign = post(server, "/oauth2/revoke", {"token": token}, auth=(other.client_id, other.secret))
    assert (foreign.status_code, foreign.json()["error"]) == (400, "unauthorized_client")


def test_basic_credentials_are_form_urlencoded_per_rfc6749_2_3_1(server: TokenServer) -> None:
    """§2.3.1: id and secret are form-urlencoded before Basic joins them, so ``%7E`` means ``~``."""
    shop = server.register("shop~eu.1", scopes=("payments:read",), audiences=("payments",))
    basic = base64.b64encode(f"shop%7Eeu.1:{shop.secret}".encode()).decode()
    answer = post(
        server,
        "/oauth2/token",
        {"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {basic}"},
    )
    assert answer.status_code == 200, answer.text
    assert (
        jwt.decode(answer.json()["access_token"], options={"verify_signature": False})["sub"] == "shop~eu.1"
    )
