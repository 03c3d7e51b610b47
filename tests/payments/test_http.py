"""The PaymentService's HTTP/JSON API against real servers over real sockets: the seed's request as
written, idempotent replays, RFC 6750 refusals, reads, paging and refunds; and the transcoder's
start-up refusals of annotations it does not support."""

from __future__ import annotations

import http.client
import json
import os
import re
import ssl
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2, descriptor_pool

from authsvc.core.errors import ConfigurationError
from authsvc.v1 import options_pb2, token_pb2, token_pb2_grpc
from authsvc.verify import PUBLIC, MethodPolicy
from payments_svc.app import PaymentsConfig, RunningPayments, start_server
from payments_svc.http import derive_routes
from payments_svc.v1 import payments_pb2 as pb
from payments_svc.v1 import payments_pb2_grpc
from tests.conftest import ISSUER, TokenServer
from tests.helpers import Command, ServerThread
from tests.payments.httpapi import SEED_BODY, HttpGateway, running_http_gateway
from tests.server.test_serve import self_signed

TXN = re.compile(r"txn_[0-9a-f]{24}")


@pytest.fixture
def http_gateway(token_server: TokenServer, tmp_path: Path) -> Iterator[HttpGateway]:
    with running_http_gateway(token_server, tmp_path / "payments") as gateway:
        yield gateway


def test_the_seed_request_as_written_pays(http_gateway: HttpGateway) -> None:
    token = http_gateway.token("merchant-shop")
    answer = http_gateway.call("POST", "/api/v1/payments", token=token, key="order-12345", body=SEED_BODY)
    assert answer.status == 200, answer.raw
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.headers["Cache-Control"] == "no-store"
    payment = answer.json
    assert payment["status"] == "succeeded"
    assert TXN.fullmatch(str(payment["transaction_id"]))
    assert (payment["amount"], payment["currency"]) == ("100.00", "USD")
    assert (payment["payment_method"], payment["description"]) == ("credit_card", "Order #12345")
    assert (payment["client_id"], payment["refunded_amount"]) == ("merchant-shop", "0.00")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", str(payment["create_time"]))


def test_the_seed_request_replays_idempotently(http_gateway: HttpGateway) -> None:
    token = http_gateway.token("merchant-shop")
    first = http_gateway.call("POST", "/api/v1/payments", token=token, key="order-12345", body=SEED_BODY)
    again = http_gateway.call("POST", "/api/v1/payments", token=token, key="order-12345", body=SEED_BODY)
    assert (first.status, again.status) == (200, 200)
    assert again.json == first.json, "the same key and request must return the same payment"
    listed = http_gateway.call("GET", "/api/v1/payments", token=token).json["payments"]
    assert isinstance(listed, list) and len(listed) == 1, "charged once"
    other = http_gateway.pay(token, "order-12345", amount="5.00")
    assert (other.status, other.reason) == (409, "IDEMPOTENCY_KEY_REUSED")


def test_the_seed_request_without_a_token_gets_the_bearer_challenge(http_gateway: HttpGateway) -> None:
    answer = http_gateway.call("POST", "/api/v1/payments", key="order-12345", body=SEED_BODY)
    # RFC 6750 §3.1: a request with no credentials gets a challenge without an error code
    assert (answer.status, answer.error, answer.challenge) == (401, "invalid_token", "Bearer")
    forged = http_gateway.call("POST", "/api/v1/payments", token="not.a.jwt", key="k", body=SEED_BODY)
    assert (forged.status, forged.error) == (401, "invalid_token")
    assert forged.challenge.startswith('Bearer error="invalid_token"')


def test_the_seed_request_without_the_scope_gets_403_naming_it(http_gateway: HttpGateway) -> None:
    token = http_gateway.token("auditor", ("payments:read",))
    answer = http_gateway.call("POST", "/api/v1/payments", token=token, key="order-12345", body=SEED_BODY)
    assert (answer.status, answer.error) == (403, "insufficient_scope")
    assert 'error="insufficient_scope"' in answer.challenge
    assert 'scope="payments:write"' in answer.challenge
    assert http_gateway.call("GET", "/api/v1/payments", token=token).json["payments"] == []


@pytest.mark.parametrize(
    ("amount", "currency", "stored"),
    [
        (b"100.00", "USD", "100.00"),
        (b'"100.00"', "USD", "100.00"),
        (b"100", "USD", "100.00"),
        (b'"100"', "USD", "100.00"),
        (b"0.10", "USD", "0.10"),
        (b"500", "JPY", "500"),
        (b"1.250", "BHD", "1.250"),
        # a float would say 1000000000000000.00: the literal text is what is charged
        (b"999999999999999.99", "USD", "999999999999999.99"),
    ],
    ids=["number", "string", "integer", "integer-string", "dime", "jpy", "bhd", "beyond-float-precision"],
)
def test_amounts_as_json_numbers_and_strings(
    http_gateway: HttpGateway, amount: bytes, currency: str, stored: str
) -> None:
    token = http_gateway.token("merchant-shop")
    body = b'{"amount": ' + amount + b', "currency": "' + currency.encode() + b'", "payment_method": "pm_1"}'
    answer = http_gateway.call("POST", "/api/v1/payments", token=token, key="k", body=body)
    assert answer.status == 200, answer.raw
    assert (answer.json["amount"], answer.json["currency"]) == (stored, currency)


@pytest.mark.parametrize(
    "amount",
    [b"1e3", b"-5", b"100.001", b'"1e3"', b'"-5"', b'"abc"', b"0", b"true", b"null", b"[1]"],
    ids=["exponent", "negative", "sub-cent", "exponent-string", "negative-string", "text", "zero", "bool",
         "null", "array"],
)  # fmt: skip
def test_bad_amounts_are_400_invalid_amount(http_gateway: HttpGateway, amount: bytes) -> None:
    token = http_gateway.token("merchant-shop")
    body = b'{"amount": ' + amount + b', "currency": "USD", "payment_method": "pm_1"}'
    answer = http_gateway.call("POST", "/api/v1/payments", token=token, key="k", body=body)
    assert (answer.status, answer.reason) == (400, "INVALID_AMOUNT")
    assert http_gateway.call("GET", "/api/v1/payments", token=token).json["payments"] == []


def test_get_one_and_another_clients_id_is_404(http_gateway: HttpGateway) -> None:
    token = http_gateway.token("merchant-a")
    created = http_gateway.pay(token, "a-1").json
    txn = created["transaction_id"]
    got = http_gateway.call("GET", f"/api/v1/payments/{txn}", token=token)
    assert (got.status, got.json) == (200, created)
    intruder = http_gateway.token("merchant-b")
    theirs = http_gateway.call("GET", f"/api/v1/payments/{txn}", token=intruder)
    assert (theirs.status, theirs.reason) == (404, "PAYMENT_NOT_FOUND")
    refund = http_gateway.call("POST", f"/api/v1/payments/{txn}/refunds", token=intruder, key="r", body=b"")
    assert (refund.status, refund.reason) == (404, "PAYMENT_NOT_FOUND")
    assert http_gateway.call("GET", f"/api/v1/payments/{txn}", token=token).json == created, "untouched"
    unknown = http_gateway.call("GET", "/api/v1/payments/txn_" + "0" * 24, token=token)
    assert (unknown.status, unknown.reason) == (404, "PAYMENT_NOT_FOUND")


def test_list_pages_newest_first(http_gateway: HttpGateway) -> None:
    token = http_gateway.token("merchant-shop")
    ids = [http_gateway.pay(token, f"order-{i}").json["transaction_id"] for i in range(3)]
    first = http_gateway.call("GET", "/api/v1/payments?page_size=2", token=token)
    assert first.status == 200, first.raw
    page = first.json
    assert [p["transaction_id"] for p in page["payments"]] == ids[::-1][:2]  # type: ignore[attr-defined]
    assert page["next_page_token"]
    query = urllib.parse.urlencode({"page_size": "2", "page_token": page["next_page_token"]})
    rest = http_gateway.call("GET", f"/api/v1/payments?{query}", token=token).json
    assert [p["transaction_id"] for p in rest["payments"]] == ids[:1]  # type: ignore[attr-defined]
    assert rest["next_page_token"] == ""
    for bad in ("page_size=-1", "page_size=abc", "page_size=99999999999", "page_token=bogus", "color=red"):
        answer = http_gateway.call("GET", f"/api/v1/payments?{bad}", token=token)
        assert (answer.status, answer.reason) == (400, "INVALID_ARGUMENT"), bad


def test_refunds_need_a_key_replay_and_stop_at_the_balance(http_gateway: HttpGateway) -> None:
    token = http_gateway.token("merchant-shop")
    txn = http_gateway.pay(token, "order-1", amount="100.00").json["transaction_id"]
    path = f"/api/v1/payments/{txn}/refunds"
    no_key = http_gateway.call("POST", path, token=token, body={"amount": "10.00"})
    assert (no_key.status, no_key.reason) == (400, "INVALID_ARGUMENT")
    part = http_gateway.call("POST", path, token=token, key="refund-1", body=b'{"amount": 10.00}')
    assert part.status == 200, part.raw
    assert (part.json["status"], part.json["refunded_amount"]) == ("partially_refunded", "10.00")
    replay = http_gateway.call("POST", path, token=token, key="refund-1", body=b'{"amount": 10.00}')
    assert replay.json == part.json, "a repeated refund refunds once"
    too_much = http_gateway.call("POST", path, token=token, key="refund-2", body={"amount": "95.00"})
    assert (too_much.status, too_much.reason) == (409, "REFUND_EXCEEDS_BALANCE")
    rest = http_gateway.call(
        "POST", path, token=token, key="refund-3", body=None
    )  # no body: all that is left
    assert rest.status == 200, rest.raw
    assert (rest.json["status"], rest.json["refunded_amount"]) == ("refunded", "100.00")
    reader = http_gateway.token("reader", ("payments:read", "payments:write"))
    denied = http_gateway.call("POST", path, token=reader, key="refund-4", body=b"")
    assert (denied.status, denied.error) == (403, "insufficient_scope")
    assert 'scope="payments:refund"' in denied.challenge


def test_http_and_grpc_share_one_service(http_gateway: HttpGateway) -> None:
    token = http_gateway.token("merchant-shop")
    created = http_gateway.pay(token, "order-1", amount=12.5).json
    with grpc.insecure_channel(http_gateway.grpc_target) as channel:
        stub = payments_pb2_grpc.PaymentServiceStub(channel)
        got = stub.GetPayment(
            pb.GetPaymentRequest(transaction_id=str(created["transaction_id"])),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=10,
        ).payment
    assert (got.amount, got.status, got.client_id) == ("12.50", pb.PAYMENT_STATUS_SUCCEEDED, "merchant-shop")


def test_unknown_routes_and_methods_are_404(http_gateway: HttpGateway) -> None:
    token = http_gateway.token("merchant-shop")
    unknown = [
        ("GET", "/"),
        ("DELETE", "/api/v1/payments"),
        ("GET", "/api/v1/payments/"),
        ("PUT", "/api/v1/payments/txn_" + "0" * 24),
        ("GET", "/api/v2/payments"),
    ]
    for method, path in unknown:
        answer = http_gateway.call(method, path, token=token)
        assert (answer.status, answer.reason) == (404, "NOT_FOUND"), (method, path)


# -- the transcoder refuses at start-up what it does not support ------------------------------


class _Ops:
    async def get_payment(self, request: pb.GetPaymentRequest) -> pb.GetPaymentResponse:
        raise AssertionError("never called")

    async def create_payment(self, request: pb.CreatePaymentRequest) -> pb.CreatePaymentResponse:
        raise AssertionError("never called")


_CASES: dict[str, tuple[str, http_pb2.HttpRule, str]] = {
    # service name: (method, rule, scopes)
    "CustomVerb": ("GetPayment", http_pb2.HttpRule(get="/v1/payments/{transaction_id}:cancel"), "s"),
    "AdditionalBindings": (
        "GetPayment",
        http_pb2.HttpRule(
            get="/v1/payments/{transaction_id}",
            additional_bindings=[http_pb2.HttpRule(get="/v1/p/{transaction_id}")],
        ),
        "s",
    ),
    "BodyField": ("CreatePayment", http_pb2.HttpRule(post="/v1/payments", body="amount"), "s"),
    "BodyOnGet": ("GetPayment", http_pb2.HttpRule(get="/v1/payments", body="*"), "s"),
    "CustomPattern": (
        "GetPayment",
        http_pb2.HttpRule(custom=http_pb2.CustomHttpPattern(kind="HEAD", path="/v1/payments")),
        "s",
    ),
    "WildcardPath": ("GetPayment", http_pb2.HttpRule(get="/v1/{transaction_id=payments/*}"), "s"),
    "UnknownVariable": ("GetPayment", http_pb2.HttpRule(get="/v1/payments/{nope}"), "s"),
    "ResponseBodyNotMessage": (
        "GetPayment",
        http_pb2.HttpRule(get="/v1/payments/{transaction_id}", response_body="nope"),
        "s",
    ),
    "NoPolicy": ("GetPayment", http_pb2.HttpRule(get="/v1/payments/{transaction_id}"), ""),
    "NoOperation": ("RefundPayment", http_pb2.HttpRule(post="/v1/refunds", body="*"), "s"),
    "Good": ("GetPayment", http_pb2.HttpRule(get="/v1/payments/{transaction_id}"), "s"),
}


def _case_pool() -> descriptor_pool.DescriptorPool:
    """Services built on payments.proto's messages, one per case, in the default pool (where the
    option extensions are registered)."""
    pool = descriptor_pool.Default()
    name = "tests/payments/transcoder_cases.proto"
    try:
        pool.FindFileByName(name)
        return pool
    except KeyError:
        pass
    fdp = descriptor_pb2.FileDescriptorProto(
        name=name,
        package="transcoder_cases",
        syntax="proto3",
        dependency=[
            "payments_svc/v1/payments.proto",
            "google/api/annotations.proto",
            "authsvc/v1/options.proto",
        ],
    )
    for service, (method, rule, scopes) in _CASES.items():
        svc = fdp.service.add(name=service)
        m = svc.method.add(
            name=method,
            input_type=f".payments_svc.v1.{method}Request",
            output_type=f".payments_svc.v1.{method}Response",
        )
        m.options.Extensions[annotations_pb2.http].CopyFrom(rule)
        if scopes:
            m.options.Extensions[options_pb2.required_scopes].append(scopes)
    pool.Add(fdp)
    return pool


_WHY = {
    "CustomVerb": "is not a literal",
    "AdditionalBindings": "additional_bindings",
    "BodyField": "body must be",
    "BodyOnGet": "has no body",
    "CustomPattern": "only get, post",
    "WildcardPath": "is not a literal",
    "UnknownVariable": "path variable nope",
    "ResponseBodyNotMessage": "response_body",
    "NoPolicy": "no authorization policy",
    "NoOperation": "no operation refund_payment",
}


@pytest.mark.parametrize("service", list(_WHY))
def test_unsupported_annotations_are_refused_at_start_up(service: str) -> None:
    descriptor = _case_pool().FindServiceByName(f"transcoder_cases.{service}")
    with pytest.raises(ConfigurationError, match=_WHY[service]):
        derive_routes(descriptor, _Ops())


def test_a_public_method_gets_no_route() -> None:
    descriptor = _case_pool().FindServiceByName("transcoder_cases.Good")
    assert len(derive_routes(descriptor, _Ops())) == 1
    policy = MethodPolicy({"/transcoder_cases.Good/GetPayment": PUBLIC})
    with pytest.raises(ConfigurationError, match="is public"):
        derive_routes(descriptor, _Ops(), policy)


def test_routes_inherit_the_scopes_of_their_methods() -> None:
    routes = derive_routes(pb.DESCRIPTOR.services_by_name["PaymentService"], _FullOps())
    assert {(r.verb, r.template): r.required_scopes for r in routes} == {
        ("POST", "/api/v1/payments"): ("payments:write",),
        ("GET", "/api/v1/payments/{transaction_id}"): ("payments:read",),
        ("GET", "/api/v1/payments"): ("payments:read",),
        ("POST", "/api/v1/payments/{transaction_id}/refunds"): ("payments:refund",),
    }


class _FullOps(_Ops):
    async def list_payments(self, request: pb.ListPaymentsRequest) -> pb.ListPaymentsResponse:
        raise AssertionError("never called")

    async def refund_payment(self, request: pb.RefundPaymentRequest) -> pb.RefundPaymentResponse:
        raise AssertionError("never called")


# -- the listener: TLS as for gRPC, the plaintext rule, the command and its graceful stop ------


def test_tls_flags_apply_to_the_http_listener(token_server: TokenServer, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    config = PaymentsConfig(
        data_dir=tmp_path / "pay",
        listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        token_service=token_server.target,
        issuer=ISSUER,
        tls_cert=cert,
        tls_key=key,
    )
    thread: ServerThread[RunningPayments] = ServerThread(lambda: start_server(config))
    running = thread.start()
    try:
        token = HttpGateway(token_server, running).token("shop")
        context = ssl.create_default_context(cafile=str(cert))
        conn = http.client.HTTPSConnection("127.0.0.1", running.http_port, context=context, timeout=15)
        headers = {
            "Authorization": f"Bearer {token}",
            "Idempotency-Key": "k",
            "Content-Type": "application/json",
        }
        conn.request("POST", "/api/v1/payments", body=SEED_BODY, headers=headers)
        resp = conn.getresponse()
        assert (resp.status, json.loads(resp.read())["status"]) == (200, "succeeded")
        conn.close()
        plain = http.client.HTTPConnection("127.0.0.1", running.http_port, timeout=15)
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            plain.request("GET", "/api/v1/payments", headers={"Authorization": f"Bearer {token}"})
            plain.getresponse()
        plain.close()
    finally:
        thread.stop(0)


def test_plaintext_http_on_a_public_address_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="without TLS"):
        PaymentsConfig(data_dir=tmp_path, http_listen="0.0.0.0:8080")
    assert PaymentsConfig(data_dir=tmp_path, http_listen="0.0.0.0:8080", insecure=True).http_listen
    argv = [sys.executable, "-m", "payments_svc.cli", "serve", "--data-dir", str(tmp_path)]
    out = subprocess.run(
        argv,
        env={**os.environ, "PAYMENTS_HTTP_LISTEN": "0.0.0.0:0"},
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and "without TLS" in out.stderr


def test_serve_http_listen_pays_and_stops_gracefully(token_server: TokenServer, tmp_path: Path) -> None:
    secret = token_server.register("shop", scopes=("payments:write", "payments:read")).secret
    env = {
        **os.environ,
        "PAYMENTS_ISSUER": ISSUER,
        "PAYMENTS_DATA_DIR": str(tmp_path / "pay"),
        "PAYMENTS_LISTEN": "127.0.0.1:0",
        "PAYMENTS_TOKEN_SERVICE": token_server.target,
    }
    gateway = Command(
        [sys.executable, "-m", "payments_svc.cli", "serve", "--http-listen", "127.0.0.1:0"], env
    )
    try:
        # the line follows the gRPC one Command waited for: poll the log for it (a bound, not a timing)
        for _ in range(600):
            if m := re.search(r"HTTP/JSON API on 127\.0\.0\.1:(\d+)", gateway.output()):
                break
            assert gateway.proc.poll() is None, gateway.output()
            time.sleep(0.05)
        else:
            raise AssertionError("no HTTP listener line:\n" + gateway.output())
        with grpc.insecure_channel(token_server.target) as ch:
            token = (
                token_pb2_grpc.TokenServiceStub(ch)
                .IssueToken(
                    token_pb2.IssueTokenRequest(
                        grant_type="client_credentials", client_id="shop", client_secret=secret
                    ),
                    timeout=10,
                )
                .access_token
            )
        conn = http.client.HTTPConnection("127.0.0.1", int(m.group(1)), timeout=15)
        headers = {
            "Authorization": f"Bearer {token}",
            "Idempotency-Key": "k",
            "Content-Type": "application/json",
        }
        conn.request("POST", "/api/v1/payments", body=SEED_BODY, headers=headers)
        resp = conn.getresponse()
        assert (resp.status, json.loads(resp.read())["amount"]) == (200, "100.00")
        conn.close()
    finally:
        code = gateway.terminate()
    assert code == 0 and "stopped" in gateway.output()
    assert token not in gateway.output()
