"""Payments and the rules for creating and refunding them. Pure: no gRPC, no SQL, no clock."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, replace
from enum import StrEnum

from payments_svc.errors import InvalidArgument, RefundExceedsBalance
from payments_svc.money import Money, format_minor, parse_amount

__all__ = [
    "CreatePayment",
    "Payment",
    "PaymentStatus",
    "apply_refund",
    "validate_idempotency_key",
]

_PRINTABLE = re.compile(r"[\x21-\x7e]+")
_CARD_NUMBER = re.compile(r"[0-9][0-9 -]{11,22}[0-9]")
MAX_DESCRIPTION = 500
# control, format (bidi overrides, zero-width), surrogate, private-use, unassigned, line and
# paragraph separators: nothing that can break a log line or spoof a dashboard
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


class PaymentStatus(StrEnum):
    SUCCEEDED = "succeeded"
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"


def validate_idempotency_key(key: str) -> str:
    if not key:
        raise InvalidArgument("idempotency_key is required: a retry must not charge or refund twice")
    if len(key) > 255 or not _PRINTABLE.fullmatch(key):
        raise InvalidArgument("idempotency_key is 1 to 255 printable ASCII characters")
    return key


@dataclass(frozen=True, slots=True)
class CreatePayment:
    """A validated CreatePayment request."""

    amount: Money
    payment_method: str
    description: str
    idempotency_key: str

    @classmethod
    def parse(
        cls, *, amount: str, currency: str, payment_method: str, description: str, idempotency_key: str
    ) -> CreatePayment:
        money = Money(parse_amount(amount, currency), currency)
        if not payment_method or len(payment_method) > 64 or not _PRINTABLE.fullmatch(payment_method):
            raise InvalidArgument("payment_method is a token of 1 to 64 printable ASCII characters")
        if _CARD_NUMBER.fullmatch(payment_method):
            raise InvalidArgument("payment_method must be a payment method token, never a card number")
        if len(description) > MAX_DESCRIPTION or any(
            unicodedata.category(c) in _UNPRINTABLE for c in description
        ):
            raise InvalidArgument(f"description is at most {MAX_DESCRIPTION} characters on one line")
        return cls(money, payment_method, description, validate_idempotency_key(idempotency_key))

    def fingerprint(self) -> str:
        """What makes two requests "the same" for idempotency: everything but the key."""
        canonical = json.dumps(
            [self.amount.minor, self.amount.currency, self.payment_method, self.description],
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Payment:
    transaction_id: str
    client_id: str
    status: PaymentStatus
    amount_minor: int
    refunded_minor: int
    currency: str
    payment_method: str
    description: str
    create_time_us: int

    @property
    def amount(self) -> str:
        return format_minor(self.amount_minor, self.currency)

    @property
    def refunded_amount(self) -> str:
        return format_minor(self.refunded_minor, self.currency)

    @property
    def refundable_minor(self) -> int:
        return self.amount_minor - self.refunded_minor


def apply_refund(payment: Payment, amount: str) -> tuple[Payment, int]:
    """The payment after refunding ``amount`` (all that is left when empty), and the minor units
    refunded. Partial refunds add up; never more than what is left."""
    if payment.refundable_minor == 0:
        raise RefundExceedsBalance("the payment is refunded in full already")
    minor = payment.refundable_minor if amount == "" else parse_amount(amount, payment.currency)
    if minor > payment.refundable_minor:
        left = format_minor(payment.refundable_minor, payment.currency)
        raise RefundExceedsBalance(f"only {left} {payment.currency} is left to refund")
    refunded = payment.refunded_minor + minor
    status = PaymentStatus.REFUNDED if refunded == payment.amount_minor else PaymentStatus.PARTIALLY_REFUNDED
    return replace(payment, refunded_minor=refunded, status=status), minor
