"""``authsvc clients set-keys`` against a running ``authsvc serve``, as an operator runs both
(subprocesses, a real gRPC channel), on SQLite and on PostgreSQL: once the new keys are stored, the
server refuses assertions signed with the old ones within its client-cache lifetime and accepts
the new ones; the same when the client moves to a ``jwks_uri``."""

from __future__ import annotations

import json
import ssl
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import jwt
import pytest

from authsvc.v1 import token_pb2, token_pb2_grpc
from tests.assertions import ASSERTION_TYPE, ClientKeyPair, assertion, jwks_json, rsa_key
from tests.conftest import ISSUER, KEK
from tests.helpers import Command, authsvc_cli
from tests.server.test_serve import self_signed
from tests.server.test_token_service import error_reason
from tests.verify.http_servers import JwksServer, serving

OLD = rsa_key("rotate-old")
NEW = rsa_key("rotate-new")
TIMEOUT = 10
MAX_CLIENT_CACHE_TTL = 5  # serve --client-cache-ttl is at most 5 s
SETTLE = 10  # room for a loaded machine on top of it: a bound on the poll, not a measurement


@pytest.fixture(params=["sqlite", "postgres"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    env = {"AUTHSVC_KEK": KEK, "AUTHSVC_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"}
    if request.param == "postgres":
        env["AUTHSVC_DATABASE_URL"] = request.getfixturevalue("pg_url")
    return env


def _create(env: dict[str, str], jwks_file: Path) -> None:
    """``clients create`` of the private_key_jwt client ``shop`` with the keys of ``jwks_file``."""
    authsvc_cli(
        "clients", "create", "--client-id", "shop", "--scope", "payments:write", "--audience", "payments",
        "--auth-method", "private_key_jwt", "--jwks-file", str(jwks_file), env=env,
    )  # fmt: skip


def _serve(env: dict[str, str], *flags: str) -> Command:
    argv = [sys.executable, "-m", "authsvc.cli", "serve", "--listen", "127.0.0.1:0", "--issuer", ISSUER]
    return Command([*argv, *flags], env)


def _token(stub: token_pb2_grpc.TokenServiceStub, key: ClientKeyPair) -> token_pb2.IssueTokenResponse:
    return stub.IssueToken(
        token_pb2.IssueTokenRequest(
            grant_type="client_credentials",
            client_assertion_type=ASSERTION_TYPE,
            client_assertion=assertion(key, client_id="shop", audience=ISSUER),
        ),
        timeout=TIMEOUT,
    )


def _refused(stub: token_pb2_grpc.TokenServiceStub, key: ClientKeyPair) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        _token(stub, key)
    assert error_reason(refused.value) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")


def _until_refused(stub: token_pb2_grpc.TokenServiceStub, key: ClientKeyPair) -> float:
    """Ask with ``key`` until the server refuses it; the seconds that took (it accepts ``key``
    until then: a refusal for another cause fails the test)."""
    start = time.monotonic()
    while True:
        try:
            _token(stub, key)
        except grpc.RpcError as exc:
            assert error_reason(exc) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")
            return time.monotonic() - start
        assert time.monotonic() - start < MAX_CLIENT_CACHE_TTL + SETTLE, "the old key is still accepted"
        time.sleep(0.05)


def _subject(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["sub"])


def _audit_refusals(server: Command) -> list[str]:
    return [line for line in server.output().splitlines() if "token.refused" in line]


def test_set_keys_from_a_file_refuses_the_old_keys_in_a_running_server(
    tmp_path: Path, env: dict[str, str]
) -> None:
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(jwks_json(OLD))
    new.write_text(jwks_json(NEW))
    _create(env, old)
    server = _serve(env)
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = token_pb2_grpc.TokenServiceStub(channel)
            assert _subject(_token(stub, OLD).access_token) == "shop"
            _refused(stub, NEW)
            changed = authsvc_cli(
                "clients", "set-keys", "shop", "--jwks-file", str(new), "-o", "json", env=env
            )
            assert [k["kid"] for k in json.loads(changed.stdout)["jwks"]["keys"]] == [NEW.kid]
            waited = _until_refused(stub, OLD)
            assert _subject(_token(stub, NEW).access_token) == "shop"
            _refused(stub, OLD)  # and it stays refused
            print(f"\nthe old keys were refused {waited:.2f} s after set-keys returned")
    finally:
        assert server.terminate() == 0
    refusals = _audit_refusals(server)
    assert len(refusals) == 3  # NEW before, OLD after (twice)
    assert all("reason='unknown_kid'" in line for line in refusals), refusals
    shown = json.loads(authsvc_cli("clients", "show", "shop", "-o", "json", env=env).stdout)
    assert [k["kid"] for k in shown["jwks"]["keys"]] == [NEW.kid]


@pytest.fixture
def https_keys(tmp_path: Path) -> Iterator[tuple[JwksServer, Path]]:
    cert, key = self_signed(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    with JwksServer(serving(jwks_json(NEW)), tls=tls) as server:
        yield server, cert


def test_set_keys_to_a_jwks_uri_moves_a_running_server_to_the_published_keys(
    tmp_path: Path, env: dict[str, str], https_keys: tuple[JwksServer, Path]
) -> None:
    published, cert = https_keys
    old = tmp_path / "old.json"
    old.write_text(jwks_json(OLD))
    _create(env, old)
    # a short client cache: the file test above waits out the default one; this test waits twice
    server = _serve(
        env, "--client-jwks-allow-internal", "--client-jwks-ca-file", str(cert), "--client-cache-ttl", "0.2"
    )
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = token_pb2_grpc.TokenServiceStub(channel)
            assert _subject(_token(stub, OLD).access_token) == "shop"
            authsvc_cli("clients", "set-keys", "shop", "--jwks-uri", published.url(), env=env)
            _until_refused(stub, OLD)
            assert _subject(_token(stub, NEW).access_token) == "shop"
            assert published.requests, "the server never fetched the published keys"
            # and back to a file: the published keys stop working in turn
            authsvc_cli("clients", "set-keys", "shop", "--jwks-file", str(old), env=env)
            _until_refused(stub, NEW)
            assert _subject(_token(stub, OLD).access_token) == "shop"
    finally:
        assert server.terminate() == 0


@pytest.mark.parametrize(
    ("args", "code", "said"),
    [
        (
            ["secret-shop", "--jwks-file", "{new}"],
            1,
            "authenticates with client_secret_basic: only a private_key_jwt",
        ),
        (["shop"], 2, "one of the arguments --jwks-file --jwks-uri is required"),
        (["shop", "--jwks-file", "{new}", "--jwks-uri", "https://shop.example/k"], 2, "not allowed with"),
        (["shop", "--jwks-uri", "http://shop.example/k"], 1, "https:// URL"),
        (["nobody", "--jwks-file", "{new}"], 1, "no client 'nobody'"),
    ],
    ids=["secret-client", "no-keys", "two-sources", "plain-http", "unknown"],
)
def test_set_keys_refusals_are_one_line_and_change_nothing(
    tmp_path: Path, args: list[str], code: int, said: str
) -> None:
    env = {"AUTHSVC_KEK": KEK, "AUTHSVC_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"}
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(jwks_json(OLD))
    new.write_text(jwks_json(NEW))
    _create(env, old)
    authsvc_cli("clients", "create", "--client-id", "secret-shop", "--scope", "a", "--audience", "b", env=env)
    before = authsvc_cli("clients", "list", "-o", "json", env=env).stdout
    refused = authsvc_cli(
        "clients", "set-keys", *[a.replace("{new}", str(new)) for a in args], env=env, check=False
    )
    assert refused.returncode == code and said in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    assert authsvc_cli("clients", "list", "-o", "json", env=env).stdout == before
