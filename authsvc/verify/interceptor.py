"""Server interceptors that verify access tokens and enforce each method's scopes.

Add one to any gRPC server::

    server = grpc.server(pool, interceptors=[AuthInterceptor(verifier)])
    server = grpc.aio.server(interceptors=[AioAuthInterceptor(verifier)])

Each RPC keeps its kind (unary or any streaming kind): the interceptor wraps the handler that
``continuation`` returns instead of replacing it. The verified caller reaches the handler through
:func:`current_principal`. A missing or bad token is UNAUTHENTICATED (``INVALID_TOKEN``); a valid
token without a required scope is PERMISSION_DENIED (``INSUFFICIENT_SCOPE``); a method with no
policy is PERMISSION_DENIED (``ACCESS_DENIED``). Tokens never reach the log.

A token bound to a client certificate (RFC 8705 §3, ``cnf.x5t#S256``) is accepted only on a
connection whose client presented that certificate (``context.auth_context()``, on every call,
cached token or not); otherwise UNAUTHENTICATED ``INVALID_TOKEN``. grpc sees a client certificate
only on a port that requires one (``grpc.ssl_server_credentials(..., require_client_auth=True)``):
on any other port every bound token is refused. Unbound tokens work on both.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, TypeAlias

import grpc

from authsvc.core.errors import AccessDenied, OAuthError
from authsvc.logsafe import LogRateLimiter
from authsvc.status import status_for
from authsvc.verify.binding import DEFER_BINDING, check_grpc_binding
from authsvc.verify.jwks import WouldBlock
from authsvc.verify.policy import MethodPolicy, Public
from authsvc.verify.principal import (
    _PRINCIPAL,
    bearer_token,
    current_principal,
    verify_after_fetch,
    verify_token,
)
from authsvc.verify.verifier import Principal, TokenVerifier

__all__ = ["AioAuthInterceptor", "AuthInterceptor", "bearer_token", "current_principal"]

log = logging.getLogger("authsvc.verify")
_REFUSALS = LogRateLimiter(rate=10, burst=50)

_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
_BEHAVIORS = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


class _Base:
    def __init__(
        self,
        verifier: TokenVerifier,
        policy: Mapping[str, Sequence[str] | Public] | MethodPolicy | None = None,
    ) -> None:
        self.verifier = verifier
        self.policy = policy if isinstance(policy, MethodPolicy) else MethodPolicy(policy)

    @staticmethod
    def refusal(method: str, exc: OAuthError) -> grpc.Status:
        # forged tokens cost the caller nothing: a flood of them writes a bounded amount of log
        _REFUSALS.log(
            log, logging.INFO, "call refused", "refused %s: %s (%s)", method, exc.error, exc.description
        )
        return status_for(exc)


_NO_POLICY = AccessDenied("this method declares no authorization policy")


def _scoped(principal: Principal, required: Sequence[str]) -> Principal:
    TokenVerifier.require_scopes(principal, required)
    return principal


def _authorize_bound(principal: Principal, required: Sequence[str], context: Any) -> Principal:
    """RFC 8705 §3 for a gRPC call: ``principal``'s token is bound to a certificate, which must
    be the one the caller presented on this call's connection (checked before the scopes, so a
    stolen token is INVALID_TOKEN whatever it holds); raises OAuthError. ``context`` is the
    call's servicer context (sync or ``grpc.aio``): only it knows the peer's certificate."""
    assert principal.certificate_thumbprint is not None
    check_grpc_binding(principal.certificate_thumbprint, context.auth_context())
    return _scoped(principal, required)


def _abort_in_thread(context: Any, status: grpc.Status) -> None:
    """Abort from a handler's thread: a ``grpc.ServicerContext``, or the context grpc.aio gives a
    plain function (which has ``abort`` with trailing metadata, not ``abort_with_status``)."""
    if isinstance(context, grpc.ServicerContext):
        context.abort_with_status(status)
    context.abort(status.code, status.details, status.trailing_metadata)


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


def _principal_context(principal: Principal | None) -> contextvars.Context:
    ctx = contextvars.copy_context()
    ctx.run(_PRINCIPAL.set, principal)
    return ctx


def _bind_sync(
    behavior: Callable[..., Any],
    authorize: Callable[[Any], Principal | None],
    streaming: bool,
) -> Callable[..., Any]:
    """Run a synchronous behavior (and, for response streams, each step of its iterator) in a
    context where :func:`current_principal` returns what ``authorize(servicer_context)`` gave.
    ``authorize`` runs first, in the handler's own thread."""
    if not streaming:

        def unary(request: Any, servicer_context: grpc.ServicerContext) -> Any:
            ctx = contextvars.copy_context()
            ctx.run(_PRINCIPAL.set, authorize(servicer_context))
            return ctx.run(behavior, request, servicer_context)

        return unary

    def stream(request: Any, servicer_context: grpc.ServicerContext) -> Iterator[Any]:
        ctx = _principal_context(authorize(servicer_context))
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
    ``{"/pkg.Service/Method": ["scope:a"], "/pkg.Service/Ping": PUBLIC}``.

    The token is read from the call's own metadata (``context.invocation_metadata()``, what the
    client sent, as the handler sees it), in the worker thread."""

    def __init__(
        self,
        verifier: TokenVerifier,
        policy: Mapping[str, Sequence[str] | Public] | MethodPolicy | None = None,
    ) -> None:
        self._base = _Base(verifier, policy)
        self._guarded: dict[str, tuple[_Handler, _Handler]] = {}  # method: (handler, guarded)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], _Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        # grpcio calls this on its one dispatch thread, holding the server's lock: only a dict hit
        # runs here (the guarded handler of this method, built once). The token is verified by the
        # guarded handler, on the worker thread, where a key fetch stalls one call and not the
        # whole server, and where a switch of the GIL holds up no other call.
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        known = self._guarded.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        guarded = self._guard(handler, method)
        # one entry per method, replaced if its handler changes; bounded, as method names come
        # from the wire (a method without a handler never gets here)
        if len(self._guarded) < 10_000 or method in self._guarded:
            self._guarded[method] = (handler, guarded)
        return guarded

    def _guard(self, handler: _Handler, method: str) -> _Handler:
        """``handler`` as the policy of ``method`` has it: as it is (public), refusing every call (no
        policy), or verifying each call's own token (``context.invocation_metadata()``, what the
        client sent) and scopes before it runs."""
        rule = self._base.policy.rule(method)
        if isinstance(rule, Public):
            return handler
        if rule is None:

            def deny(request: Any, context: grpc.ServicerContext) -> Any:
                context.abort_with_status(_Base.refusal(method, _NO_POLICY))

            return _rebuild(handler, deny)
        required = rule
        verifier = self._base.verifier

        def authorize(context: grpc.ServicerContext) -> Principal:
            """The verified caller holding every ``required`` scope, with the certificate of this
            call's connection if the token is bound to one; else the call is aborted. May wait
            for a key fetch (bounded): it runs in the handler's own thread."""
            try:
                principal = verify_token(
                    verifier,
                    bearer_token(context.invocation_metadata()),
                    where=method,
                    peer_certificate=DEFER_BINDING,
                )
                if principal.certificate_thumbprint is not None:
                    return _authorize_bound(principal, required, context)
                if not principal.scopes.issuperset(required):
                    TokenVerifier.require_scopes(principal, required)  # raises, naming the scopes
                return principal
            except OAuthError as exc:
                context.abort_with_status(_Base.refusal(method, exc))
                raise AssertionError("unreachable") from exc  # abort_with_status raises

        return _rebuild(handler, _bind_sync(_behavior(handler), authorize, handler.response_streaming))


class AioAuthInterceptor(grpc.aio.ServerInterceptor):
    """Token verification for ``grpc.aio.server``; same rules as :class:`AuthInterceptor`.

    Verification runs on the event loop (as :func:`~authsvc.verify.principal.verify_on_event_loop`):
    a cached token costs a hash lookup, a new one one RSA verification (tens of microseconds). A
    call whose key must be fetched first (an unknown kid, at most once per cooldown) awaits that
    fetch, which runs in the key cache's own thread, for at most ``fetch_timeout``; it takes no
    executor thread, so a flood of made-up kids never starves handlers or the store. Call
    ``verifier.keys.refresh()`` at start-up so that the first request does not wait for the
    initial fetch.
    """

    def __init__(
        self,
        verifier: TokenVerifier,
        policy: Mapping[str, Sequence[str] | Public] | MethodPolicy | None = None,
    ) -> None:
        self._base = _Base(verifier, policy)
        self._on_the_loop: dict[Callable[..., Any], bool] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        rule = self._base.policy.rule(method)
        if isinstance(rule, Public):
            return handler
        try:
            if rule is None:
                raise _NO_POLICY
            # the caller, verified at once when its key is cached (no coroutine of its own); only
            # a key fetch is awaited. Its scopes are checked here unless its token is bound to a
            # certificate, whose check (then the scopes') runs in the handler.
            token = bearer_token(handler_call_details.invocation_metadata)
            verifier = self._base.verifier
            try:
                principal = verify_token(
                    verifier, token, block=False, where=method, peer_certificate=DEFER_BINDING
                )
            except WouldBlock as pending:
                principal = await verify_after_fetch(
                    verifier, token, pending, where=method, peer_certificate=DEFER_BINDING
                )
            if principal.certificate_thumbprint is None and not principal.scopes.issuperset(rule):
                TokenVerifier.require_scopes(principal, rule)  # raises, naming the scopes
        except OAuthError as exc:
            status = _Base.refusal(method, exc)

            async def deny(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                await context.abort_with_status(status)

            return _rebuild(handler, deny)
        behavior = _behavior(handler)
        if principal.certificate_thumbprint is not None:
            # the peer's certificate is known only to the call's context, inside the handler
            return _rebuild(
                handler, _bound_behavior(behavior, principal, rule, method, handler.response_streaming)
            )
        if self._runs_on_the_loop(behavior):
            # grpc.aio runs the interceptors and an async handler in the RPC's own task, whose
            # context is a copy: the variable set here reaches this RPC's handler and nothing else,
            # and the registered handler is used as it is (no wrapper per call).
            _PRINCIPAL.set(principal)
            return handler
        # a plain function runs in an executor thread, where the task's context does not follow
        return _rebuild(handler, _bind_sync(behavior, lambda _: principal, handler.response_streaming))

    def _runs_on_the_loop(self, behavior: Callable[..., Any]) -> bool:
        """Whether grpc.aio awaits ``behavior`` in the RPC's task (a coroutine function or an async
        generator function) rather than calling it in an executor thread; remembered per
        behavior, as grpc's handlers are registered once (bounded all the same)."""
        try:
            known = self._on_the_loop.get(behavior)
        except TypeError:  # an unhashable callable: asked every time
            return inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)
        if known is None:
            known = inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)
            if len(self._on_the_loop) < 10_000:
                self._on_the_loop[behavior] = known
        return known


def _bound_behavior(
    behavior: Callable[..., Any], principal: Principal, required: Sequence[str], method: str, streaming: bool
) -> Callable[..., Any]:
    """``behavior`` (async, async generator or plain function) preceded, in the call itself, by
    the binding check (then the scopes); a refusal aborts the call before ``behavior`` runs."""

    async def refuse(context: grpc.aio.ServicerContext[Any, Any], exc: OAuthError) -> None:
        await context.abort_with_status(_Base.refusal(method, exc))

    if inspect.isasyncgenfunction(behavior):

        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            try:
                _authorize_bound(principal, required, context)
            except OAuthError as exc:
                await refuse(context, exc)
                return
            _PRINCIPAL.set(principal)
            async with contextlib.aclosing(behavior(request, context)) as items:
                async for item in items:
                    yield item

        return stream
    if inspect.iscoroutinefunction(behavior):

        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                _authorize_bound(principal, required, context)
            except OAuthError as exc:
                await refuse(context, exc)
                raise AssertionError("unreachable") from exc  # abort_with_status raises
            _PRINCIPAL.set(principal)
            return await behavior(request, context)

        return call

    def authorize(context: Any) -> Principal:
        try:
            return _authorize_bound(principal, required, context)
        except OAuthError as exc:
            _abort_in_thread(context, _Base.refusal(method, exc))
            raise AssertionError("unreachable") from exc

    return _bind_sync(behavior, authorize, streaming)
