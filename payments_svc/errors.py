"""The PaymentService's domain errors. Each carries its reason code and the kind that decides its
gRPC status in the one error map, :mod:`authsvc.status`."""

from __future__ import annotations

from authsvc.core.errors import ServiceError

__all__ = [
    "DatabaseUnavailable",
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


class DatabaseUnavailable(ServiceError):
    """The payments database cannot be reached now; the request may be retried (UNAVAILABLE).
    With the same idempotency key a retried CreatePayment never charges twice."""

    error = "database_unavailable"
    kind = "unavailable"

    def __init__(
        self, description: str = "the payment service is temporarily unavailable; retry later"
    ) -> None:
        super().__init__(description)
