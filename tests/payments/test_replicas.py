"""Several PaymentService replicas on one PostgreSQL database, behind one TokenService, over real
channels: one idempotency key sent to every replica at once makes one payment, each replica sees
what the others wrote, refunds through several replicas never exceed the amount, and a database
outage is UNAVAILABLE while it lasts and heals by itself."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psycopg
import pytest

from authsvc.v1 import token_pb2, token_pb2_grpc
from payments_svc.app import PaymentsConfig, RunningPayments, start_server
from payments_svc.cli import build_parser, main
from payments_svc.v1 import payments_pb2 as pb
from payments_svc.v1 import payments_pb2_grpc
from tests.conftest import ISSUER, TokenServer
from tests.helpers import Command, ServerThread, run_at_once
from tests.payments.test_payment_service import bearer, reason
from tests.payments.test_store import Outage, outage  # noqa: F401 - the fixture

ALL = ("payments:read", "payments:write", "payments:refund")


@dataclass
class Replica:
    thread: ServerThread[RunningPayments]
    channel: grpc.Channel
    stub: payments_pb2_grpc.PaymentServiceStub


def start_replica(token_server: TokenServer, data_dir: Path, database_url: str, **settings: float) -> Replica:
    config = PaymentsConfig(
        data_dir=data_dir,
        database_url=database_url,
        listen="127.0.0.1:0",
        token_service=token_server.target,
        issuer=ISSUER,
        **settings,  # type: ignore[arg-type]
    )
    thread: ServerThread[RunningPayments] = ServerThread(lambda: start_server(config))
    running = thread.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    return Replica(thread, channel, payments_pb2_grpc.PaymentServiceStub(channel))


def stop_replica(replica: Replica) -> None:
    replica.channel.close()
    replica.thread.stop(0)


def issue_token(token_server: TokenServer, client_id: str = "merchant-a") -> tuple[tuple[str, str]]:
    _, secret = token_server.authority.clients.create_client(
        client_id=client_id, scopes=list(ALL), audiences=["payments"]
    )
    with grpc.insecure_channel(token_server.target) as ch:
        response = token_pb2_grpc.TokenServiceStub(ch).IssueToken(
            token_pb2.IssueTokenRequest(
                grant_type="client_credentials", client_id=client_id, client_secret=secret
            ),
            timeout=10,
        )
    return bearer(response.access_token)


@pytest.fixture
def replicas(token_server: TokenServer, pg_url: str, tmp_path: Path) -> Iterator[list[Replica]]:
    """Two replicas on one empty database, started at once (both migrate it)."""
    started, errors = run_at_once(2, lambda i: start_replica(token_server, tmp_path / f"r{i}", pg_url))
    try:
        assert errors == []
        yield started
    finally:
        for replica in started:
            stop_replica(replica)


def pay(replica: Replica, md: tuple[tuple[str, str]], key: str, amount: str = "100.00") -> pb.Payment:
    return replica.stub.CreatePayment(
        pb.CreatePaymentRequest(
            amount=amount, currency="USD", payment_method="pm_card_visa", idempotency_key=key
        ),
        metadata=md,
        timeout=10,
    ).payment


def get(replica: Replica, md: tuple[tuple[str, str]], txn: str, timeout: float = 10) -> pb.Payment:
    return replica.stub.GetPayment(
        pb.GetPaymentRequest(transaction_id=txn), metadata=md, timeout=timeout
    ).payment


def test_one_key_on_both_replicas_at_once_makes_one_payment(
    replicas: list[Replica], token_server: TokenServer, pg_url: str
) -> None:
    md = issue_token(token_server)
    payments, errors = run_at_once(12, lambda i: pay(replicas[i % 2], md, "race"))
    assert errors == []
    assert len(payments) == 12 and len({p.transaction_id for p in payments}) == 1
    assert all(p == payments[0] for p in payments)
    for replica in replicas:
        listed = replica.stub.ListPayments(pb.ListPaymentsRequest(), metadata=md, timeout=10).payments
        assert [p.transaction_id for p in listed] == [payments[0].transaction_id]
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT COUNT(*) FROM payments").fetchone() == (1,)
        assert conn.execute("SELECT version FROM payments_schema_migrations").fetchall() == [(1,)]


def test_each_replica_reads_what_the_other_wrote(replicas: list[Replica], token_server: TokenServer) -> None:
    a, b = replicas
    md = issue_token(token_server)
    on_a, on_b = pay(a, md, "k-a"), pay(b, md, "k-b", amount="20.00")
    assert get(b, md, on_a.transaction_id) == on_a
    assert get(a, md, on_b.transaction_id) == on_b
    assert pay(b, md, "k-a") == on_a, "a replay on the other replica returns the same payment"
    refunded = b.stub.RefundPayment(
        pb.RefundPaymentRequest(transaction_id=on_a.transaction_id, amount="40.00", idempotency_key="r1"),
        metadata=md,
        timeout=10,
    ).payment
    assert get(a, md, on_a.transaction_id) == refunded
    assert refunded.refunded_amount == "40.00"
    # a page token from one replica is good on the other
    first = a.stub.ListPayments(pb.ListPaymentsRequest(page_size=1), metadata=md, timeout=10)
    second = b.stub.ListPayments(
        pb.ListPaymentsRequest(page_size=1, page_token=first.next_page_token), metadata=md, timeout=10
    )
    assert {p.transaction_id for p in [*first.payments, *second.payments]} == {
        on_a.transaction_id,
        on_b.transaction_id,
    }
    assert not second.next_page_token


def test_refunds_through_both_replicas_never_exceed(
    replicas: list[Replica], token_server: TokenServer
) -> None:
    md = issue_token(token_server)
    txn = pay(replicas[0], md, "k").transaction_id

    def refund(i: int) -> pb.Payment:
        return (
            replicas[i % 2]
            .stub.RefundPayment(
                pb.RefundPaymentRequest(transaction_id=txn, amount="30.00", idempotency_key=f"r{i}"),
                metadata=md,
                timeout=10,
            )
            .payment
        )

    done, errors = run_at_once(8, refund)
    assert len(done) == 3 and len(errors) == 5
    assert {reason(e) for e in errors if isinstance(e, grpc.RpcError)} == {
        (grpc.StatusCode.FAILED_PRECONDITION, "REFUND_EXCEEDS_BALANCE")
    }
    assert sorted(p.refunded_amount for p in done) == ["30.00", "60.00", "90.00"]
    assert get(replicas[1], md, txn).refunded_amount == "90.00"


def test_database_outage_is_unavailable_and_heals_without_restart(
    outage: Outage,  # noqa: F811 - the fixture
    token_server: TokenServer,
    tmp_path: Path,
) -> None:
    replica = start_replica(token_server, tmp_path / "r", outage.url, database_timeout=1.0)
    try:
        md = issue_token(token_server)
        txn = pay(replica, md, "before").transaction_id
        outage.begin()
        try:
            calls: list[Callable[[], object]] = [
                lambda: get(replica, md, txn),
                lambda: pay(replica, md, "during"),
                lambda: replica.stub.ListPayments(pb.ListPaymentsRequest(), metadata=md, timeout=10),
            ]
            for call in calls:
                started = time.monotonic()
                with pytest.raises(grpc.RpcError) as info:
                    call()
                assert time.monotonic() - started < 4, "an unreachable database must not hang a call"
                assert reason(info.value) == (grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE")
                assert "postgres" not in (info.value.details() or "").lower()  # nothing of the internals
        finally:
            outage.end()
        deadline = time.monotonic() + 10
        while True:
            try:
                assert get(replica, md, txn).transaction_id == txn
                break
            except grpc.RpcError as exc:
                assert reason(exc) == (grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE")
                assert time.monotonic() < deadline, "the store did not reconnect by itself"
                time.sleep(0.1)
        after = pay(replica, md, "after")
        assert after.transaction_id != txn
        assert pay(replica, md, "during").transaction_id not in {txn, after.transaction_id}
    finally:
        stop_replica(replica)


# -- the command -----------------------------------------------------------------------------


def test_database_url_flag_and_environment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser({}).parse_args(["serve", "--help"])
    assert "--database-url" in capsys.readouterr().out
    url = "postgresql://payments:s3cret@db.internal/payments"
    assert build_parser({"PAYMENTS_DATABASE_URL": url}).parse_args(["serve"]).database_url == url
    assert build_parser({}).parse_args(["serve"]).database_url is None
    assert "s3cret" not in repr(PaymentsConfig(data_dir=tmp_path, database_url=url))
    assert main(["serve", "--data-dir", str(tmp_path), "--database-url", "mysql://x/y"], env={}) == 1
    assert "postgresql://" in capsys.readouterr().err


def test_serve_command_with_database_url_shares_the_database(
    replicas: list[Replica], token_server: TokenServer, pg_url: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "PAYMENTS_DATABASE_URL": pg_url,
        "PAYMENTS_DATA_DIR": str(tmp_path / "unused"),
        "PAYMENTS_LISTEN": "127.0.0.1:0",
        "PAYMENTS_TOKEN_SERVICE": token_server.target,
        "PAYMENTS_ISSUER": ISSUER,
    }
    md = issue_token(token_server)
    process = Command([sys.executable, "-m", "payments_svc.cli", "serve"], env)
    try:
        with grpc.insecure_channel(process.target) as ch:
            made = (
                payments_pb2_grpc.PaymentServiceStub(ch)
                .CreatePayment(
                    pb.CreatePaymentRequest(
                        amount="5.00", currency="USD", payment_method="pm_x", idempotency_key="cli"
                    ),
                    metadata=md,
                    timeout=10,
                )
                .payment
            )
        assert get(replicas[0], md, made.transaction_id) == made
        assert process.terminate() == 0
        assert "PostgreSQL" in process.output()
        assert not (tmp_path / "unused").exists(), "no SQLite file when a database URL is given"
    finally:
        if process.proc.poll() is None:
            process.kill()
