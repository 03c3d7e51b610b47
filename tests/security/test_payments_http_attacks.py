"""Attacks on the PaymentService's HTTP/JSON API, one named test each, against a real server over
real sockets. Each asserts the status code and the error reason (or RFC 6750 error code), and
that nothing was charged where a charge was at stake."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TokenServer
from tests.payments.httpapi import SEED_BODY, HttpGateway, running_http_gateway

PAY = "/api/v1/payments"


@pytest.fixture
def gw(token_server: TokenServer, tmp_path: Path) -> Iterator[HttpGateway]:
    with running_http_gateway(token_server, tmp_path / "payments") as gateway:
        yield gateway


def _pay_raw(gw: HttpGateway, token: str, amount: bytes, key: str = "k") -> tuple[int, object]:
    body = b'{"amount": ' + amount + b', "currency": "USD", "payment_method": "pm_1"}'
    answer = gw.call("POST", PAY, token=token, key=key, body=body)
    return answer.status, answer.reason


def _nothing_charged(gw: HttpGateway, token: str) -> bool:
    return gw.call("GET", PAY, token=token).json["payments"] == []


def test_float_rounding_amount_literal_is_refused_not_rounded(gw: HttpGateway) -> None:
    token = gw.token("shop")
    # 0.1 + 0.2 as a float prints so; a float-based parser would charge 0.30
    assert _pay_raw(gw, token, b"0.30000000000000004") == (400, "INVALID_AMOUNT")
    assert _pay_raw(gw, token, b"1.005") == (400, "INVALID_AMOUNT")  # a float rounds it to 1.00
    assert _nothing_charged(gw, token)


@pytest.mark.parametrize(
    "amount",
    [b"1" + b"0" * 5000, b"1e999999", b"-1e999999", b"1" + b"0" * 15 + b".00", b"0." + b"0" * 5000 + b"1"],
    ids=["5000-digits", "huge-exponent", "huge-negative-exponent", "16-digit-whole", "5000-decimals"],
)
def test_huge_numbers_are_refused_as_invalid_amount(gw: HttpGateway, amount: bytes) -> None:
    token = gw.token("shop")
    assert _pay_raw(gw, token, amount) == (400, "INVALID_AMOUNT")
    assert _nothing_charged(gw, token)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_literals_are_refused(gw: HttpGateway, literal: bytes) -> None:
    token = gw.token("shop")
    assert _pay_raw(gw, token, literal) == (400, "INVALID_ARGUMENT")
    assert _nothing_charged(gw, token)


def test_duplicate_json_keys_are_refused(gw: HttpGateway) -> None:
    # parsers disagree on which duplicate wins: a validator reading the first and a charger the
    # last would charge 1000.00 for a request checked as 1.00
    token = gw.token("shop")
    body = b'{"amount": "1.00", "currency": "USD", "payment_method": "pm_1", "amount": "1000.00"}'
    answer = gw.call("POST", PAY, token=token, key="k", body=body)
    assert (answer.status, answer.reason) == (400, "INVALID_ARGUMENT")
    assert _nothing_charged(gw, token)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_over_the_cap_is_refused(gw: HttpGateway, chunked: bool) -> None:
    token = gw.token("shop")
    padding = b"x" * (64 * 1024)
    body = (
        b'{"amount": "1.00", "currency": "USD", "payment_method": "pm_1", "description": "' + padding + b'"}'
    )
    answer = gw.call("POST", PAY, token=token, key="k", body=body, chunked=chunked)
    assert (answer.status, answer.reason) == (413, "PAYLOAD_TOO_LARGE")
    assert _nothing_charged(gw, token)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", SEED_BODY),
        ("application/x-www-form-urlencoded", b"amount=100.00&currency=USD&payment_method=pm_1"),
        ("multipart/form-data; boundary=x", SEED_BODY),
        ("application/json; charset=latin-1", SEED_BODY),
        (None, SEED_BODY),
    ],
    ids=["text", "form", "multipart", "latin-1", "none"],
)
def test_a_body_that_is_not_json_is_415(gw: HttpGateway, content_type: str | None, body: bytes) -> None:
    token = gw.token("shop")
    answer = gw.call("POST", PAY, token=token, key="k", body=body, content_type=content_type)
    assert (answer.status, answer.reason) == (415, "UNSUPPORTED_MEDIA_TYPE")
    assert _nothing_charged(gw, token)


def test_path_traversal_in_transaction_id_finds_nothing(gw: HttpGateway) -> None:
    victim = gw.token("victim")
    txn = gw.pay(victim, "v-1").json["transaction_id"]
    attacker = gw.token("attacker")
    for path in (
        f"{PAY}/..%2F..%2F{txn}",
        f"{PAY}/{txn}%2F..%2F..",
        f"{PAY}/..%2Fvictim%2F{txn}",
        f"{PAY}/%2e%2e",
        f"{PAY}/{txn}%00",
    ):
        answer = gw.call("GET", path, token=attacker)
        assert (answer.status, answer.reason) == (404, "PAYMENT_NOT_FOUND"), path
    for path in (f"{PAY}/../{PAY[1:]}/{txn}", f"{PAY}/./{txn}", f"{PAY}/{txn}/..", f"{PAY}//{txn}"):
        answer = gw.call("GET", path, token=attacker)
        assert (answer.status, answer.reason) == (404, "NOT_FOUND"), path


def test_another_clients_payment_can_be_neither_read_nor_refunded(gw: HttpGateway) -> None:
    victim = gw.token("victim")
    created = gw.pay(victim, "v-1").json
    txn = created["transaction_id"]
    attacker = gw.token("attacker")
    got = gw.call("GET", f"{PAY}/{txn}", token=attacker)
    refund = gw.call("POST", f"{PAY}/{txn}/refunds", token=attacker, key="r")
    assert (got.status, got.reason, refund.status, refund.reason) == (
        404,
        "PAYMENT_NOT_FOUND",
        404,
        "PAYMENT_NOT_FOUND",
    )
    assert gw.call("GET", f"{PAY}/{txn}", token=victim).json == created


def test_a_token_in_the_query_string_is_not_accepted(gw: HttpGateway) -> None:
    token = gw.token("shop")
    alone = gw.call("GET", f"{PAY}?access_token={token}")
    assert (alone.status, alone.error) == (400, "invalid_request")
    assert 'error="invalid_request"' in alone.challenge
    both = gw.call("GET", f"{PAY}?access_token={token}", token=token)
    assert (both.status, both.error) == (400, "invalid_request")


def test_a_token_in_a_form_body_is_not_accepted(gw: HttpGateway) -> None:
    token = gw.token("shop")
    body = f"access_token={token}&amount=1.00&currency=USD&payment_method=pm_1".encode()
    answer = gw.call("POST", PAY, key="k", body=body, content_type="application/x-www-form-urlencoded")
    assert (answer.status, answer.error, answer.challenge) == (401, "invalid_token", "Bearer")


def test_a_second_authorization_header_is_refused(gw: HttpGateway) -> None:
    mine = gw.token("shop")
    other = gw.token("other")
    for extra in (f"Bearer {other}", f"Bearer {mine}", "Basic c2hvcDpzZWNyZXQ="):
        answer = gw.call("POST", PAY, token=mine, key="k", body=SEED_BODY, headers=[("Authorization", extra)])
        assert (answer.status, answer.error) == (400, "invalid_request"), extra
    assert _nothing_charged(gw, mine) and _nothing_charged(gw, other)


def test_alg_none_token_is_refused(gw: HttpGateway) -> None:
    # {"alg":"none","typ":"at+jwt"}.{"sub":"shop","scope":"payments:write",...}. (no signature)
    forged = (
        "eyJhbGciOiJub25lIiwidHlwIjoiYXQrand0In0."
        "eyJpc3MiOiJodHRwczovL2F1dGgudGVzdCIsInN1YiI6InNob3AiLCJhdWQiOiJwYXltZW50cyIsImNsaWVudF9pZCI6"
        "InNob3AiLCJzY29wZSI6InBheW1lbnRzOndyaXRlIiwiZXhwIjo0MTAyNDQ0ODAwLCJpYXQiOjAsIm5iZiI6MCwianRp"
        "IjoieCJ9."
    )
    answer = gw.call("POST", PAY, token=forged, key="k", body=SEED_BODY)
    assert (answer.status, answer.error) == (401, "invalid_token")
    assert answer.challenge.startswith('Bearer error="invalid_token"')


@pytest.mark.parametrize(
    "field",
    [b'"client_id": "victim"', b'"status": "refunded"', b'"transaction_id": "txn_' + b"0" * 24 + b'"',
     b'"idempotency_key": "k2"', b'"Amount": "5.00"'],
    ids=["client_id", "status", "transaction_id", "idempotency_key-in-body", "case-variant"],
)  # fmt: skip
def test_unknown_or_foreign_json_fields_are_refused(gw: HttpGateway, field: bytes) -> None:
    # mass assignment: a caller must not set who owns a payment, its status or its id
    token = gw.token("shop")
    body = b'{"amount": "1.00", "currency": "USD", "payment_method": "pm_1", ' + field + b"}"
    answer = gw.call("POST", PAY, token=token, key="k", body=body)
    assert (answer.status, answer.reason) == (400, "INVALID_ARGUMENT")
    assert _nothing_charged(gw, token)


def test_a_path_bound_field_in_the_refund_body_is_refused(gw: HttpGateway) -> None:
    victim = gw.token("victim")
    theirs = gw.pay(victim, "v-1").json["transaction_id"]
    token = gw.token("shop")
    mine = gw.pay(token, "s-1").json["transaction_id"]
    body = b'{"transaction_id": "' + str(theirs).encode() + b'"}'
    answer = gw.call("POST", f"{PAY}/{mine}/refunds", token=token, key="r", body=body)
    assert (answer.status, answer.reason) == (400, "INVALID_ARGUMENT")
    assert gw.call("GET", f"{PAY}/{theirs}", token=victim).json["refunded_amount"] == "0.00"


def test_two_idempotency_key_headers_are_refused(gw: HttpGateway) -> None:
    token = gw.token("shop")
    answer = gw.call("POST", PAY, token=token, key="k1", body=SEED_BODY, headers=[("Idempotency-Key", "k2")])
    assert (answer.status, answer.reason) == (400, "INVALID_ARGUMENT")
    assert _nothing_charged(gw, token)


def test_deeply_nested_json_is_refused_cleanly(gw: HttpGateway) -> None:
    token = gw.token("shop")
    body = b'{"amount": ' + b"[" * 30000 + b"]" * 30000 + b', "currency": "USD"}'
    answer = gw.call("POST", PAY, token=token, key="k", body=body)
    assert (answer.status, answer.reason) == (400, "INVALID_ARGUMENT")
    assert gw.call("GET", PAY, token=token).status == 200, "the server still answers"


def test_invalid_unicode_in_the_body_is_refused(gw: HttpGateway) -> None:
    token = gw.token("shop")
    for body in (
        b'{"amount": "1.00", "currency": "USD", "payment_method": "pm_1", "description": "\\ud800"}',
        b'{"amount": "1.00", "currency": "USD", "payment_method": "pm_1", "description": "\xff"}',
        b'\xef\xbb\xbf{"amount": "1.00", "currency": "USD", "payment_method": "pm_1"}',
    ):
        answer = gw.call("POST", PAY, token=token, key="k", body=body)
        assert (answer.status, answer.reason) == (400, "INVALID_ARGUMENT"), body
    assert _nothing_charged(gw, token)
