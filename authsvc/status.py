"""The one place where errors become gRPC statuses, for the TokenService and for every server
that verifies tokens with :mod:`authsvc.verify` (so it lives outside both).

A :class:`~authsvc.core.errors.ServiceError` (every OAuthError is one) becomes a status code
(DESIGN.md §2) chosen by its ``status_key``, with the error's sanitized description as the
message and a ``google.rpc.ErrorInfo`` detail whose ``reason`` is the error code in upper snake
case, whose ``domain`` is ``authsvc`` and whose ``metadata`` is the error's machine-readable
detail (:attr:`~authsvc.core.errors.ServiceError.metadata`, e.g. ``scope`` for
``INSUFFICIENT_SCOPE``, the scopes the method requires, as RFC 6750 §3's ``scope`` attribute does
over HTTP). Anything else becomes INTERNAL with a generic message; its details go to the log only.

A refusal that says when to retry (:class:`~authsvc.core.errors.RateLimited` with ``retry_after``)
also carries a ``google.rpc.RetryInfo`` detail (``retry_delay``) and the
``grpc-retry-pushback-ms`` trailer (gRPC A6), so that grpc's own retry policy and the authsvc SDK
wait at least that long.
"""

from __future__ import annotations

import collections
import inspect
import math
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from authsvc.core.errors import InvalidRequest, ServerError, ServiceError

__all__ = ["ERROR_DOMAIN", "RETRY_PUSHBACK_KEY", "STATUS_BY_ERROR", "DecodeGuard", "status_for"]

ERROR_DOMAIN = "authsvc"
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"
"""The trailer (gRPC A6, "Retry Throttling and Pushback") that tells a client when to retry."""

STATUS_BY_ERROR: dict[str, grpc.StatusCode] = {
    "invalid_client": grpc.StatusCode.UNAUTHENTICATED,
    "invalid_token": grpc.StatusCode.UNAUTHENTICATED,
    "insufficient_scope": grpc.StatusCode.PERMISSION_DENIED,
    "access_denied": grpc.StatusCode.PERMISSION_DENIED,
    "unauthorized_client": grpc.StatusCode.PERMISSION_DENIED,
    "invalid_request": grpc.StatusCode.INVALID_ARGUMENT,
    "invalid_scope": grpc.StatusCode.INVALID_ARGUMENT,
    "invalid_target": grpc.StatusCode.INVALID_ARGUMENT,
    "unsupported_grant_type": grpc.StatusCode.INVALID_ARGUMENT,
    "rate_limited": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "temporarily_unavailable": grpc.StatusCode.UNAVAILABLE,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "server_error": grpc.StatusCode.INTERNAL,
    # kinds for domain errors of services built on authsvc (ServiceError.kind)
    "invalid_argument": grpc.StatusCode.INVALID_ARGUMENT,
    "failed_precondition": grpc.StatusCode.FAILED_PRECONDITION,
    "already_exists": grpc.StatusCode.ALREADY_EXISTS,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
}


class _Status(collections.namedtuple("_Status", ("code", "details", "trailing_metadata")), grpc.Status):
    """A status with trailers of our own (``grpc_status`` builds one without them)."""


def status_for(exc: BaseException) -> grpc.Status:
    """The gRPC status (with ErrorInfo detail, and RetryInfo when the error says when to retry)
    to send for ``exc``."""
    if not isinstance(exc, ServiceError):
        exc = ServerError("internal error")
    code = STATUS_BY_ERROR.get(exc.status_key, grpc.StatusCode.INTERNAL)
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=exc.reason, domain=ERROR_DOMAIN, metadata=exc.metadata))
    details = [info]
    retry_after = getattr(exc, "retry_after", None)
    if not isinstance(retry_after, int | float) or not 0 < retry_after < math.inf:
        status: grpc.Status = rpc_status.to_status(
            status_pb2.Status(code=code.value[0], message=exc.description, details=details)
        )
        return status
    # whole milliseconds, rounded up: a caller that waits exactly this long is not refused again
    millis = max(1, math.ceil(retry_after * 1000))
    retry = any_pb2.Any()
    retry.Pack(
        error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(seconds=millis // 1000, nanos=(millis % 1000) * 1_000_000)
        )
    )
    details.append(retry)
    base = rpc_status.to_status(
        status_pb2.Status(code=code.value[0], message=exc.description, details=details)
    )
    return _Status(base.code, base.details, (*base.trailing_metadata, (RETRY_PUSHBACK_KEY, str(millis))))


class _Undecodable:
    """Stands in for a request message whose bytes did not parse."""


_UNDECODABLE = _Undecodable()


def _guarded(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError:
            return _UNDECODABLE

    return parse


class DecodeGuard(grpc.aio.ServerInterceptor):
    """Answers a unary request that is not a valid protobuf message with INVALID_ARGUMENT
    (``INVALID_REQUEST``) instead of grpc's default UNKNOWN, whose message names parser internals,
    and without an error-level traceback per request.

    Put it last in the interceptor list, nearest the handlers: it wraps each registered handler
    once and reuses the wrapper on every call.
    """

    def __init__(self) -> None:
        self._status = status_for(
            InvalidRequest("the request is not a valid protobuf message of the method's type")
        )
        self._wrapped: dict[str, tuple[object, grpc.RpcMethodHandler[Any, Any]]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            return handler
        cached = self._wrapped.get(handler_call_details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler)
        if len(self._wrapped) < 10_000:  # method names come from the wire; registered ones are few
            self._wrapped[handler_call_details.method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        status = self._status
        if handler.response_streaming:
            inner_stream: Callable[..., Any] = handler.unary_stream  # type: ignore[assignment]

            async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                if request is _UNDECODABLE:
                    await context.abort_with_status(status)
                result = inner_stream(request, context)
                if inspect.isasyncgen(result):
                    async for item in result:
                        await context.write(item)
                    return None
                return await result

            return grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=_guarded(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        inner: Callable[..., Any] = handler.unary_unary  # type: ignore[assignment]

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if request is _UNDECODABLE:
                await context.abort_with_status(status)
            result = inner(request, context)
            return await result if inspect.isawaitable(result) else result

        return grpc.unary_unary_rpc_method_handler(
            unary,
            request_deserializer=_guarded(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
