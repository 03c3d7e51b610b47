"""private_key_jwt against real servers with clients that are not authsvc's: Authlib's
``PrivateKeyJWT`` over HTTP, assertions made by Authlib's signer and by PyJWT over gRPC, a client
that publishes its keys at a jwks_uri over HTTPS, and ``authsvc serve``'s flags as an operator
sets them."""

from __future__ import annotations

import json
import logging
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT, private_key_jwt_sign
from joserfc.jwk import ECKey, RSAKey

from authsvc.core.clients import AuthRegistration, ClientAuthMethod
from authsvc.server.app import RunningServer, open_authority, start_server
from authsvc.v1 import token_pb2, token_pb2_grpc
from tests.assertions import ASSERTION_TYPE, ClientKeyPair, assertion, ec_key, jwks_json, rsa_key
from tests.conftest import ISSUER, KEK, TokenServer, serve_config
from tests.helpers import Command, ServerThread, authsvc_cli
from tests.server.test_serve import self_signed
from tests.verify.http_servers import JwksServer, serving

TIMEOUT = 10
TOKEN_ENDPOINT = ISSUER + "/oauth2/token"
RSA = rsa_key("authlib-rsa")
EC = ec_key("authlib-ec")
PK = ClientAuthMethod.PRIVATE_KEY_JWT


@pytest.fixture
def started(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[TokenServer]:
    overrides = getattr(request, "param", {})
    config = serve_config(tmp_path / "data", http_listen="127.0.0.1:0", **overrides)
    thread: ServerThread[RunningServer] = ServerThread(
        lambda: start_server(config, authority=open_authority(config))
    )
    running = thread.start()
    try:
        yield TokenServer(running, config, thread)
    finally:
        thread.stop(grace=0)


def register(
    server: TokenServer, client_id: str, *keys: ClientKeyPair, algs: tuple[str, ...] = ("RS256",)
) -> None:
    server.authority.clients.register(
        client_id=client_id,
        scopes=["payments:read", "payments:write"],
        audiences=["payments"],
        auth=AuthRegistration(method=PK, jwks=jwks_json(*keys), signing_algs=algs),
    )


def verified_claims(server: TokenServer, token: str) -> dict[str, object]:
    keys = jwt.PyJWKSet.from_json(server.running.keyring.jwks)
    key = keys[jwt.get_unverified_header(token)["kid"]]
    return dict(jwt.decode(token, key.key, algorithms=["RS256"], audience="payments", issuer=ISSUER))


def grpc_token(server: TokenServer, client_assertion: str, **fields: Any) -> token_pb2.IssueTokenResponse:
    with grpc.insecure_channel(server.target) as channel:
        return token_pb2_grpc.TokenServiceStub(channel).IssueToken(
            token_pb2.IssueTokenRequest(
                grant_type="client_credentials",
                client_assertion_type=ASSERTION_TYPE,
                client_assertion=client_assertion,
                **fields,
            ),
            timeout=TIMEOUT,
        )


# -- Authlib over HTTP --------------------------------------------------------------------------------


def test_authlib_private_key_jwt_with_the_issuer_as_audience_gets_a_token_over_http(
    started: TokenServer,
) -> None:
    register(started, "authlib-shop", RSA)
    # Authlib puts its token_endpoint argument in aud: the issuer, as rfc7523bis wants; and signs for
    # an hour unless told: exp given, within the server's default 300 s
    auth = PrivateKeyJWT(
        token_endpoint=ISSUER, claims={"exp": int(time.time()) + 120}, headers={"kid": RSA.kid}
    )
    with OAuth2Session(
        "authlib-shop", RSA.pem().decode(), token_endpoint_auth_method=auth, scope="payments:write"
    ) as session:
        token = session.fetch_token(started.http_url + "/oauth2/token", grant_type="client_credentials")
    assert token["token_type"] == "Bearer" and token["scope"] == "payments:write"
    assert verified_claims(started, token["access_token"])["sub"] == "authlib-shop"


@pytest.mark.parametrize(
    "started",
    [{"accept_token_endpoint_audience": True, "client_assertion_max_lifetime": 3600}],
    indirect=True,
    ids=["compatibility-flags"],
)
def test_authlib_defaults_need_the_compatibility_flags(started: TokenServer) -> None:
    # Authlib's defaults: aud = the token endpoint URL, exp an hour ahead; an EC key, ES256
    register(started, "authlib-ec", EC, algs=("ES256",))
    auth = PrivateKeyJWT(token_endpoint=TOKEN_ENDPOINT, alg="ES256", headers={"kid": EC.kid})
    with OAuth2Session(
        "authlib-ec", ECKey.import_key(EC.private_jwk), token_endpoint_auth_method=auth
    ) as session:
        token = session.fetch_token(started.http_url + "/oauth2/token", grant_type="client_credentials")
    assert verified_claims(started, token["access_token"])["client_id"] == "authlib-ec"


def test_authlib_defaults_are_refused_without_the_compatibility_flags(started: TokenServer) -> None:
    register(started, "authlib-shop", RSA)
    auth = PrivateKeyJWT(token_endpoint=TOKEN_ENDPOINT, headers={"kid": RSA.kid})
    with OAuth2Session("authlib-shop", RSA.pem().decode(), token_endpoint_auth_method=auth) as session:
        answer = session.post(
            started.http_url + "/oauth2/token",
            data={"grant_type": "client_credentials"},
            auth=session.client_auth,
        )
    assert (answer.status_code, answer.json()["error"]) == (401, "invalid_client")


# -- assertions made by Authlib and PyJWT, over gRPC ---------------------------------------------------------


def test_an_authlib_assertion_gets_a_token_over_grpc(started: TokenServer) -> None:
    register(started, "ps-shop", RSA, algs=("PS256",))
    signed = private_key_jwt_sign(
        RSAKey.import_key(RSA.private_jwk),
        client_id="ps-shop",
        token_endpoint=ISSUER,
        alg="PS256",
        claims={"exp": int(time.time()) + 60},
        header={"kid": RSA.kid},
    )
    response = grpc_token(started, signed if isinstance(signed, str) else signed.decode())
    assert verified_claims(started, response.access_token)["sub"] == "ps-shop"


def test_a_pyjwt_assertion_gets_a_token_over_grpc_with_scope_and_audience(started: TokenServer) -> None:
    register(started, "pyjwt-shop", RSA)
    response = grpc_token(
        started,
        assertion(RSA, client_id="pyjwt-shop", audience=ISSUER),
        scope="payments:read",
        audience=["payments"],
    )
    assert response.scope == "payments:read" and response.token_type == "Bearer"
    assert verified_claims(started, response.access_token)["client_id"] == "pyjwt-shop"


# -- a client that publishes its keys at a jwks_uri -----------------------------------------------------


@pytest.fixture
def https_keys(tmp_path: Path) -> Iterator[tuple[JwksServer, Path]]:
    cert, key = self_signed(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    with JwksServer(serving(jwks_json(RSA)), tls=tls) as server:
        yield server, cert


def _jwks_uri_server(
    tmp_path: Path, cert: Path, **overrides: object
) -> tuple[ServerThread[RunningServer], TokenServer]:
    config = serve_config(tmp_path / "data", client_jwks_ca_file=cert, **overrides)
    thread: ServerThread[RunningServer] = ServerThread(
        lambda: start_server(config, authority=open_authority(config))
    )
    return thread, TokenServer(thread.start(), config, thread)


def test_a_jwks_uri_client_gets_a_token(tmp_path: Path, https_keys: tuple[JwksServer, Path]) -> None:
    keys, cert = https_keys
    thread, server = _jwks_uri_server(tmp_path, cert, client_jwks_allow_internal=True)
    try:
        server.authority.clients.register(
            client_id="published", scopes=["payments:read"], audiences=["payments"],
            auth=AuthRegistration(method=PK, jwks_uri=keys.url()),
        )  # fmt: skip
        response = grpc_token(server, assertion(RSA, client_id="published", audience=ISSUER))
        assert verified_claims(server, response.access_token)["sub"] == "published"
        grpc_token(server, assertion(RSA, client_id="published", audience=ISSUER))
        assert len(keys.requests) == 1  # cached: one fetch for both
    finally:
        thread.stop(grace=0)


def test_a_jwks_uri_on_an_internal_address_is_not_fetched_without_the_allow_flag(
    tmp_path: Path, https_keys: tuple[JwksServer, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    keys, cert = https_keys
    thread, server = _jwks_uri_server(tmp_path, cert)
    try:
        server.authority.clients.register(
            client_id="published", scopes=["payments:read"], audiences=["payments"],
            auth=AuthRegistration(method=PK, jwks_uri=keys.url()),
        )  # fmt: skip
        with pytest.raises(grpc.RpcError) as refused:
            grpc_token(server, assertion(RSA, client_id="published", audience=ISSUER))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert keys.requests == []
        reasons = [
            getattr(r, "reason", None) for r in caplog.records if getattr(r, "event", None) == "token.refused"
        ]
        assert reasons == ["client_keys_unavailable"]
        assert "internal address 127.0.0.1" in caplog.text
    finally:
        thread.stop(grace=0)


# -- authsvc serve and clients create, as an operator runs them ----------------------------------------------


def test_serve_flags_for_client_assertions(tmp_path: Path) -> None:
    env = {"AUTHSVC_KEK": KEK, "AUTHSVC_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"}
    jwks = tmp_path / "shop-jwks.json"
    jwks.write_text(jwks_json(RSA))
    authsvc_cli(
        "clients", "create", "--client-id", "shop", "--scope", "payments:read", "--audience", "payments",
        "--auth-method", "private_key_jwt", "--jwks-file", str(jwks), env=env,
    )  # fmt: skip
    serve = [
        sys.executable,
        "-m",
        "authsvc.cli",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    ]
    flags = ["--issuer", ISSUER, "--accept-token-endpoint-audience", "--client-assertion-max-lifetime", "600"]
    server = Command([*serve, *flags], env)
    try:
        url = server.http_url + "/oauth2/token"
        form = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE}
        # aud = the token endpoint and exp 500 s ahead: both allowed by the flags
        signed = assertion(RSA, client_id="shop", audience=TOKEN_ENDPOINT, lifetime=500)
        answer = requests.post(url, data={**form, "client_assertion": signed}, timeout=TIMEOUT)
        assert answer.status_code == 200, answer.text
        longer = assertion(RSA, client_id="shop", audience=TOKEN_ENDPOINT, lifetime=700)
        refused = requests.post(url, data={**form, "client_assertion": longer}, timeout=TIMEOUT)
        assert (refused.status_code, refused.json()["error"]) == (401, "invalid_client")
        metadata = requests.get(
            server.http_url + "/.well-known/oauth-authorization-server", timeout=TIMEOUT
        ).json()
        assert "private_key_jwt" in metadata["token_endpoint_auth_methods_supported"]
    finally:
        assert server.terminate() == 0
    assert signed not in server.output() and longer not in server.output()
    assert json.loads(authsvc_cli("clients", "show", "shop", "--output", "json", env=env).stdout)[
        "auth_method"
    ] == ("private_key_jwt")


def test_serve_refuses_an_out_of_range_assertion_lifetime(tmp_path: Path) -> None:
    env = {"AUTHSVC_KEK": KEK, "AUTHSVC_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"}
    result = authsvc_cli(
        "serve", "--listen", "127.0.0.1:0", "--client-assertion-max-lifetime", "7200", env=env, check=False
    )
    assert result.returncode != 0 and "--client-assertion-max-lifetime" in result.stderr


def test_the_readme_private_key_jwt_commands_get_a_token(tmp_path: Path) -> None:
    # the copy-paste block of the README, run as written (paths and the port put in)
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("**private_key_jwt**, copy-paste", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    venv_bin = Path(sys.executable).parent
    env = {
        "AUTHSVC_KEK": KEK,
        "AUTHSVC_DATA_DIR": str(tmp_path / "data"),
        "PATH": f"{venv_bin}:/usr/bin:/bin",
    }
    serve = [
        sys.executable,
        "-m",
        "authsvc.cli",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    ]
    server = Command(serve, env)
    try:
        script = block.replace(".venv/bin/", f"{venv_bin}/").replace("http://127.0.0.1:8080", server.http_url)
        ran = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            check=False,
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ran.returncode == 0, ran.stderr
        answer = json.loads(ran.stdout.strip().splitlines()[-1])
        assert answer["token_type"] == "Bearer" and answer["scope"] == "payments:write"
    finally:
        assert server.terminate() == 0
    assert not (tmp_path / "shop-jwks.json").read_text().count('"d"')  # the public half only
