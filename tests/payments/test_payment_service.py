"""The PaymentService behind the interceptor, against a real TokenService, over real channels."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from authsvc.v1 import token_pb2, token_pb2_grpc
from payments_svc.app import PaymentsConfig, RunningPayments, start_server
from payments_svc.v1 import payments_pb2 as pb
from payments_svc.v1 import payments_pb2_grpc
from tests.conftest import ISSUER, TokenServer
from tests.helpers import ServerThread

ALL = ("payments:read", "payments:write", "payments:refund")


@dataclass
class Gateway:
    stub: payments_pb2_grpc.PaymentServiceStub
    token_server: TokenServer
    running: RunningPayments

    def token(self, client_id: str, scopes: tuple[str, ...] = ALL, audience: str = "payments") -> str:
        authority = self.token_server.authority
        secret = _SECRETS.get((str(self.token_server.config.data_dir), client_id))
        if secret is None:
            _, secret = authority.clients.create_client(
                client_id=client_id, scopes=list(scopes), audiences=[audience]
            )
            _SECRETS[(str(self.token_server.config.data_dir), client_id)] = secret
        with grpc.insecure_channel(self.token_server.target) as ch:
            return str(
                token_pb2_grpc.TokenServiceStub(ch)
                .IssueToken(
                    token_pb2.IssueTokenRequest(
                        grant_type="client_credentials", client_id=client_id, client_secret=secret
                    ),
                    timeout=10,
                )
                .access_token
            )


# keyed by the TokenService's data dir, unique to its test: a port is reused by a later test's server
_SECRETS: dict[tuple[str, str], str] = {}


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


def reason(err: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    status = rpc_status.from_call(err)
    assert status is not None, f"no rich status: {err}"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.domain == "authsvc"
    return err.code(), info.reason


def start_payments(data_dir: Path, token_target: str) -> ServerThread[RunningPayments]:
    config = PaymentsConfig(
        data_dir=data_dir, listen="127.0.0.1:0", token_service=token_target, issuer=ISSUER
    )
    thread: ServerThread[RunningPayments] = ServerThread(lambda: start_server(config))
    thread.start()
    return thread


@pytest.fixture
def gateway(token_server: TokenServer, tmp_path: Path) -> Iterator[Gateway]:
    thread = start_payments(tmp_path / "payments", token_server.target)
    with grpc.insecure_channel(f"127.0.0.1:{thread.running.port}") as channel:
        yield Gateway(payments_pb2_grpc.PaymentServiceStub(channel), token_server, thread.running)
    thread.stop(0)


def create(
    gw: Gateway,
    token: str,
    *,
    key: str = "order-1",
    amount: str = "100.00",
    currency: str = "USD",
    description: str = "order 1",
) -> pb.Payment:
    return gw.stub.CreatePayment(
        pb.CreatePaymentRequest(
            amount=amount,
            currency=currency,
            payment_method="pm_card_visa",
            description=description,
            idempotency_key=key,
        ),
        metadata=bearer(token),
        timeout=10,
    ).payment


def test_create_read_and_replay(gateway: Gateway) -> None:
    token = gateway.token("merchant-a")
    payment = create(gateway, token)
    assert payment.transaction_id.startswith("txn_") and len(payment.transaction_id) == 28
    assert (payment.amount, payment.currency, payment.client_id) == ("100.00", "USD", "merchant-a")
    assert payment.status == pb.PAYMENT_STATUS_SUCCEEDED and payment.refunded_amount == "0.00"
    assert payment.create_time.seconds > 0
    replay = create(gateway, token)
    assert replay == payment, "the same key and request must return the same payment, not charge twice"
    got = gateway.stub.GetPayment(
        pb.GetPaymentRequest(transaction_id=payment.transaction_id), metadata=bearer(token), timeout=10
    ).payment
    assert got == payment


def test_amount_is_normalized_exactly(gateway: Gateway) -> None:
    token = gateway.token("merchant-a")
    assert create(gateway, token, key="k1", amount="100.5").amount == "100.50"
    assert create(gateway, token, key="k2", amount="500", currency="JPY").amount == "500"
    assert create(gateway, token, key="k3", amount="1.25", currency="BHD").amount == "1.250"


@pytest.mark.parametrize(
    ("amount", "currency", "expected"),
    [
        ("100.001", "USD", "INVALID_AMOUNT"),
        ("1.5", "JPY", "INVALID_AMOUNT"),
        ("-5", "USD", "INVALID_AMOUNT"),
        ("1e3", "USD", "INVALID_AMOUNT"),
        ("0", "USD", "INVALID_AMOUNT"),
        ("10", "XYZ", "INVALID_CURRENCY"),
        ("10", "usd", "INVALID_CURRENCY"),
    ],
    ids=["usd-3-decimals", "jpy-decimals", "negative", "exponent", "zero", "unknown-currency", "lowercase"],
)
def test_invalid_amounts_are_refused(gateway: Gateway, amount: str, currency: str, expected: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        create(gateway, gateway.token("merchant-a"), amount=amount, currency=currency)
    assert reason(info.value) == (grpc.StatusCode.INVALID_ARGUMENT, expected)


def test_same_key_different_request_is_refused(gateway: Gateway) -> None:
    token = gateway.token("merchant-a")
    create(gateway, token, key="k", amount="10.00")
    with pytest.raises(grpc.RpcError) as info:
        create(gateway, token, key="k", amount="11.00")
    assert reason(info.value) == (grpc.StatusCode.FAILED_PRECONDITION, "IDEMPOTENCY_KEY_REUSED")


def test_concurrent_creates_with_one_key_make_one_payment(gateway: Gateway) -> None:
    token = gateway.token("merchant-a")
    barrier = threading.Barrier(8)
    ids: list[str] = []

    def pay() -> None:
        barrier.wait()
        ids.append(create(gateway, token, key="race").transaction_id)

    threads = [threading.Thread(target=pay) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 8 and len(set(ids)) == 1
    listed = gateway.stub.ListPayments(pb.ListPaymentsRequest(), metadata=bearer(token), timeout=10).payments
    assert [p.transaction_id for p in listed] == ids[:1]


def test_clients_see_only_their_own_payments(gateway: Gateway) -> None:
    a, b = gateway.token("merchant-a"), gateway.token("merchant-b")
    paid = create(gateway, a)
    for call, request in [
        (gateway.stub.GetPayment, pb.GetPaymentRequest(transaction_id=paid.transaction_id)),
        (
            gateway.stub.RefundPayment,
            pb.RefundPaymentRequest(transaction_id=paid.transaction_id, amount="1.00", idempotency_key="r"),
        ),
    ]:
        with pytest.raises(grpc.RpcError) as info:
            call(request, metadata=bearer(b), timeout=10)  # type: ignore[operator]
        assert reason(info.value) == (grpc.StatusCode.NOT_FOUND, "PAYMENT_NOT_FOUND")
    assert (
        list(gateway.stub.ListPayments(pb.ListPaymentsRequest(), metadata=bearer(b), timeout=10).payments)
        == []
    )
    # b's same idempotency key is b's own payment, not a replay of a's
    assert create(gateway, b).transaction_id != paid.transaction_id
    assert (
        gateway.stub.GetPayment(
            pb.GetPaymentRequest(transaction_id=paid.transaction_id), metadata=bearer(a), timeout=10
        ).payment.refunded_amount
        == "0.00"
    )


def test_refunds_add_up_and_never_exceed(gateway: Gateway) -> None:
    token = gateway.token("merchant-a")
    txn = create(gateway, token, amount="100.00").transaction_id

    def refund(amount: str, key: str) -> pb.Payment:
        return gateway.stub.RefundPayment(
            pb.RefundPaymentRequest(transaction_id=txn, amount=amount, idempotency_key=key),
            metadata=bearer(token),
            timeout=10,
        ).payment

    first = refund("30.00", key="r1")
    assert (first.refunded_amount, first.status) == ("30.00", pb.PAYMENT_STATUS_PARTIALLY_REFUNDED)
    assert refund("30.00", key="r1").refunded_amount == "30.00", "a repeated refund key refunds once"
    assert refund("20.50", key="r2").refunded_amount == "50.50"
    with pytest.raises(grpc.RpcError) as info:
        refund("49.51", key="r3")
    assert reason(info.value) == (grpc.StatusCode.FAILED_PRECONDITION, "REFUND_EXCEEDS_BALANCE")
    last = refund("", key="r4")
    assert (last.refunded_amount, last.status) == ("100.00", pb.PAYMENT_STATUS_REFUNDED)


def test_pagination_covers_every_payment_once(gateway: Gateway) -> None:
    token = gateway.token("merchant-a")
    made = {create(gateway, token, key=f"k{i}", description=f"#{i}").transaction_id for i in range(7)}
    seen: list[str] = []
    page_token = ""
    while True:
        page = gateway.stub.ListPayments(
            pb.ListPaymentsRequest(page_size=3, page_token=page_token), metadata=bearer(token), timeout=10
        )
        assert len(page.payments) <= 3
        seen += [p.transaction_id for p in page.payments]
        page_token = page.next_page_token
        if not page_token:
            break
    assert len(seen) == 7 and set(seen) == made
    with pytest.raises(grpc.RpcError) as info:
        gateway.stub.ListPayments(
            pb.ListPaymentsRequest(page_token="not-a-token"), metadata=bearer(token), timeout=10
        )
    assert reason(info.value) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")


def test_scopes_are_enforced_per_method(gateway: Gateway) -> None:
    read_only = gateway.token("reader", scopes=("payments:read",))
    with pytest.raises(grpc.RpcError) as info:
        create(gateway, read_only)
    assert reason(info.value) == (grpc.StatusCode.PERMISSION_DENIED, "INSUFFICIENT_SCOPE")
    assert (
        list(
            gateway.stub.ListPayments(
                pb.ListPaymentsRequest(), metadata=bearer(read_only), timeout=10
            ).payments
        )
        == []
    )
    writer = gateway.token("writer", scopes=("payments:read", "payments:write"))
    txn = create(gateway, writer).transaction_id
    with pytest.raises(grpc.RpcError) as info:
        gateway.stub.RefundPayment(
            pb.RefundPaymentRequest(transaction_id=txn), metadata=bearer(writer), timeout=10
        )
    assert reason(info.value) == (grpc.StatusCode.PERMISSION_DENIED, "INSUFFICIENT_SCOPE")


def test_no_token_and_wrong_audience_are_unauthenticated(gateway: Gateway) -> None:
    with pytest.raises(grpc.RpcError) as info:
        gateway.stub.ListPayments(pb.ListPaymentsRequest(), timeout=10)
    assert reason(info.value) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN")
    ledger = gateway.token("ledger-client", audience="ledger")
    with pytest.raises(grpc.RpcError) as info:
        gateway.stub.ListPayments(pb.ListPaymentsRequest(), metadata=bearer(ledger), timeout=10)
    assert reason(info.value) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN")


def test_undecodable_request_is_invalid_argument(gateway: Gateway) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{gateway.running.port}")
    raw: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
        "/payments_svc.v1.PaymentService/CreatePayment"
    )
    with pytest.raises(grpc.RpcError) as info:
        raw(b"\x0a\xff\xff", metadata=bearer(gateway.token("merchant-a")), timeout=10)
    channel.close()
    assert reason(info.value) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")


def test_issuer_down_keeps_valid_tokens_working(gateway: Gateway, token_server: TokenServer) -> None:
    token = gateway.token("merchant-a")
    txn = create(gateway, token).transaction_id
    forged = token[:-8] + ("AAAAAAAA" if not token.endswith("AAAAAAAA") else "BBBBBBBB")
    other_token = gateway.token("merchant-b")
    token_server.stop()  # the TokenService is gone
    for _ in range(3):
        got = gateway.stub.GetPayment(
            pb.GetPaymentRequest(transaction_id=txn), metadata=bearer(token), timeout=2
        )
        assert got.payment.transaction_id == txn
    # a token never seen before, signed by the cached key, still verifies offline
    assert gateway.stub.ListPayments(pb.ListPaymentsRequest(), metadata=bearer(other_token), timeout=2)
    with pytest.raises(grpc.RpcError) as info:
        gateway.stub.GetPayment(pb.GetPaymentRequest(transaction_id=txn), metadata=bearer(forged), timeout=2)
    assert reason(info.value) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_TOKEN")


@pytest.mark.parametrize(
    "page_token",
    [
        base64.urlsafe_b64encode(b'[9223372036854775808, "txn_000000000000000000000000"]').decode(),
        base64.urlsafe_b64encode(b'[-1, "txn_000000000000000000000000"]').decode(),
        base64.urlsafe_b64encode(b"[" * 100 + b"]" * 100).decode(),
        "A" * 10_000,
    ],
    ids=["int64-overflow", "negative", "deeply-nested", "huge"],
)
def test_hostile_page_tokens_are_invalid_argument(gateway: Gateway, page_token: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        gateway.stub.ListPayments(
            pb.ListPaymentsRequest(page_token=page_token),
            metadata=bearer(gateway.token("merchant-a")),
            timeout=10,
        )
    assert reason(info.value) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
