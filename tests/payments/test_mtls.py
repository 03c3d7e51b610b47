"""``payments-svc serve --client-ca`` with certificate-bound tokens (RFC 8705), end to end: a real
TokenService with a mutual-TLS port, a real PaymentService asking its callers for certificates,
and the SDK presenting the same client certificate to both."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from authsvc.client import ClientCredentials, authorized_channel
from authsvc.core.errors import ConfigurationError
from payments_svc.app import PaymentsConfig, RunningPayments, start_server
from payments_svc.v1 import payments_pb2 as pb
from payments_svc.v1 import payments_pb2_grpc
from tests.conftest import ISSUER, RegisteredClient, TokenServer
from tests.helpers import ServerThread
from tests.mtls import claims, issue
from tests.pki import Issued, Pki
from tests.verify.test_interceptor import reason

REFUSED = (grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN")
SCOPES = ("payments:read", "payments:write")
TIMEOUT = 10.0


@dataclass
class Gateway:
    running: RunningPayments
    pki: Pki
    token_server: TokenServer
    shop: RegisteredClient

    def bound(self, cert: Issued) -> str:
        return issue(self.token_server.running.mtls_port or 0, self.pki, self.shop, cert)

    def unbound(self) -> str:
        return issue(self.token_server.running.port, self.pki, self.shop)

    def stub(self, cert: Issued | None) -> tuple[payments_pb2_grpc.PaymentServiceStub, grpc.Channel]:
        creds = (
            grpc.ssl_channel_credentials(self.pki.ca.cert_pem)
            if cert is None
            else grpc.ssl_channel_credentials(self.pki.ca.cert_pem, cert.key_pem, cert.cert_pem)
        )
        channel = grpc.secure_channel(f"localhost:{self.running.port}", creds)
        return payments_pb2_grpc.PaymentServiceStub(channel), channel

    def list_payments(self, token: str, cert: Issued | None) -> pb.ListPaymentsResponse:
        stub, channel = self.stub(cert)
        with channel:
            return stub.ListPayments(
                pb.ListPaymentsRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=TIMEOUT
            )

    def http_get(self, token: str, cert: Issued | None) -> tuple[int, dict[str, object]]:
        context = ssl.create_default_context(cafile=str(self.pki.ca.cert_path))
        if cert is not None:
            context.load_cert_chain(cert.cert_path, cert.key_path)
        conn = http.client.HTTPSConnection(
            "localhost", self.running.http_port, context=context, timeout=TIMEOUT
        )
        try:
            conn.request("GET", "/api/v1/payments", headers={"Authorization": f"Bearer {token}"})
            answer = conn.getresponse()
            return answer.status, json.loads(answer.read())
        finally:
            conn.close()


def payments_config(
    tmp_path: Path, pki: Pki, token_server: TokenServer, **overrides: object
) -> PaymentsConfig:
    settings: dict[str, object] = {
        "data_dir": tmp_path / "payments",
        "listen": "127.0.0.1:0",
        "http_listen": "127.0.0.1:0",
        "token_service": f"localhost:{token_server.running.port}",
        "token_service_ca": pki.ca.cert_path,
        "issuer": ISSUER,
        "tls_cert": pki.server.cert_path,
        "tls_key": pki.server.key_path,
        "client_ca": pki.ca.cert_path,
        **overrides,
    }
    return PaymentsConfig(**settings)  # type: ignore[arg-type]


@pytest.fixture
def gateway(tmp_path: Path, pki: Pki, mtls_token_server: TokenServer) -> Iterator[Gateway]:
    config = payments_config(tmp_path, pki, mtls_token_server)
    thread: ServerThread[RunningPayments] = ServerThread(lambda: start_server(config))
    running = thread.start()
    shop = mtls_token_server.register("shop", scopes=SCOPES)
    try:
        yield Gateway(running, pki, mtls_token_server, shop)
    finally:
        thread.stop(0)


def test_sdk_pays_with_a_bound_token_over_mutual_tls(gateway: Gateway, pki: Pki) -> None:
    """The happy path: the SDK gets a token on the TokenService's mutual-TLS port (certificate and
    key given as files) and pays through a PaymentService with --client-ca, presenting the same
    certificate (given as bytes)."""
    creds = ClientCredentials.for_target(
        f"localhost:{gateway.token_server.running.mtls_port}",
        client_id=gateway.shop.client_id,
        client_secret=gateway.shop.secret,
        scopes=SCOPES,
        audience=["payments"],
        root_certificates=pki.ca.cert_path,
        certificate_chain=pki.client.cert_path,
        private_key=str(pki.client.key_path),
    )
    channel = authorized_channel(
        f"localhost:{gateway.running.port}",
        creds,
        root_certificates=pki.ca.cert_pem,
        certificate_chain=pki.client.cert_pem,
        private_key=pki.client.key_pem,
    )
    try:
        payments = payments_pb2_grpc.PaymentServiceStub(channel)
        paid = payments.CreatePayment(
            pb.CreatePaymentRequest(
                amount="12.50",
                currency="EUR",
                payment_method="pm_card",
                description="mtls",
                idempotency_key="k1",
            ),
            timeout=TIMEOUT,
        ).payment
        assert paid.client_id == "shop" and paid.amount == "12.50"
        assert claims(creds.token())["cnf"] == {"x5t#S256": pki.client.thumbprint}
        got = payments.GetPayment(pb.GetPaymentRequest(transaction_id=paid.transaction_id), timeout=TIMEOUT)
        assert got.payment.transaction_id == paid.transaction_id
    finally:
        channel.close()
        creds.close()


def test_grpc_listener_requires_a_certificate(gateway: Gateway) -> None:
    # grpcio asks for a client certificate only when it requires one: without one, no handshake
    with pytest.raises(grpc.RpcError) as info:
        gateway.list_payments(gateway.unbound(), None)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_grpc_bound_token_with_another_valid_certificate_is_refused(gateway: Gateway, pki: Pki) -> None:
    token = gateway.bound(pki.client)
    with pytest.raises(grpc.RpcError) as info:
        gateway.list_payments(token, pki.other_client)
    assert reason(info.value) == REFUSED


def test_grpc_unbound_token_works_over_mutual_tls(gateway: Gateway, pki: Pki) -> None:
    assert gateway.list_payments(gateway.unbound(), pki.other_client).payments == []


def test_http_asks_for_a_certificate_without_requiring_one(gateway: Gateway, pki: Pki) -> None:
    bound = gateway.bound(pki.client)
    status, _ = gateway.http_get(bound, pki.client)
    assert status == 200
    status, body = gateway.http_get(bound, None)  # no certificate: the handshake still succeeds
    assert (status, body["error"]) == (401, "invalid_token")
    status, body = gateway.http_get(bound, pki.other_client)
    assert (status, body["error"]) == (401, "invalid_token")
    status, _ = gateway.http_get(gateway.unbound(), None)  # unbound tokens need no certificate
    assert status == 200


def test_http_refuses_a_certificate_from_another_ca(gateway: Gateway, pki: Pki) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        gateway.http_get(gateway.unbound(), pki.foreign_client)


def test_without_client_ca_bound_tokens_are_refused(
    tmp_path: Path, pki: Pki, mtls_token_server: TokenServer
) -> None:
    """A PaymentService over plain TLS never sees a certificate: every bound token is refused
    (deny by default), unbound ones work."""
    config = payments_config(tmp_path, pki, mtls_token_server, client_ca=None)
    thread: ServerThread[RunningPayments] = ServerThread(lambda: start_server(config))
    running = thread.start()
    try:
        made = Gateway(running, pki, mtls_token_server, mtls_token_server.register("shop", scopes=SCOPES))
        with pytest.raises(grpc.RpcError) as info:
            made.list_payments(made.bound(pki.client), pki.client)
        assert reason(info.value) == REFUSED
        assert made.list_payments(made.unbound(), None).payments == []
        status, body = made.http_get(made.bound(pki.client), pki.client)
        assert (status, body["error"]) == (401, "invalid_token")
    finally:
        thread.stop(0)


def test_client_ca_needs_tls(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(ConfigurationError, match="--client-ca needs --tls-cert"):
        PaymentsConfig(data_dir=tmp_path, client_ca=pki.ca.cert_path)


def test_cli_refuses_a_bad_client_ca(tmp_path: Path, pki: Pki) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYMENTS_")}
    env.update(
        {
            "PAYMENTS_DATA_DIR": str(tmp_path / "p"),
            "PAYMENTS_TLS_CERT": str(pki.server.cert_path),
            "PAYMENTS_TLS_KEY": str(pki.server.key_path),
            "PAYMENTS_CLIENT_CA": str(bad),
        }
    )
    result = subprocess.run(
        [sys.executable, "-m", "payments_svc.cli", "serve", "--listen", "127.0.0.1:0"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("payments-svc: error: --client-ca")


def test_python_merchant_over_mutual_tls(gateway: Gateway, pki: Pki) -> None:
    """clients/python/merchant.py with --cert/--key: bound tokens from the TokenService's
    mutual-TLS port, accepted by the PaymentService over the same certificate (its wait for
    SERVING goes over mutual TLS too); without them, the PaymentService's handshake refuses it."""
    merchant = gateway.token_server.register(
        "merchant-shop", scopes=("payments:read", "payments:write", "payments:refund")
    )
    root = Path(__file__).resolve().parents[2]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AUTHSVC_", "PAYMENTS_"))},
        "AUTHSVC_CLIENT_ID": merchant.client_id,
        "AUTHSVC_CLIENT_SECRET": merchant.secret,
        "AUTHSVC_TARGET": f"localhost:{gateway.token_server.running.mtls_port}",
        "PAYMENTS_TARGET": f"localhost:{gateway.running.port}",
        "AUTHSVC_CA": str(pki.ca.cert_path),
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(root / "clients" / "python" / "merchant.py"), *args],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    done = run("--cert", str(pki.client.cert_path), "--key", str(pki.client.key_path))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["ok"] is True and result["token_fetches"] == 1
    refused = run("--wait", "2")  # no certificate: neither mutual-TLS port completes a handshake
    assert refused.returncode != 0
    half = run("--cert", str(pki.client.cert_path))
    assert half.returncode == 2 and "--cert and --key go together" in half.stderr
