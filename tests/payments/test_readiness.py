"""A PaymentService tells the truth about readiness: ``/readyz`` and the gRPC health service say
NOT_SERVING while it holds no key set (its TokenService is not up yet) and SERVING within seconds
of the TokenService coming up; NOT_SERVING again once its keys are older than the staleness bound
(the TokenService went away), still verifying with them, and SERVING again when it is back;
calls refused by authentication are counted with their code."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authsvc.core.errors import ConfigurationError
from authsvc.server.app import RunningServer, open_authority
from authsvc.server.app import start_server as start_token_service
from authsvc.v1 import token_pb2, token_pb2_grpc
from payments_svc.app import PAYMENT_SERVICE, PaymentsConfig, RunningPayments, start_server
from payments_svc.v1 import payments_pb2 as pb
from payments_svc.v1 import payments_pb2_grpc
from tests.conftest import ISSUER, serve_config
from tests.helpers import ServerThread, free_port
from tests.test_metrics import get, scrape, value


def health_status(target: str, service: str) -> int:
    with grpc.insecure_channel(target) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
        return int(answer.status)


def wait_until(condition: object, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.2)
    return False


def test_not_ready_until_the_token_service_comes_up(tmp_path: Path) -> None:
    port = free_port()
    config = PaymentsConfig(
        data_dir=tmp_path / "pay",
        listen="127.0.0.1:0",
        metrics_listen="127.0.0.1:0",
        token_service=f"127.0.0.1:{port}",
        issuer=ISSUER,
        jwks_cooldown=0.5,
    )
    payments: ServerThread[RunningPayments] = ServerThread(lambda: start_server(config))
    running = payments.start()
    auth: ServerThread[RunningServer] | None = None
    try:
        base = f"http://127.0.0.1:{running.metrics_port}"
        target = f"127.0.0.1:{running.port}"
        assert get(f"{base}/livez")[0] == 200
        status, _, body = get(f"{base}/readyz")
        assert status == 503
        assert json.loads(body)["status"] == "not ready"
        for service in ("", PAYMENT_SERVICE):
            assert health_status(target, service) == health_pb2.HealthCheckResponse.NOT_SERVING

        # a call refused by authentication is counted with its code (the metrics come first)
        before = scrape(base)
        with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as refused:
            payments_pb2_grpc.PaymentServiceStub(channel).GetPayment(
                pb.GetPaymentRequest(transaction_id="x"), timeout=10
            )
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        labels = {"grpc_type": "unary", "grpc_service": PAYMENT_SERVICE, "grpc_method": "GetPayment"}

        def counted() -> float:
            return value(
                scrape(base), "grpc_server_handled_total", **labels, grpc_code="Unauthenticated"
            ) - value(before, "grpc_server_handled_total", **labels, grpc_code="Unauthenticated")

        # the server counts the call as its handler ends, which may be just after the caller has
        # the status: wait for the count, then require exactly one
        wait_until(lambda: counted() >= 1, seconds=5)
        assert counted() == 1

        auth_config = serve_config(tmp_path / "auth", listen=f"127.0.0.1:{port}")
        auth = ServerThread(lambda: start_token_service(auth_config, authority=open_authority(auth_config)))
        auth.start()
        assert wait_until(lambda: get(f"{base}/readyz")[0] == 200)
        assert wait_until(
            lambda: all(
                health_status(target, s) == health_pb2.HealthCheckResponse.SERVING
                for s in ("", PAYMENT_SERVICE)
            )
        )
    finally:
        payments.stop(grace=0)
        if auth is not None:
            auth.stop(grace=0)


def all_health(target: str, expected: int) -> bool:
    try:
        return all(health_status(target, s) == expected for s in ("", PAYMENT_SERVICE))
    except grpc.RpcError:
        return False


@pytest.mark.parametrize("keys_from", ["WatchJwks", "jwks_url"])
def test_not_ready_while_keys_are_stale_and_ready_again_when_the_issuer_is_back(
    tmp_path: Path, keys_from: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The TokenService goes away: once the keys are older than the bound (2 s here) the
    service is NOT_SERVING on /readyz and gRPC health, but still verifies with its cached keys;
    the TokenService comes back on the same address: SERVING again within seconds. Over a
    WatchJwks stream (an open stream counts as current) and over a polled jwks_uri."""
    caplog.set_level(logging.INFO, logger="payments_svc.server")
    grpc_port, http_port = free_port(), free_port()
    auth_config = serve_config(
        tmp_path / "auth", listen=f"127.0.0.1:{grpc_port}", http_listen=f"127.0.0.1:{http_port}"
    )

    def token_service() -> ServerThread[RunningServer]:
        thread: ServerThread[RunningServer] = ServerThread(
            lambda: start_token_service(auth_config, authority=open_authority(auth_config))
        )
        thread.start()
        return thread

    auth: ServerThread[RunningServer] | None = token_service()
    assert auth is not None
    _, secret = auth.running.authority.clients.create_client(
        client_id="shop", scopes=["payments:read"], audiences=["payments"]
    )
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        token = (
            token_pb2_grpc.TokenServiceStub(channel)
            .IssueToken(
                token_pb2.IssueTokenRequest(
                    grant_type="client_credentials", client_id="shop", client_secret=secret
                ),
                timeout=10,
            )
            .access_token
        )
    config = PaymentsConfig(
        data_dir=tmp_path / "pay",
        listen="127.0.0.1:0",
        metrics_listen="127.0.0.1:0",
        token_service=f"127.0.0.1:{grpc_port}",
        jwks_url=f"http://127.0.0.1:{http_port}/.well-known/jwks.json" if keys_from == "jwks_url" else None,
        issuer=ISSUER,
        jwks_max_age=0.5,
        jwks_max_staleness=2.0,
        jwks_cooldown=0.25,
    )
    payments: ServerThread[RunningPayments] = ServerThread(lambda: start_server(config))
    running = payments.start()
    try:
        base = f"http://127.0.0.1:{running.metrics_port}"
        target = f"127.0.0.1:{running.port}"
        assert get(f"{base}/readyz")[0] == 200
        assert all_health(target, health_pb2.HealthCheckResponse.SERVING)
        # ready for longer than the bound while the issuer is up: an open stream, or polls
        # made without any request coming, keep the keys current. The health task checks
        # twice a second and logs every change, so a moment of staleness would be in the log.
        until = time.monotonic() + 4.0  # twice the bound
        while time.monotonic() < until:
            status, _, body = get(f"{base}/readyz")
            assert status == 200, body
            time.sleep(0.2)
        assert not [r for r in caplog.records if "not refreshed" in r.getMessage()]

        auth.stop(grace=0)
        auth = None
        assert wait_until(lambda: get(f"{base}/readyz")[0] == 503)
        status, _, body = get(f"{base}/readyz")
        assert status == 503
        assert "not refreshed" in json.loads(body)["reason"]
        assert wait_until(lambda: all_health(target, health_pb2.HealthCheckResponse.NOT_SERVING))
        # stale keys still verify: the caller is authenticated, its payment just does not exist
        with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as answer:
            payments_pb2_grpc.PaymentServiceStub(channel).GetPayment(
                pb.GetPaymentRequest(transaction_id="txn_missing"),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=10,
            )
        assert answer.value.code() == grpc.StatusCode.NOT_FOUND

        auth = token_service()
        assert wait_until(lambda: get(f"{base}/readyz")[0] == 200)
        assert wait_until(lambda: all_health(target, health_pb2.HealthCheckResponse.SERVING))
        messages = [r.getMessage() for r in caplog.records if r.name == "payments_svc.server"]
        assert any("not refreshed for over 2s" in m for m in messages)
        assert any("ready again" in m for m in messages)
    finally:
        payments.stop(grace=0)
        if auth is not None:
            auth.stop(grace=0)


@pytest.mark.parametrize(
    ("max_age", "max_staleness", "bound"),
    [(60.0, None, 120.0), (300.0, None, 600.0), (60.0, 0.0, None), (60.0, 61.0, 61.0)],
    ids=["default", "twice-max-age", "off", "given"],
)
def test_the_staleness_bound(
    tmp_path: Path, max_age: float, max_staleness: float | None, bound: float | None
) -> None:
    config = PaymentsConfig(data_dir=tmp_path, jwks_max_age=max_age, jwks_max_staleness=max_staleness)
    assert config.jwks_staleness_bound == bound


@pytest.mark.parametrize("max_staleness", [60.0, 30.0, -1.0, float("nan"), float("inf")])
def test_a_staleness_bound_within_the_refresh_interval_is_refused(
    tmp_path: Path, max_staleness: float
) -> None:
    """A bound at or below --jwks-max-age would take the service out between two good polls."""
    with pytest.raises(ConfigurationError, match="--jwks-max-staleness"):
        PaymentsConfig(data_dir=tmp_path, jwks_max_age=60.0, jwks_max_staleness=max_staleness)
