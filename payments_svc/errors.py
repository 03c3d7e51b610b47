"""The PaymentService's domain errors. Each carries its reason code and the kind that decides its
gRPC status in the one error map, :mod:`authsvc.status`."""

from __future__ import annotations

from authsvc.core.errors import ServiceError

__all__ = [
    "IdempotencyKeyReused",
    "InvalidAmount",
    "InvalidArgument",
    "InvalidCurrency",
    "PaymentNotFound",
    "RefundExceedsBalance",
]


class InvalidArgument(ServiceError):
    error = "invalid_argument"
    kind = "invalid_argument"


class InvalidAmount(InvalidArgument):
    error = "invalid_amount"


class InvalidCurrency(InvalidArgument):
    error = "invalid_currency"


class PaymentNotFound(ServiceError):
    """No payment with this id belongs to the caller (another client's payment included)."""

    error = "payment_not_found"
    kind = "not_found"


class IdempotencyKeyReused(ServiceError):
    """The idempotency key was used before for a different request."""

    error = "idempotency_key_reused"
    kind = "failed_precondition"


class RefundExceedsBalance(ServiceError):
    error = "refund_exceeds_balance"
    kind = "failed_precondition"
