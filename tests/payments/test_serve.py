"""``payments-svc serve`` as a process: environment, graceful stop, and no payment lost to a kill."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc

from authsvc.v1 import token_pb2, token_pb2_grpc
from payments_svc.v1 import payments_pb2 as pb
from payments_svc.v1 import payments_pb2_grpc
from tests.conftest import KEK
from tests.helpers import Command, create_client
from tests.server.test_serve import PG_PASSWORDS, with_passwords


def test_payment_survives_sigkill_and_sigterm_is_graceful(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "AUTHSVC_DATA_DIR": str(tmp_path / "auth"),
        "AUTHSVC_KEK": KEK,
        "AUTHSVC_ISSUER": "https://env.test",
        "PAYMENTS_ISSUER": "https://env.test",
        "PAYMENTS_DATA_DIR": str(tmp_path / "pay"),
        "PAYMENTS_LISTEN": "127.0.0.1:0",
    }
    secret = create_client(env, "shop", "payments:read payments:write")
    auth = Command([sys.executable, "-m", "authsvc.cli", "serve", "--listen", "127.0.0.1:0"], env)
    try:
        env["PAYMENTS_TOKEN_SERVICE"] = auth.target
        with grpc.insecure_channel(auth.target) as ch:
            token = (
                token_pb2_grpc.TokenServiceStub(ch)
                .IssueToken(
                    token_pb2.IssueTokenRequest(
                        grant_type="client_credentials",
                        client_id="shop",
                        client_secret=secret,
                    ),
                    timeout=10,
                )
                .access_token
            )
        md = (("authorization", f"Bearer {token}"),)
        gateway = Command([sys.executable, "-m", "payments_svc.cli", "serve"], env)
        with grpc.insecure_channel(gateway.target) as ch:
            paid = (
                payments_pb2_grpc.PaymentServiceStub(ch)
                .CreatePayment(
                    pb.CreatePaymentRequest(
                        amount="12.34", currency="EUR", payment_method="pm_x", idempotency_key="k1"
                    ),
                    metadata=md,
                    timeout=10,
                )
                .payment
            )
        gateway.kill()  # no chance to flush or close anything

        gateway = Command([sys.executable, "-m", "payments_svc.cli", "serve"], env)
        with grpc.insecure_channel(gateway.target) as ch:
            got = (
                payments_pb2_grpc.PaymentServiceStub(ch)
                .GetPayment(pb.GetPaymentRequest(transaction_id=paid.transaction_id), metadata=md, timeout=10)
                .payment
            )
        assert got == paid
        assert gateway.terminate() == 0
        assert "stopped" in gateway.output()
        assert token not in gateway.output() and secret not in auth.output()
    finally:
        auth.terminate()


def test_plaintext_on_a_public_address_is_refused(tmp_path: Path) -> None:
    argv = [
        sys.executable,
        "-m",
        "payments_svc.cli",
        "serve",
        "--listen",
        "0.0.0.0:0",
        "--data-dir",
        str(tmp_path),
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 1 and "without TLS" in out.stderr


def test_serve_logs_where_its_database_is_and_never_a_password(tmp_path: Path, pg_url: str) -> None:
    """SQLite: the file. PostgreSQL: the URL with both forms of password redacted."""
    env = {
        **os.environ,
        "PAYMENTS_DATA_DIR": str(tmp_path / "pay"),
        "PAYMENTS_LISTEN": "127.0.0.1:0",
        "PAYMENTS_TOKEN_SERVICE": "127.0.0.1:9",  # none: it starts without keys, NOT_SERVING
    }
    sqlite = Command([sys.executable, "-m", "payments_svc.cli", "serve"], env)
    assert sqlite.terminate() == 0, sqlite.output()
    assert f"payments in SQLite at {tmp_path / 'pay' / 'payments.db'}" in sqlite.output()

    postgres = Command(
        [sys.executable, "-m", "payments_svc.cli", "serve"],
        {**env, "PAYMENTS_DATABASE_URL": with_passwords(pg_url)},
    )
    assert postgres.terminate() == 0, postgres.output()
    output = postgres.output()
    host_and_db = pg_url.partition("@")[2]
    assert f"payments in PostgreSQL at postgresql://postgres:***@{host_and_db}?password=***" in output
    for password in PG_PASSWORDS:
        assert password not in output
