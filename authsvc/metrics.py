"""Prometheus metrics of one server, shared by both services (the TokenService and the
PaymentService); imports no server code.

Each server has its own :class:`~prometheus_client.CollectorRegistry`, never the process-wide
default one, so that tests and several servers in one process do not collide.

gRPC server metrics use the names of go-grpc-prometheus, so that its dashboards and alerts work
as they are: ``grpc_server_started_total``, ``grpc_server_handled_total`` (with ``grpc_code``) and
the ``grpc_server_handling_seconds`` histogram, labelled by ``grpc_type`` (``unary``,
``client_stream``, ``server_stream``, ``bidi_stream``), ``grpc_service`` and ``grpc_method``. Codes
are spelled as Go spells them (``OK``, ``Unauthenticated``, ``InvalidArgument``, ...). Label
cardinality is bounded: a method is counted only when a handler is registered for it (a call to
an unknown method is not counted under the name the caller chose), and no label ever carries a
client id, a jti or anything else a caller controls beyond the registered method.

Domain metrics (:class:`TokenMetrics`): ``authsvc_tokens_issued_total`` and
``authsvc_tokens_refused_total{error}``, the error being the OAuth error code (a bounded set).
:class:`RateLimitMetrics`: ``authsvc_rate_limited_total{limit}``, requests refused by a rate
limit, ``limit`` being ``client``, ``peer`` or ``failed_auth`` (never the client or the address).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from authsvc.core import errors as _errors

__all__ = [
    "GrpcMetrics",
    "MetricsInterceptor",
    "RateLimitMetrics",
    "ServerMetrics",
    "TokenMetrics",
    "grpc_code_name",
]

# grpc.StatusCode -> the Go spelling (codes.Code.String()) that go-grpc-prometheus uses
_GO_CODES = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}
_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def grpc_code_name(code: object) -> str:
    """The go-grpc-prometheus label value of a status code (a ``grpc.StatusCode``, its number,
    or None for OK)."""
    if code is None:
        return "OK"
    if isinstance(code, int):
        code = _BY_NUMBER.get(code, grpc.StatusCode.UNKNOWN)
    return _GO_CODES.get(code, "Unknown") if isinstance(code, grpc.StatusCode) else "Unknown"


class GrpcMetrics:
    """The go-grpc-prometheus server metrics, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("grpc_type", "grpc_service", "grpc_method")
        self.started = Counter(
            "grpc_server_started_total",
            "Total number of RPCs started on the server.",
            labels,
            registry=registry,
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            (*labels, "grpc_code"),
            registry=registry,
        )
        self.handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level "
            "handled by the server.",
            labels,
            registry=registry,
        )


def _rpc_type(handler: grpc.RpcMethodHandler[Any, Any]) -> str:
    if handler.request_streaming:
        return "bidi_stream" if handler.response_streaming else "client_stream"
    return "server_stream" if handler.response_streaming else "unary"


class _Method:
    """The label children of one registered method, resolved once."""

    __slots__ = ("handled", "labels", "metrics", "seconds", "started")

    def __init__(self, metrics: GrpcMetrics, rpc_type: str, full_method: str) -> None:
        service, _, method = full_method.lstrip("/").rpartition("/")
        self.metrics = metrics
        self.labels = (rpc_type, service, method)
        self.started = metrics.started.labels(*self.labels)
        self.seconds = metrics.handling_seconds.labels(*self.labels)
        self.handled: dict[str, Any] = {}

    def done(self, code: str, started: float) -> None:
        child = self.handled.get(code)
        if child is None:  # at most one per status code: 17
            child = self.handled[code] = self.metrics.handled.labels(*self.labels, code)
        child.inc()
        self.seconds.observe(time.perf_counter() - started)


def _outcome(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException | None) -> str:
    """The status code a call ended with: the code set on the context (by ``abort`` or
    ``set_code``), else OK; UNKNOWN for an unexpected exception, as grpc answers it."""
    if isinstance(exc, asyncio.CancelledError):
        return "Canceled"
    code = context.code()
    if code is not None:
        return grpc_code_name(code)
    if exc is not None and not isinstance(exc, grpc.aio.AbortError):
        return "Unknown"
    return "OK"


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every RPC (each kind) of a ``grpc.aio`` server into :class:`GrpcMetrics`.

    Install it first in the interceptor list, so that calls refused by the interceptors after it
    (authentication) are counted with their codes. It wraps the handler ``continuation`` returns,
    whatever those interceptors made of it, and keeps its RPC kind."""

    def __init__(self, metrics: GrpcMetrics) -> None:
        self._metrics = metrics
        self._methods: dict[tuple[str, str], _Method] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:  # no such method: not counted under a name the caller chose
            return None
        rpc_type = _rpc_type(handler)
        key = (rpc_type, handler_call_details.method)
        method = self._methods.get(key)
        if method is None:  # only registered methods get here: a bounded set
            method = self._methods[key] = _Method(self._metrics, rpc_type, handler_call_details.method)
        return _wrap(handler, method)


def _wrap(handler: grpc.RpcMethodHandler[Any, Any], method: _Method) -> grpc.RpcMethodHandler[Any, Any]:
    deserialize, serialize = handler.request_deserializer, handler.response_serializer
    if handler.response_streaming:
        inner_stream: Callable[..., Any] = (
            handler.stream_stream if handler.request_streaming else handler.unary_stream  # type: ignore[assignment]
        )

        async def streaming(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            method.started.inc()
            started = time.perf_counter()
            failure: BaseException | None = None
            try:
                result = inner_stream(request, context)
                if inspect.isasyncgen(result):
                    async for item in result:
                        await context.write(item)
                elif inspect.isawaitable(result):
                    await result
                elif result is not None:
                    for item in result:
                        await context.write(item)
            except BaseException as exc:
                failure = exc
                raise
            finally:
                method.done(_outcome(context, failure), started)

        if handler.request_streaming:
            return grpc.stream_stream_rpc_method_handler(
                streaming, request_deserializer=deserialize, response_serializer=serialize
            )
        return grpc.unary_stream_rpc_method_handler(
            streaming, request_deserializer=deserialize, response_serializer=serialize
        )
    inner: Callable[..., Any] = (
        handler.stream_unary if handler.request_streaming else handler.unary_unary  # type: ignore[assignment]
    )

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        method.started.inc()
        started = time.perf_counter()
        failure: BaseException | None = None
        try:
            result = inner(request, context)
            return await result if inspect.isawaitable(result) else result
        except BaseException as exc:
            failure = exc
            raise
        finally:
            method.done(_outcome(context, failure), started)

    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(
            unary, request_deserializer=deserialize, response_serializer=serialize
        )
    return grpc.unary_unary_rpc_method_handler(
        unary, request_deserializer=deserialize, response_serializer=serialize
    )


def _oauth_error_codes() -> frozenset[str]:
    codes: set[str] = set()
    pending: list[type] = [_errors.ServiceError]
    while pending:
        cls = pending.pop()
        code = getattr(cls, "error", None)
        if isinstance(code, str):
            codes.add(code)
        pending.extend(cls.__subclasses__())
    return frozenset(codes)


class TokenMetrics:
    """``authsvc_tokens_issued_total`` and ``authsvc_tokens_refused_total{error}``; what
    :class:`~authsvc.authority.tokens.TokenIssuer` calls (it imports no prometheus code)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._issued = Counter("authsvc_tokens_issued_total", "Access tokens issued.", registry=registry)
        self._refused = Counter(
            "authsvc_tokens_refused_total",
            "Token requests refused, by OAuth error code.",
            ("error",),
            registry=registry,
        )
        self._codes = _oauth_error_codes()
        for code in sorted(self._codes):  # every series exists from the start, at zero
            self._refused.labels(code)

    def token_issued(self) -> None:
        self._issued.inc()

    def token_refused(self, error: str) -> None:
        # the codes are the core's own; anything else is folded, never a new series per value
        self._refused.labels(error if error in self._codes else "other").inc()


class RateLimitMetrics:
    """``authsvc_rate_limited_total{limit}``: what :class:`~authsvc.authority.ratelimit.RateLimits`
    calls for each refusal."""

    LIMITS = ("client", "peer", "failed_auth")

    def __init__(self, registry: CollectorRegistry) -> None:
        self._refused = Counter(
            "authsvc_rate_limited_total",
            "Requests refused by a rate limit, by limit (client, peer, failed_auth).",
            ("limit",),
            registry=registry,
        )
        self._children = {limit: self._refused.labels(limit) for limit in self.LIMITS}  # from zero

    def rate_limited(self, limit: str) -> None:
        child = self._children.get(limit)  # the limits are the code's own: never a new series
        if child is not None:
            child.inc()


class ServerMetrics:
    """Everything one server exposes on ``/metrics``: its own registry, the gRPC metrics and the
    interceptor that fills them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.grpc = GrpcMetrics(self.registry)
        self.interceptor = MetricsInterceptor(self.grpc)

    def tokens(self) -> TokenMetrics:
        return TokenMetrics(self.registry)

    def rate_limits(self) -> RateLimitMetrics:
        return RateLimitMetrics(self.registry)
