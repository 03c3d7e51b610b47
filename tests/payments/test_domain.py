"""payments_svc.domain: CreatePayment validation, request fingerprints and refund rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from payments_svc.domain import CreatePayment, Payment, PaymentStatus, apply_refund, validate_idempotency_key
from payments_svc.errors import InvalidAmount, InvalidArgument, RefundExceedsBalance
from payments_svc.money import format_minor

GOOD: dict[str, str] = {
    "amount": "100.00",
    "currency": "USD",
    "payment_method": "pm_card_visa",
    "description": "Order #1",
    "idempotency_key": "order-1",
}


def create(**overrides: str) -> CreatePayment:
    fields = {**GOOD, **overrides}
    return CreatePayment.parse(
        amount=fields["amount"],
        currency=fields["currency"],
        payment_method=fields["payment_method"],
        description=fields["description"],
        idempotency_key=fields["idempotency_key"],
    )


def test_valid_request() -> None:
    req = create()
    assert (req.amount.minor, req.amount.currency) == (10000, "USD")
    assert (req.payment_method, req.description, req.idempotency_key) == (
        "pm_card_visa",
        "Order #1",
        "order-1",
    )


@pytest.mark.parametrize(
    "method",
    ["pm_card_visa", "m" * 64, "tok_4242", "pm_4242424242424242"],
    ids=["token", "64-chars", "short-digits", "prefixed-token"],
)
def test_payment_method_accepted(method: str) -> None:
    assert create(payment_method=method).payment_method == method


@pytest.mark.parametrize(
    "method",
    [
        "",
        "m" * 65,
        "pm card",
        "pm_caf\u00e9",
        "pm_\u0663",
        "pm\tcard",
        "4242424242424242",
        "4242 4242 4242 4242",
        "4242-4242-4242-4242",
        "378282246310005",
    ],
    ids=[
        "empty",
        "65-chars",
        "space",
        "non-ascii",
        "non-ascii-digit",
        "tab",
        "card-number",
        "card-number-spaced",
        "card-number-dashed",
        "amex-number",
    ],
)
def test_payment_method_refused(method: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        create(payment_method=method)
    assert info.value.error == "invalid_argument"


@pytest.mark.parametrize(
    "description",
    ["", "d" * 500, "Caf\u00e9 \u2615 order"],
    ids=["empty", "500-chars", "unicode"],
)
def test_description_accepted(description: str) -> None:
    assert create(description=description).description == description


@pytest.mark.parametrize(
    "description",
    [
        "line\nbreak",
        "carriage\rreturn",
        "nul\x00byte",
        "d" * 501,
        "tab\tinside",
        "line\u2028separator",
        "next\x85line",
        "ansi\x1b[31mred",
        "rtl\u202eoverride",
        "zero\u200bwidth",
    ],
    ids=[
        "newline",
        "carriage-return",
        "nul",
        "501-chars",
        "tab",
        "line-separator",
        "nel",
        "ansi-escape",
        "rtl-override",
        "zero-width-space",
    ],
)
def test_description_refused(description: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        create(description=description)
    assert info.value.error == "invalid_argument"


@pytest.mark.parametrize(
    "key", ["k", "k" * 255, "!~ascii-printable~!"], ids=["one-char", "255-chars", "punctuation"]
)
def test_idempotency_key_accepted(key: str) -> None:
    assert create(idempotency_key=key).idempotency_key == key
    assert validate_idempotency_key(key) == key


@pytest.mark.parametrize(
    "key",
    ["", "k" * 256, "with space", "new\nline", "nul\x00", "del\x7f", "caf\u00e9"],
    ids=["empty", "256-chars", "space", "newline", "nul", "del", "non-ascii"],
)
def test_idempotency_key_refused(key: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        create(idempotency_key=key)
    assert info.value.error == "invalid_argument"


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [("amount", "1.001", InvalidAmount), ("currency", "usd", InvalidArgument)],
    ids=["amount", "currency"],
)
def test_money_errors_are_invalid_arguments(field: str, value: str, error: type[InvalidArgument]) -> None:
    with pytest.raises(error):
        create(**{field: value})


def test_fingerprint_equal_for_equal_requests() -> None:
    assert create().fingerprint() == create().fingerprint()
    assert create(amount="100").fingerprint() == create(amount="100.00").fingerprint()  # same minor units


def test_fingerprint_ignores_the_key() -> None:
    assert create(idempotency_key="other").fingerprint() == create().fingerprint()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("amount", "100.01"),
        ("currency", "EUR"),
        ("payment_method", "pm_card_mastercard"),
        ("description", "Order #2"),
        ("description", ""),
    ],
    ids=["amount", "currency", "method", "description", "empty-description"],
)
def test_fingerprint_differs(field: str, value: str) -> None:
    assert create(**{field: value}).fingerprint() != create().fingerprint()


def test_fingerprint_fields_do_not_run_together() -> None:
    a = create(payment_method="pm_a", description="b c")
    b = create(payment_method="pm_ab", description=" c")
    assert a.fingerprint() != b.fingerprint()


def payment(amount_minor: int = 10000, currency: str = "USD", refunded_minor: int = 0) -> Payment:
    return Payment(
        transaction_id="tx_1",
        client_id="shop",
        status=PaymentStatus.SUCCEEDED,
        amount_minor=amount_minor,
        refunded_minor=refunded_minor,
        currency=currency,
        payment_method="pm_card_visa",
        description="",
        create_time_us=1,
    )


def test_partial_refunds_add_up() -> None:
    p = payment()
    p, minor = apply_refund(p, "30.00")
    assert (minor, p.refunded_minor, p.status) == (3000, 3000, PaymentStatus.PARTIALLY_REFUNDED)
    assert p.refunded_amount == "30.00"
    p, minor = apply_refund(p, "20.5")
    assert (minor, p.refunded_minor, p.status) == (2050, 5050, PaymentStatus.PARTIALLY_REFUNDED)
    assert p.refundable_minor == 4950
    p, minor = apply_refund(p, "49.50")
    assert (minor, p.refunded_minor, p.status) == (4950, 10000, PaymentStatus.REFUNDED)
    assert p.refundable_minor == 0


def test_empty_amount_refunds_the_rest() -> None:
    p, _ = apply_refund(payment(), "25.00")
    p, minor = apply_refund(p, "")
    assert (minor, p.refunded_minor, p.status) == (7500, 10000, PaymentStatus.REFUNDED)


def test_full_refund_in_one_go() -> None:
    p, minor = apply_refund(payment(), "")
    assert (minor, p.status) == (10000, PaymentStatus.REFUNDED)


def test_refund_more_than_left() -> None:
    p, _ = apply_refund(payment(), "60.00")
    with pytest.raises(RefundExceedsBalance) as info:
        apply_refund(p, "40.01")
    assert info.value.error == "refund_exceeds_balance"


@pytest.mark.parametrize("amount", ["", "0.01", "100.00"], ids=["rest", "one-cent", "whole"])
def test_refund_of_fully_refunded_payment(amount: str) -> None:
    p, _ = apply_refund(payment(), "")
    with pytest.raises(RefundExceedsBalance):
        apply_refund(p, amount)


@pytest.mark.parametrize(
    ("amount", "currency"),
    [("1.001", "USD"), ("1.5", "JPY"), ("0", "USD"), ("-1.00", "USD"), ("1e2", "USD")],
    ids=["usd-three-places", "jpy-fraction", "zero", "negative", "exponent"],
)
def test_refund_invalid_amount(amount: str, currency: str) -> None:
    with pytest.raises(InvalidAmount):
        apply_refund(payment(amount_minor=10000, currency=currency), amount)


def test_apply_refund_does_not_mutate() -> None:
    p = payment()
    apply_refund(p, "1.00")
    assert (p.refunded_minor, p.status) == (0, PaymentStatus.SUCCEEDED)


@given(
    st.sampled_from(["USD", "JPY", "BHD"]),
    st.integers(min_value=1, max_value=10**9),
    st.lists(st.one_of(st.none(), st.integers(min_value=1, max_value=10**9)), max_size=12),
)
def test_refunds_never_exceed_amount(currency: str, amount_minor: int, refunds: list[int | None]) -> None:
    """None is an empty amount (refund the rest); integers are partial refunds in minor units."""
    p = payment(amount_minor=amount_minor, currency=currency)
    for r in refunds:
        text = "" if r is None else format_minor(r, currency)
        before = p
        if before.refundable_minor == 0 or (r is not None and r > before.refundable_minor):
            with pytest.raises(RefundExceedsBalance):
                apply_refund(before, text)
            continue
        p, minor = apply_refund(before, text)
        assert minor == (before.refundable_minor if r is None else r)
        assert p.refunded_minor == before.refunded_minor + minor
        assert 0 < p.refunded_minor <= p.amount_minor
        expected = (
            PaymentStatus.REFUNDED if p.refunded_minor == p.amount_minor else PaymentStatus.PARTIALLY_REFUNDED
        )
        assert p.status == expected
