"""The operations of ``payments_svc.v1.PaymentService``, and its gRPC servicer.

:class:`PaymentOperations` is the service itself, transport-free: one coroutine per RPC, named
after it in snake case, taking the request message and returning the response message, raising
:class:`~authsvc.core.errors.ServiceError` for a refusal. Both edges call it and only translate:
:class:`PaymentServicer` (gRPC, errors through :mod:`authsvc.status`) and
:mod:`payments_svc.http` (HTTP/JSON, errors through :mod:`authsvc.httpstatus`).

Authorization happened before any of this runs: the edge verified the token and the scope the
proto declares for the method, and :func:`current_principal` names the caller. A client sees only
its own payments: every query is by (client_id, ...), and another client's payment is simply not
found.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import timestamp_pb2

from authsvc.core.errors import ServiceError
from authsvc.core.ports import Clock, RandomSource
from authsvc.status import status_for
from authsvc.verify import current_principal
from payments_svc.domain import CreatePayment, Payment, PaymentStatus, validate_idempotency_key
from payments_svc.errors import InvalidArgument, PaymentNotFound
from payments_svc.store import SqlPaymentStore
from payments_svc.v1 import payments_pb2, payments_pb2_grpc

__all__ = ["PaymentOperations", "PaymentServicer", "payment_to_proto"]

log = logging.getLogger("payments_svc")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
_TXN = re.compile(r"txn_[0-9a-f]{24}")
_STATUS = {
    PaymentStatus.SUCCEEDED: payments_pb2.PAYMENT_STATUS_SUCCEEDED,
    PaymentStatus.PARTIALLY_REFUNDED: payments_pb2.PAYMENT_STATUS_PARTIALLY_REFUNDED,
    PaymentStatus.REFUNDED: payments_pb2.PAYMENT_STATUS_REFUNDED,
}

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]]


def payment_to_proto(p: Payment) -> payments_pb2.Payment:
    return payments_pb2.Payment(
        transaction_id=p.transaction_id,
        status=_STATUS[p.status],
        amount=p.amount,
        currency=p.currency,
        payment_method=p.payment_method,
        description=p.description,
        client_id=p.client_id,
        refunded_amount=p.refunded_amount,
        create_time=timestamp_pb2.Timestamp(
            seconds=p.create_time_us // 1_000_000, nanos=(p.create_time_us % 1_000_000) * 1000
        ),
    )


def _rpc(method: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Turn domain errors into statuses through the one map; anything else is INTERNAL."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> Resp:
        try:
            return await method(self, request, context)
        except ServiceError as exc:
            log.info("%s refused: %s", method.__name__, exc.error)
            await context.abort_with_status(status_for(exc))
            raise AssertionError("unreachable") from exc
        except Exception as exc:
            log.exception("%s failed", method.__name__)
            await context.abort_with_status(status_for(exc))
            raise AssertionError("unreachable") from exc

    return wrapper


def _encode_cursor(p: Payment) -> str:
    return base64.urlsafe_b64encode(json.dumps([p.create_time_us, p.transaction_id]).encode()).decode()


def _decode_cursor(token: str) -> tuple[int, str] | None:
    if not token:
        return None
    if len(token) > 256:  # ours are under 80 characters
        raise InvalidArgument("page_token is not one this service issued")
    try:
        value = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
    except (ValueError, UnicodeError, binascii.Error, RecursionError) as exc:
        raise InvalidArgument("page_token is not one this service issued") from exc
    if (
        not isinstance(value, list)
        or len(value) != 2
        or isinstance(value[0], bool)
        or not isinstance(value[0], int)
        or not 0 <= value[0] < 2**63
        or not isinstance(value[1], str)
        or not _TXN.fullmatch(value[1])
    ):
        raise InvalidArgument("page_token is not one this service issued")
    return value[0], value[1]


def _transaction_id(value: str) -> str:
    if not _TXN.fullmatch(value):
        raise PaymentNotFound("no such payment")
    return value


class PaymentOperations:
    """The PaymentService's operations, for any edge. Store calls run in worker threads: a durable
    commit waits for the disk, not the loop."""

    def __init__(self, store: SqlPaymentStore, *, clock: Clock, random: RandomSource) -> None:
        self._store = store
        self._clock = clock
        self._random = random

    def _now_us(self) -> int:
        return int(self._clock.now() * 1_000_000)

    def _new_id(self, prefix: str) -> str:
        return prefix + self._random.token_bytes(12).hex()

    async def create_payment(
        self, request: payments_pb2.CreatePaymentRequest
    ) -> payments_pb2.CreatePaymentResponse:
        caller = current_principal()
        create = CreatePayment.parse(
            amount=request.amount,
            currency=request.currency,
            payment_method=request.payment_method,
            description=request.description,
            idempotency_key=request.idempotency_key,
        )
        payment = await asyncio.to_thread(
            self._store.create,
            caller.client_id,
            create,
            transaction_id=self._new_id("txn_"),
            now_us=self._now_us(),
        )
        log.info(
            "payment %s for %s: %s %s (jti=%s)",
            payment.transaction_id,
            caller.client_id,
            payment.amount,
            payment.currency,
            caller.jti,
        )
        return payments_pb2.CreatePaymentResponse(payment=payment_to_proto(payment))

    async def get_payment(self, request: payments_pb2.GetPaymentRequest) -> payments_pb2.GetPaymentResponse:
        caller = current_principal()
        payment = await asyncio.to_thread(
            self._store.get, caller.client_id, _transaction_id(request.transaction_id)
        )
        return payments_pb2.GetPaymentResponse(payment=payment_to_proto(payment))

    async def list_payments(
        self, request: payments_pb2.ListPaymentsRequest
    ) -> payments_pb2.ListPaymentsResponse:
        caller = current_principal()
        if request.page_size < 0:
            raise InvalidArgument("page_size must not be negative")
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        cursor = _decode_cursor(request.page_token)
        page = await asyncio.to_thread(self._store.list, caller.client_id, limit=size + 1, before=cursor)
        more = len(page) > size
        page = page[:size]
        return payments_pb2.ListPaymentsResponse(
            payments=[payment_to_proto(p) for p in page],
            next_page_token=_encode_cursor(page[-1]) if more else "",
        )

    async def refund_payment(
        self, request: payments_pb2.RefundPaymentRequest
    ) -> payments_pb2.RefundPaymentResponse:
        caller = current_principal()
        # required, as for CreatePayment: a refund retried without one would refund twice
        key = validate_idempotency_key(request.idempotency_key)
        payment = await asyncio.to_thread(
            self._store.refund,
            caller.client_id,
            _transaction_id(request.transaction_id),
            request.amount,
            idempotency_key=key,
            refund_id=self._new_id("rf_"),
            now_us=self._now_us(),
        )
        log.info(
            "refund on %s for %s: now %s of %s %s refunded (jti=%s)",
            payment.transaction_id,
            caller.client_id,
            payment.refunded_amount,
            payment.amount,
            payment.currency,
            caller.jti,
        )
        return payments_pb2.RefundPaymentResponse(payment=payment_to_proto(payment))


class PaymentServicer(payments_pb2_grpc.PaymentServiceServicer):
    """The gRPC edge: each RPC calls its operation; a refusal becomes a status through the one map."""

    def __init__(self, operations: PaymentOperations) -> None:
        self._ops = operations

    @_rpc
    async def CreatePayment(  # noqa: N802
        self, request: payments_pb2.CreatePaymentRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> payments_pb2.CreatePaymentResponse:
        return await self._ops.create_payment(request)

    @_rpc
    async def GetPayment(  # noqa: N802
        self, request: payments_pb2.GetPaymentRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> payments_pb2.GetPaymentResponse:
        return await self._ops.get_payment(request)

    @_rpc
    async def ListPayments(  # noqa: N802
        self, request: payments_pb2.ListPaymentsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> payments_pb2.ListPaymentsResponse:
        return await self._ops.list_payments(request)

    @_rpc
    async def RefundPayment(  # noqa: N802
        self, request: payments_pb2.RefundPaymentRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> payments_pb2.RefundPaymentResponse:
        return await self._ops.refund_payment(request)
