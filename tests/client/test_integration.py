"""The SDK against real servers: one token for many calls, refreshes that fail no call, TLS."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from authsvc.client import (
    AioBearerInterceptor,
    AsyncClientCredentials,
    ClientCredentials,
    authorized_channel,
    insecure_loopback_channel,
    local_channel,
)
from payments_svc.app import PaymentsConfig, RunningPayments, start_server
from payments_svc.v1 import payments_pb2 as pb
from payments_svc.v1 import payments_pb2_grpc
from tests.conftest import ISSUER, TokenServer
from tests.helpers import ServerThread
from tests.server.test_serve import self_signed

SCOPES = ("payments:read", "payments:write")


def issued(caplog: pytest.LogCaptureFixture) -> int:
    return sum(
        1 for r in caplog.records if r.name == "authsvc.token" and r.getMessage().startswith("token issued")
    )


@pytest.fixture
def gateway(token_server: TokenServer, tmp_path: Path) -> Iterator[RunningPayments]:
    config = PaymentsConfig(
        data_dir=tmp_path / "pay", listen="127.0.0.1:0", token_service=token_server.target, issuer=ISSUER
    )
    thread: ServerThread[RunningPayments] = ServerThread(lambda: start_server(config))
    yield thread.start()
    thread.stop(0)


def test_a_thousand_calls_cost_one_token(
    token_server: TokenServer, gateway: RunningPayments, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="authsvc.token")
    client = token_server.register("sdk-shop", scopes=SCOPES)
    with grpc.insecure_channel(token_server.target) as auth_channel:
        creds = ClientCredentials.for_channel(
            auth_channel,
            client_id=client.client_id,
            client_secret=client.secret,
            scopes=SCOPES,
            audience=["payments"],
        )
        with insecure_loopback_channel(f"127.0.0.1:{gateway.port}", creds) as channel:
            stub = payments_pb2_grpc.PaymentServiceStub(channel)
            for _ in range(1000):
                stub.ListPayments(pb.ListPaymentsRequest(page_size=1), timeout=10)
    assert issued(caplog) == 1
    assert creds.fetches == 1


def test_local_channel_carries_call_credentials(token_server: TokenServer, gateway: RunningPayments) -> None:
    client = token_server.register("sdk-local", scopes=SCOPES)
    with grpc.insecure_channel(token_server.target) as auth_channel:
        creds = ClientCredentials.for_channel(
            auth_channel, client_id=client.client_id, client_secret=client.secret, scopes=SCOPES
        )
        with local_channel(f"127.0.0.1:{gateway.port}", creds) as channel:
            paid = payments_pb2_grpc.PaymentServiceStub(channel).CreatePayment(
                pb.CreatePaymentRequest(
                    amount="5.00", currency="EUR", payment_method="pm_x", idempotency_key="local-1"
                ),
                timeout=10,
            )
    assert paid.payment.client_id == "sdk-local"


def test_short_lived_tokens_refresh_without_a_failed_call(
    token_server: TokenServer, gateway: RunningPayments, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="authsvc.token")
    client = token_server.register("sdk-short", scopes=SCOPES, ttl=30)
    with grpc.insecure_channel(token_server.target) as auth_channel:
        # The SDK's clock runs 20 times faster than the wall: a 30 s token turns stale after
        # 0.75 s of the run, so 3 s cross several refreshes while the tokens stay valid for real.
        origin = time.monotonic()
        creds = ClientCredentials.for_channel(
            auth_channel,
            client_id=client.client_id,
            client_secret=client.secret,
            scopes=SCOPES,
            clock=lambda: origin + 20 * (time.monotonic() - origin),
        )
        with insecure_loopback_channel(f"127.0.0.1:{gateway.port}", creds) as channel:
            stub = payments_pb2_grpc.PaymentServiceStub(channel)
            calls, deadline = 0, time.monotonic() + 3.0
            while time.monotonic() < deadline:
                stub.ListPayments(pb.ListPaymentsRequest(page_size=1), timeout=10)  # raises on any failure
                calls += 1
    assert calls > 100
    assert issued(caplog) >= 3, "the token was never refreshed"
    assert issued(caplog) == creds.fetches


def test_authorized_channel_over_tls(token_server: TokenServer, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    config = PaymentsConfig(
        data_dir=tmp_path / "pay",
        listen="127.0.0.1:0",
        token_service=token_server.target,
        issuer=ISSUER,
        tls_cert=cert,
        tls_key=key,
    )
    thread: ServerThread[RunningPayments] = ServerThread(lambda: start_server(config))
    running = thread.start()
    try:
        client = token_server.register("sdk-tls", scopes=SCOPES)
        with grpc.insecure_channel(token_server.target) as auth_channel:
            creds = ClientCredentials.for_channel(
                auth_channel, client_id=client.client_id, client_secret=client.secret, scopes=SCOPES
            )
            with authorized_channel(
                f"localhost:{running.port}", creds, root_certificates=cert.read_bytes()
            ) as ch:
                paid = payments_pb2_grpc.PaymentServiceStub(ch).CreatePayment(
                    pb.CreatePaymentRequest(
                        amount="7.00", currency="USD", payment_method="pm_x", idempotency_key="tls-1"
                    ),
                    timeout=10,
                )
        assert paid.payment.client_id == "sdk-tls"
    finally:
        thread.stop(0)


def test_asyncio_sdk_one_token_for_many_calls(
    token_server: TokenServer, gateway: RunningPayments, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="authsvc.token")
    client = token_server.register("sdk-aio", scopes=SCOPES)

    async def run() -> int:
        async with grpc.aio.insecure_channel(token_server.target) as auth_channel:
            creds = AsyncClientCredentials.for_channel(
                auth_channel, client_id=client.client_id, client_secret=client.secret, scopes=SCOPES
            )
            async with grpc.aio.insecure_channel(
                f"127.0.0.1:{gateway.port}", interceptors=[AioBearerInterceptor(creds)]
            ) as channel:
                stub = payments_pb2_grpc.PaymentServiceStub(channel)
                await asyncio.gather(
                    *(stub.ListPayments(pb.ListPaymentsRequest(page_size=1), timeout=10) for _ in range(200))
                )
            return creds.fetches

    assert asyncio.run(run()) == 1
    assert issued(caplog) == 1


def test_wrong_secret_is_not_retried_and_not_cached(token_server: TokenServer) -> None:
    from authsvc.client import TokenFetchError

    client = token_server.register("sdk-wrong", scopes=SCOPES)
    with grpc.insecure_channel(token_server.target) as auth_channel:
        creds = ClientCredentials.for_channel(
            auth_channel, client_id=client.client_id, client_secret="authsvc_cs_wrong", scopes=SCOPES
        )
        for _ in range(2):
            with pytest.raises(TokenFetchError) as info:
                creds.token()
            assert (info.value.code, info.value.reason) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_CLIENT")
        assert creds.fetches == 2  # one attempt per call: no retry, no cached error
