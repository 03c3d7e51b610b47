"""IssueToken and GetJwks against a real server over real channels."""

from __future__ import annotations

import base64
import time

import grpc
import jwt
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from authsvc.v1 import token_pb2, token_pb2_grpc
from tests.conftest import ISSUER, RegisteredClient, TokenServer

REQUIRED_CLAIMS = ["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "client_id", "scope"]


def error_reason(err: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    status = rpc_status.from_call(err)
    assert status is not None, "no rich status on the error"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.domain == "authsvc"
    return err.code(), info.reason


def issue(
    stub: token_pb2_grpc.TokenServiceStub, metadata: tuple[tuple[str, str], ...] = (), **fields: object
) -> token_pb2.IssueTokenResponse:
    fields.setdefault("grant_type", "client_credentials")
    return stub.IssueToken(token_pb2.IssueTokenRequest(**fields), metadata=metadata, timeout=10)  # type: ignore[arg-type]


def refused(
    stub: token_pb2_grpc.TokenServiceStub, metadata: tuple[tuple[str, str], ...] = (), **fields: object
) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        issue(stub, metadata, **fields)
    return error_reason(info.value)


def verify(
    stub: token_pb2_grpc.TokenServiceStub, token: str, audience: str = "payments"
) -> dict[str, object]:
    jwks = jwt.PyJWKSet.from_json(stub.GetJwks(token_pb2.GetJwksRequest()).jwks_json)
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "RS256", "kid": header["kid"], "typ": "at+jwt"}
    key = next(k for k in jwks.keys if k.key_id == header["kid"])
    claims: dict[str, object] = jwt.decode(
        token,
        key.key,
        algorithms=["RS256"],
        audience=audience,
        issuer=ISSUER,
        options={"require": REQUIRED_CLAIMS},
    )
    return claims


def basic(client_id: str, secret: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()),)


def test_client_secret_post_token_verifies_against_jwks(
    stub: token_pb2_grpc.TokenServiceStub, client: RegisteredClient
) -> None:
    before = int(time.time())
    response = issue(stub, client_id=client.client_id, client_secret=client.secret)
    assert response.token_type == "Bearer"
    assert response.expires_in == 300
    assert response.scope == "payments:read payments:write"
    claims = verify(stub, response.access_token)
    assert claims["sub"] == claims["client_id"] == "shop"
    assert claims["aud"] == "payments"
    assert claims["scope"] == "payments:read payments:write"
    assert claims["nbf"] == claims["iat"]
    assert before <= claims["iat"] <= int(time.time())  # type: ignore[operator]
    assert claims["exp"] == claims["iat"] + 300  # type: ignore[operator]


def test_client_secret_basic(stub: token_pb2_grpc.TokenServiceStub, client: RegisteredClient) -> None:
    response = issue(stub, basic(client.client_id, client.secret), scope="payments:read")
    assert response.scope == "payments:read"
    assert verify(stub, response.access_token)["scope"] == "payments:read"


def test_basic_with_matching_client_id_in_body_is_accepted(
    stub: token_pb2_grpc.TokenServiceStub, client: RegisteredClient
) -> None:
    response = issue(stub, basic(client.client_id, client.secret), client_id=client.client_id)
    assert response.access_token


def test_jtis_are_unique(stub: token_pb2_grpc.TokenServiceStub, client: RegisteredClient) -> None:
    jtis = {
        verify(stub, issue(stub, client_id=client.client_id, client_secret=client.secret).access_token)["jti"]
        for _ in range(5)
    }
    assert len(jtis) == 5


def test_requested_audiences_are_checked(
    token_server: TokenServer, stub: token_pb2_grpc.TokenServiceStub
) -> None:
    c = token_server.register("multi", audiences=("payments", "ledger"))
    one = issue(stub, client_id=c.client_id, client_secret=c.secret, audience=["ledger"])
    assert verify(stub, one.access_token, audience="ledger")["aud"] == "ledger"
    both = issue(stub, client_id=c.client_id, client_secret=c.secret, audience=["payments", "ledger"])
    assert verify(stub, both.access_token)["aud"] == ["payments", "ledger"]
    assert refused(stub, client_id=c.client_id, client_secret=c.secret, audience=["refunds"]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_TARGET",
    )


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"grant_type": ""}, (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")),
        ({"grant_type": "password"}, (grpc.StatusCode.INVALID_ARGUMENT, "UNSUPPORTED_GRANT_TYPE")),
        ({"client_secret": "authsvc_cs_wrong"}, (grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")),
        ({"client_id": "nobody"}, (grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")),
        ({"client_secret": ""}, (grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")),
        ({"scope": "payments:refund"}, (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_SCOPE")),
        ({"scope": "payments:read  payments:write"}, (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_SCOPE")),
        ({"audience": ["ledger"]}, (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_TARGET")),
    ],
    ids=[
        "invalid_request",
        "unsupported_grant_type",
        "wrong_secret",
        "unknown_client",
        "no_secret",
        "invalid_scope",
        "malformed_scope",
        "invalid_target",
    ],
)
def test_rfc6749_errors(
    stub: token_pb2_grpc.TokenServiceStub,
    client: RegisteredClient,
    fields: dict[str, object],
    expected: tuple[grpc.StatusCode, str],
) -> None:
    request: dict[str, object] = {"client_id": client.client_id, "client_secret": client.secret}
    request.update(fields)
    assert refused(stub, (), **request) == expected


def test_unauthorized_client(token_server: TokenServer, stub: token_pb2_grpc.TokenServiceStub) -> None:
    store = token_server.authority.store
    c2 = token_server.register("no-grants")
    record2 = store.get_client(c2.client_id)
    assert record2 is not None
    store.update_client(record2.with_changes(grant_types=()))
    assert refused(stub, client_id=c2.client_id, client_secret=c2.secret) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "UNAUTHORIZED_CLIENT",
    )


POLL_REFUSED = 0.5
"""Polling while refused: each refusal counts against the failed-authentication throttle (10 at
once per client and address), so a poll of at most 2 s of client cache stays well below it."""


def wait_until_refused(stub: token_pb2_grpc.TokenServiceStub, client_id: str, secret: str) -> float:
    """Seconds until the server refuses the credentials; fails after 5 s (the promise)."""
    start = time.monotonic()
    while time.monotonic() - start < 5:
        try:
            issue(stub, client_id=client_id, client_secret=secret)
        except grpc.RpcError as err:
            assert error_reason(err) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")
            return time.monotonic() - start
        time.sleep(0.1)
    pytest.fail("the running server still accepts the credentials after 5 s")


def test_disabled_client_is_refused_within_5s_and_enabled_again(
    token_server: TokenServer, stub: token_pb2_grpc.TokenServiceStub, client: RegisteredClient
) -> None:
    issue(stub, client_id=client.client_id, client_secret=client.secret)  # warm the cache
    token_server.authority.clients.set_enabled(client.client_id, False)
    wait_until_refused(stub, client.client_id, client.secret)
    token_server.authority.clients.set_enabled(client.client_id, True)
    deadline = time.monotonic() + 5
    while True:
        try:
            issue(stub, client_id=client.client_id, client_secret=client.secret)
            break
        except grpc.RpcError:
            assert time.monotonic() < deadline, "re-enabled client still refused after 5 s"
            time.sleep(POLL_REFUSED)


def test_rotated_secret_replaces_the_old_one_within_5s(
    token_server: TokenServer, stub: token_pb2_grpc.TokenServiceStub, client: RegisteredClient
) -> None:
    issue(stub, client_id=client.client_id, client_secret=client.secret)
    _, new_secret = token_server.authority.clients.rotate_secret(client.client_id)
    wait_until_refused(stub, client.client_id, client.secret)
    assert issue(stub, client_id=client.client_id, client_secret=new_secret).access_token


def test_new_client_is_seen_within_5s(
    token_server: TokenServer, stub: token_pb2_grpc.TokenServiceStub
) -> None:
    with pytest.raises(grpc.RpcError):
        issue(stub, client_id="late", client_secret="authsvc_cs_x")  # caches "no such client"
    late = token_server.register("late")
    deadline = time.monotonic() + 5
    while True:
        try:
            issue(stub, client_id=late.client_id, client_secret=late.secret)
            break
        except grpc.RpcError:
            assert time.monotonic() < deadline, "new client still unknown after 5 s"
            time.sleep(POLL_REFUSED)


def test_jwks_is_an_rfc7517_set(stub: token_pb2_grpc.TokenServiceStub) -> None:
    jwks = jwt.PyJWKSet.from_json(stub.GetJwks(token_pb2.GetJwksRequest()).jwks_json)
    assert len(jwks.keys) == 1
    key = jwks.keys[0]
    assert key.key_type == "RSA"
    assert key.public_key_use == "sig"
    assert key.algorithm_name == "RS256"
    assert key.key.key_size >= 2048
    raw = stub.GetJwks(token_pb2.GetJwksRequest()).jwks_json
    assert '"d"' not in raw and '"p"' not in raw, "private members must never be published"


def test_health_reports_serving(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "authsvc.v1.TokenService"):
        response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_token_service(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"authsvc.v1.TokenService", "grpc.health.v1.Health"} <= names


def test_oversized_metadata_is_refused_and_server_keeps_serving(
    stub: token_pb2_grpc.TokenServiceStub, client: RegisteredClient
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        issue(stub, (("x-junk", "a" * 64 * 1024),), client_id=client.client_id, client_secret=client.secret)
    assert info.value.code() in (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
    )
    assert issue(stub, client_id=client.client_id, client_secret=client.secret).access_token
