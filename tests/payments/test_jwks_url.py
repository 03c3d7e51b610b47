"""``payments-svc serve --jwks-url``: the PaymentService takes the issuer's keys from the
TokenService's jwks_uri (the HTTP edge) instead of GetJwks, and pays with tokens it verifies."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from authsvc.core.errors import ConfigurationError
from authsvc.server.app import RunningServer, open_authority, start_server
from authsvc.v1 import token_pb2, token_pb2_grpc
from authsvc.verify import HttpJwksSource
from payments_svc.app import PaymentsConfig, RunningPayments
from payments_svc.app import start_server as start_payments
from payments_svc.v1 import payments_pb2, payments_pb2_grpc
from tests.conftest import ISSUER, TokenServer, serve_config
from tests.helpers import ServerThread

TIMEOUT = 10


@pytest.fixture
def issuer(tmp_path: Path) -> Iterator[TokenServer]:
    config = serve_config(tmp_path / "auth", http_listen="127.0.0.1:0")
    thread: ServerThread[RunningServer] = ServerThread(
        lambda: start_server(config, authority=open_authority(config))
    )
    running = thread.start()
    try:
        yield TokenServer(running, config, thread)
    finally:
        thread.stop(grace=0)


def test_payments_verify_with_keys_from_the_jwks_uri(issuer: TokenServer, tmp_path: Path) -> None:
    shop = issuer.register("jwks-shop", scopes=("payments:write",))
    config = PaymentsConfig(
        data_dir=tmp_path / "pay",
        listen="127.0.0.1:0",
        # nothing listens there: every key must come from the jwks_uri
        token_service="127.0.0.1:9",
        jwks_url=issuer.http_url + "/.well-known/jwks.json",
        issuer=ISSUER,
    )
    thread: ServerThread[RunningPayments] = ServerThread(lambda: start_payments(config))
    running = thread.start()
    try:
        assert isinstance(running.verifier.keys.source, HttpJwksSource)
        assert running.verifier.keys.kids == {issuer.authority.keys.ensure_signing_key().kid}
        with grpc.insecure_channel(issuer.target) as ch:
            token = (
                token_pb2_grpc.TokenServiceStub(ch)
                .IssueToken(
                    token_pb2.IssueTokenRequest(
                        grant_type="client_credentials", client_id=shop.client_id, client_secret=shop.secret
                    ),
                    timeout=TIMEOUT,
                )
                .access_token
            )
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            paid = payments_pb2_grpc.PaymentServiceStub(ch).CreatePayment(
                payments_pb2.CreatePaymentRequest(
                    amount="12.00", currency="USD", payment_method="pm_card", idempotency_key="k1"
                ),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=TIMEOUT,
            )
        assert paid.payment.client_id == shop.client_id
    finally:
        thread.stop(grace=0)


@pytest.mark.parametrize(
    "url",
    [
        "http://keys.example.com/.well-known/jwks.json",
        "http://10.0.0.1/.well-known/jwks.json",
        "ftp://127.0.0.1/jwks",
        "not a url",
    ],
)
def test_a_jwks_url_that_could_be_swapped_in_transit_is_refused(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigurationError, match="refusing to fetch signing keys"):
        PaymentsConfig(data_dir=tmp_path, jwks_url=url)


def test_plaintext_jwks_url_to_another_host_only_with_the_explicit_flag(tmp_path: Path) -> None:
    config = PaymentsConfig(
        data_dir=tmp_path,
        jwks_url="http://auth.mesh.local/.well-known/jwks.json",
        insecure_token_service=True,
    )
    assert config.jwks_url is not None
