"""Server interceptors that verify access tokens and enforce each method's scopes.

Add one to any gRPC server::

    server = grpc.server(pool, interceptors=[AuthInterceptor(verifier)])
    server = grpc.aio.server(interceptors=[AioAuthInterceptor(verifier)])

Each RPC keeps its kind (unary or any streaming kind): the interceptor wraps the handler that
``continuation`` returns instead of replacing it. The verified caller reaches the handler through
:func:`current_principal`. A missing or bad token is UNAUTHENTICATED (``INVALID_TOKEN``); a valid
token without a required scope is PERMISSION_DENIED (``INSUFFICIENT_SCOPE``); a method with no
policy is PERMISSION_DENIED (``ACCESS_DENIED``). Tokens never reach the log.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeAlias

import grpc

from authsvc.core.errors import AccessDenied, InvalidToken, OAuthError
from authsvc.status import status_for
from authsvc.verify.jwks import WouldBlock
from authsvc.verify.policy import MethodPolicy, Public
from authsvc.verify.verifier import MAX_TOKEN_BYTES, Principal, TokenVerifier

__all__ = ["AioAuthInterceptor", "AuthInterceptor", "bearer_token", "current_principal"]

log = logging.getLogger("authsvc.verify")

_PRINCIPAL: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "authsvc_principal", default=None
)

_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
_BEHAVIORS = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


def current_principal() -> Principal:
    """The verified caller of the RPC being handled. Raises LookupError in a public method or
    outside an RPC that went through the interceptor."""
    principal = _PRINCIPAL.get()
    if principal is None:
        raise LookupError("no verified caller: the method is public or no AuthInterceptor is installed")
    return principal


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """RFC 6750 §2.1: the token of exactly one ``authorization: Bearer <token>`` entry. The scheme
    is case-insensitive; one space separates it from the token."""
    values = [value for key, value in (metadata or ()) if key == "authorization"]
    if not values:
        raise InvalidToken("no access token: send metadata authorization: Bearer <token>")
    if len(values) > 1:
        raise InvalidToken("more than one authorization metadata entry")
    value = values[0]
    if isinstance(value, bytes) or len(value) > MAX_TOKEN_BYTES + 7:
        raise InvalidToken("the authorization metadata entry is malformed or too long")
    scheme, sep, token = value.partition(" ")
    if scheme.lower() != "bearer" or not sep:
        raise InvalidToken("the authorization metadata entry is not a Bearer token")
    if not token or " " in token:
        raise InvalidToken("the Bearer token is empty or has spaces")
    return token


class _Base:
    def __init__(
        self,
        verifier: TokenVerifier,
        policy: Mapping[str, Sequence[str] | Public] | MethodPolicy | None = None,
    ) -> None:
        self.verifier = verifier
        self.policy = policy if isinstance(policy, MethodPolicy) else MethodPolicy(policy)

    def _authorize(
        self, method: str, metadata: Iterable[tuple[str, str | bytes]] | None, *, block: bool = True
    ) -> Principal | None:
        """The principal to hand to the method, None for a public method; raises OAuthError."""
        rule = self.policy.rule(method)
        if isinstance(rule, Public):
            return None
        if rule is None:
            raise AccessDenied("this method declares no authorization policy")
        token = bearer_token(metadata)
        try:
            principal = self.verifier.verify(token, block=block)
        except (OAuthError, WouldBlock):
            raise
        except Exception as exc:
            # A verifier bug must still answer a clean refusal, never UNKNOWN with a traceback.
            log.exception("token verification failed unexpectedly on %s", method)
            raise InvalidToken("the access token could not be verified") from exc
        TokenVerifier.require_scopes(principal, rule)
        return principal

    @staticmethod
    def _refusal(method: str, exc: OAuthError) -> grpc.Status:
        log.info("refused %s: %s (%s)", method, exc.error, exc.description)
        return status_for(exc)


def _rebuild(handler: _Handler, behavior: Callable[..., Any]) -> _Handler:
    _, factory = _BEHAVIORS[(handler.request_streaming, handler.response_streaming)]
    return factory(
        behavior,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _behavior(handler: _Handler) -> Callable[..., Any]:
    name, _ = _BEHAVIORS[(handler.request_streaming, handler.response_streaming)]
    behavior: Callable[..., Any] = getattr(handler, name)
    return behavior


def _bind_sync(
    behavior: Callable[..., Any], principal: Principal | None, streaming: bool
) -> Callable[..., Any]:
    """Run a synchronous behavior (and, for response streams, each step of its iterator) in a
    context where :func:`current_principal` returns ``principal``."""

    def context() -> contextvars.Context:
        ctx = contextvars.copy_context()
        ctx.run(_PRINCIPAL.set, principal)
        return ctx

    if not streaming:

        def unary(request: Any, servicer_context: grpc.ServicerContext) -> Any:
            return context().run(behavior, request, servicer_context)

        return unary

    def stream(request: Any, servicer_context: grpc.ServicerContext) -> Iterator[Any]:
        ctx = context()
        responses = ctx.run(behavior, request, servicer_context)
        while True:
            try:
                item = ctx.run(next, responses)
            except StopIteration:
                return
            yield item

    return stream


class AuthInterceptor(grpc.ServerInterceptor):
    """Token verification for ``grpc.server``. ``policy`` overrides or replaces the proto options:
    ``{"/pkg.Service/Method": ["scope:a"], "/pkg.Service/Ping": PUBLIC}``."""

    def __init__(
        self,
        verifier: TokenVerifier,
        policy: Mapping[str, Sequence[str] | Public] | MethodPolicy | None = None,
    ) -> None:
        self._base = _Base(verifier, policy)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], _Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        try:
            principal = self._base._authorize(method, handler_call_details.invocation_metadata)
        except OAuthError as exc:
            status = _Base._refusal(method, exc)

            def deny(request: Any, context: grpc.ServicerContext) -> Any:
                context.abort_with_status(status)

            return _rebuild(handler, deny)
        return _rebuild(handler, _bind_sync(_behavior(handler), principal, handler.response_streaming))


class AioAuthInterceptor(grpc.aio.ServerInterceptor):
    """Token verification for ``grpc.aio.server``; same rules as :class:`AuthInterceptor`.

    Verification runs on the event loop: a cached token costs a hash lookup, a new one one RSA
    verification (tens of microseconds). Only a key refresh for an unknown kid blocks, at most
    once per cooldown and for at most the source's timeout; call ``verifier.keys.refresh()`` at
    start-up so that the first request does not pay for the initial fetch.
    """

    def __init__(
        self,
        verifier: TokenVerifier,
        policy: Mapping[str, Sequence[str] | Public] | MethodPolicy | None = None,
    ) -> None:
        self._base = _Base(verifier, policy)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        metadata = handler_call_details.invocation_metadata
        try:
            try:
                principal = self._base._authorize(method, metadata, block=False)
            except WouldBlock:
                # the issuer's keys must be fetched first: off the event loop, so that other
                # calls go on meanwhile
                principal = await asyncio.to_thread(self._base._authorize, method, metadata)
        except OAuthError as exc:
            status = _Base._refusal(method, exc)

            async def deny(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                await context.abort_with_status(status)

            return _rebuild(handler, deny)
        behavior = _behavior(handler)
        if inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior):
            # grpc.aio runs the interceptors and an async handler in the RPC's own task, whose
            # context is a copy: the variable set here reaches this RPC's handler and nothing else,
            # and the registered handler is used as it is (no wrapper per call).
            _PRINCIPAL.set(principal)
            return handler
        # a plain function runs in an executor thread, where the task's context does not follow
        return _rebuild(handler, _bind_sync(behavior, principal, handler.response_streaming))
