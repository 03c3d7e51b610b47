"""Revocation end to end (issue 11): an operator's command or an RFC 7009 request at the
TokenService reaches a running PaymentService through WatchRevocations, within seconds, with no
restart; the verified-token cache is no way around it.

Both services run in this process on free ports over real channels; the operator's commands run
as ``authsvc`` subprocesses on the same data directory, as they would in production.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import jwt
import pytest
import requests

from authsvc.server.app import RunningServer, open_authority, start_server
from authsvc.v1 import token_pb2, token_pb2_grpc
from authsvc.verify import HttpRevocationSource
from payments_svc.app import PaymentsConfig, RunningPayments
from payments_svc.app import start_server as start_payments
from payments_svc.v1 import payments_pb2, payments_pb2_grpc
from tests.conftest import ISSUER, KEK, RegisteredClient, TokenServer, serve_config
from tests.helpers import ServerThread, authsvc_cli
from tests.security.test_token_verification_attacks import answer_of

TIMEOUT = 10
PUSH_DEADLINE = 5.0  # the issue's bound: a revocation reaches a running verifier within 5 s
REFUSED = (grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN")


@dataclass
class World:
    auth: TokenServer
    payments: RunningPayments
    env: dict[str, str]

    def token(self, client: RegisteredClient) -> str:
        with grpc.insecure_channel(self.auth.target) as ch:
            return str(
                token_pb2_grpc.TokenServiceStub(ch)
                .IssueToken(
                    token_pb2.IssueTokenRequest(
                        grant_type="client_credentials",
                        client_id=client.client_id,
                        client_secret=client.secret,
                    ),
                    timeout=TIMEOUT,
                )
                .access_token
            )

    def list_payments(self, token: str) -> tuple[grpc.StatusCode, str]:
        with grpc.insecure_channel(f"127.0.0.1:{self.payments.port}") as ch:
            try:
                payments_pb2_grpc.PaymentServiceStub(ch).ListPayments(
                    payments_pb2.ListPaymentsRequest(),
                    metadata=(("authorization", f"Bearer {token}"),),
                    timeout=TIMEOUT,
                )
            except grpc.RpcError as err:
                return answer_of(err)
        return grpc.StatusCode.OK, ""

    def refused_within(self, token: str, deadline: float = PUSH_DEADLINE) -> float:
        """Seconds until ``token`` is refused (polling every 50 ms); fails past ``deadline``."""
        started = time.monotonic()
        while self.list_payments(token) != REFUSED:
            elapsed = time.monotonic() - started
            assert elapsed < deadline, f"still accepted {elapsed:.1f} s after the revocation"
            time.sleep(0.05)
        return time.monotonic() - started


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    data = tmp_path / "auth"
    config = serve_config(data, http_listen="127.0.0.1:0")
    auth_thread: ServerThread[RunningServer] = ServerThread(
        lambda: start_server(config, authority=open_authority(config))
    )
    auth = TokenServer(auth_thread.start(), config, auth_thread)
    verifier_client = auth.register("payments-rs", scopes=("authsvc:revocations",), audiences=("authsvc",))
    pconfig = PaymentsConfig(
        data_dir=tmp_path / "pay",
        listen="127.0.0.1:0",
        token_service=auth.target,
        issuer=ISSUER,
        client_id=verifier_client.client_id,
        client_secret=verifier_client.secret,
    )
    pay_thread: ServerThread[RunningPayments] = ServerThread(lambda: start_payments(pconfig))
    payments = pay_thread.start()
    env = {**os.environ, "AUTHSVC_DATA_DIR": str(data), "AUTHSVC_KEK": KEK}
    try:
        yield World(auth, payments, env)
    finally:
        pay_thread.stop(grace=0)
        auth_thread.stop(grace=0)


def shop(world: World, name: str = "shop") -> RegisteredClient:
    return world.auth.register(name, scopes=("payments:read",))


def test_tokens_revoke_reaches_the_payment_service_within_seconds(world: World) -> None:
    client = shop(world)
    stolen, other = world.token(client), world.token(client)
    assert world.list_payments(stolen) == (grpc.StatusCode.OK, "")  # verified, and now cached
    jti = jwt.decode(stolen, options={"verify_signature": False})["jti"]
    authsvc_cli("tokens", "revoke", "--jti", jti, env=world.env)
    took = world.refused_within(stolen)
    assert world.list_payments(other) == (grpc.StatusCode.OK, ""), "another token of the client still pays"
    print(f"tokens revoke took {took:.2f} s to reach the PaymentService")


def test_clients_disable_refuses_earlier_tokens_and_enable_lets_new_ones_in(world: World) -> None:
    disabled, bystander = shop(world, "disabled-shop"), shop(world, "other-shop")
    old = world.token(disabled)
    assert world.list_payments(old) == (grpc.StatusCode.OK, "")
    authsvc_cli("clients", "disable", disabled.client_id, env=world.env)
    world.refused_within(old)
    assert world.list_payments(world.token(bystander)) == (grpc.StatusCode.OK, "")
    # iat has one-second resolution: tokens issued up to the second after the disable stay refused
    feed = world.auth.running.revocations
    assert feed is not None
    not_before, _ = feed.set.by_client[disabled.client_id]
    while time.time() < not_before:
        time.sleep(0.05)
    authsvc_cli("clients", "enable", disabled.client_id, env=world.env)
    # the server sees the enable within its client-cache lifetime
    deadline = time.monotonic() + 10
    while True:
        try:
            fresh = world.token(disabled)
            break
        except grpc.RpcError:
            assert time.monotonic() < deadline, "the re-enabled client never got a token"
            time.sleep(0.2)
    assert world.list_payments(fresh) == (grpc.StatusCode.OK, "")
    assert world.list_payments(old) == REFUSED, "enable lifts the entry only for tokens issued after"


def test_rfc7009_revoke_over_http_reaches_the_payment_service(world: World) -> None:
    client = shop(world)
    token = world.token(client)
    assert world.list_payments(token) == (grpc.StatusCode.OK, "")
    answer = requests.post(
        world.auth.http_url + "/oauth2/revoke",
        data={"token": token},
        auth=(client.client_id, client.secret),
        timeout=TIMEOUT,
    )
    assert answer.status_code == 200
    world.refused_within(token)
    introspected = requests.post(
        world.auth.http_url + "/oauth2/introspect",
        data={"token": token},
        auth=(client.client_id, client.secret),
        timeout=TIMEOUT,
    ).json()
    assert introspected == {"active": False}


def _watch(world: World, metadata: tuple[tuple[str, str], ...]) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(world.auth.target) as ch:
        stream = token_pb2_grpc.TokenServiceStub(ch).WatchRevocations(
            token_pb2.WatchRevocationsRequest(), metadata=metadata, timeout=TIMEOUT
        )
        try:
            next(iter(stream))
        except grpc.RpcError as err:
            return answer_of(err)
        stream.cancel()
    return grpc.StatusCode.OK, ""


def test_watch_revocations_needs_a_client_with_the_scope(world: World) -> None:
    import base64

    def basic(client_id: str, secret: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()),)

    assert _watch(world, ()) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")
    plain = shop(world, "nosy")
    assert _watch(world, basic(plain.client_id, "wrong")) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_CLIENT",
    )
    assert _watch(world, basic(plain.client_id, plain.secret)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "UNAUTHORIZED_CLIENT",
    )
    reader = world.auth.register("reader", scopes=("authsvc:revocations",), audiences=("authsvc",))
    assert _watch(world, basic(reader.client_id, reader.secret)) == (grpc.StatusCode.OK, "")


# -- the list polled over HTTP: keys from the jwks_uri, the list from /oauth2/revocations ------

HTTP_POLL = 0.2  # the PaymentService's poll interval here: a revocation lands within a few of them


@pytest.fixture
def http_world(tmp_path: Path) -> Iterator[World]:
    """A PaymentService that reaches the TokenService only over HTTP: ``jwks_url`` and its own
    client, so it polls the list at the jwks_uri's origin (no ``revocations_url`` given); its
    ``token_service`` points nowhere."""
    data = tmp_path / "auth"
    config = serve_config(data, http_listen="127.0.0.1:0")
    auth_thread: ServerThread[RunningServer] = ServerThread(
        lambda: start_server(config, authority=open_authority(config))
    )
    auth = TokenServer(auth_thread.start(), config, auth_thread)
    verifier_client = auth.register("payments-rs", scopes=("authsvc:revocations",), audiences=("authsvc",))
    pconfig = PaymentsConfig(
        data_dir=tmp_path / "pay",
        listen="127.0.0.1:0",
        token_service="127.0.0.1:9",  # nothing there: keys and list both come over HTTP
        jwks_url=auth.http_url + "/.well-known/jwks.json",
        issuer=ISSUER,
        client_id=verifier_client.client_id,
        client_secret=verifier_client.secret,
        revocations_poll_interval=HTTP_POLL,
    )
    pay_thread: ServerThread[RunningPayments] = ServerThread(lambda: start_payments(pconfig))
    payments = pay_thread.start()
    env = {**os.environ, "AUTHSVC_DATA_DIR": str(data), "AUTHSVC_KEK": KEK}
    try:
        yield World(auth, payments, env)
    finally:
        pay_thread.stop(grace=0)
        auth_thread.stop(grace=0)


def test_tokens_revoke_reaches_a_payment_service_polling_over_http(http_world: World) -> None:
    revocations = http_world.payments.verifier.revocations
    assert revocations is not None and revocations.has_list  # read before serving
    assert isinstance(revocations.source, HttpRevocationSource)
    client = shop(http_world)
    stolen, other = http_world.token(client), http_world.token(client)
    assert http_world.list_payments(stolen) == (grpc.StatusCode.OK, "")  # verified, and now cached
    jti = jwt.decode(stolen, options={"verify_signature": False})["jti"]
    authsvc_cli("tokens", "revoke", "--jti", jti, env=http_world.env)
    took = http_world.refused_within(stolen)
    assert http_world.list_payments(other) == (grpc.StatusCode.OK, ""), "another token still pays"
    assert revocations.source.last_error is None
    print(f"tokens revoke took {took:.2f} s to reach the PaymentService polling every {HTTP_POLL} s")


def test_rfc7009_revoke_reaches_a_payment_service_polling_over_http(http_world: World) -> None:
    client = shop(http_world)
    token, other = http_world.token(client), http_world.token(client)
    assert http_world.list_payments(token) == (grpc.StatusCode.OK, "")
    answer = requests.post(
        http_world.auth.http_url + "/oauth2/revoke",
        data={"token": token},
        auth=(client.client_id, client.secret),
        timeout=TIMEOUT,
    )
    assert answer.status_code == 200
    http_world.refused_within(token)
    assert http_world.list_payments(other) == (grpc.StatusCode.OK, "")
