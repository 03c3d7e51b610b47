"""A PaymentService tells the truth about readiness: ``/readyz`` and the gRPC health service say
NOT_SERVING while it holds no key set (its TokenService is not up yet) and SERVING within seconds
of the TokenService coming up; calls refused by authentication are counted with their code."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from authsvc.server.app import RunningServer, open_authority
from authsvc.server.app import start_server as start_token_service
from payments_svc.app import PAYMENT_SERVICE, PaymentsConfig, RunningPayments, start_server
from payments_svc.v1 import payments_pb2 as pb
from payments_svc.v1 import payments_pb2_grpc
from tests.conftest import ISSUER, serve_config
from tests.helpers import ServerThread
from tests.test_metrics import get, scrape, value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
        after = scrape(base)
        assert (
            value(after, "grpc_server_handled_total", **labels, grpc_code="Unauthenticated")
            - value(before, "grpc_server_handled_total", **labels, grpc_code="Unauthenticated")
            == 1
        )

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
