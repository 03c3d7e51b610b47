"""The asyncio twin of :class:`~authsvc.client.credentials.ClientCredentials`, for ``grpc.aio``."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import grpc

from authsvc.client.credentials import (
    AccessToken,
    RetryPolicy,
    TokenFetchError,
    TokenRequests,
    TokenState,
    _Base,
    fetch_error,
    is_token_refusal,
)
from authsvc.client.private_key_jwt import PrivateKeyJwtCredentials
from authsvc.client.transport import (
    PemSource,
    aio_token_service_channel,
    check_secret_transport,
    is_local_target,
    loopback_hosts,
)

__all__ = [
    "AioBearerInterceptor",
    "AsyncClientCredentials",
    "AsyncGrpcTokenFetcher",
    "AsyncTokenFetcher",
    "aio_insecure_loopback_channel",
]

log = logging.getLogger("authsvc.client")


class AsyncTokenFetcher(Protocol):
    async def __call__(self) -> tuple[str, float, str]: ...


class AsyncGrpcTokenFetcher:
    """``IssueToken`` over a ``grpc.aio`` channel, client_secret_basic or ``private_key_jwt`` (a
    fresh assertion per call). Refuses a channel that may be plaintext to another host, as
    :class:`~authsvc.client.credentials.GrpcTokenFetcher` does."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        client_id: str,
        client_secret: str | None = None,
        private_key_jwt: PrivateKeyJwtCredentials | None = None,
        scopes: Sequence[str] = (),
        audience: Sequence[str] = (),
        timeout: float = 5.0,
        secure: bool = False,
    ) -> None:
        from authsvc.v1 import token_pb2_grpc  # noqa: PLC0415

        check_secret_transport(channel, secure=secure)

        self._requests = TokenRequests(
            client_id=client_id,
            client_secret=client_secret,
            private_key_jwt=private_key_jwt,
            scopes=scopes,
            audience=audience,
        )
        self._call = token_pb2_grpc.TokenServiceStub(channel).IssueToken
        self._timeout = timeout
        self.client_id = client_id

    async def __call__(self) -> tuple[str, float, str]:
        metadata, request = self._requests()
        try:
            response = await self._call(request, metadata=metadata, timeout=self._timeout)
        except grpc.RpcError as err:
            raise fetch_error(err) from None
        return response.access_token, float(response.expires_in), response.scope

    def __repr__(self) -> str:
        return f"AsyncGrpcTokenFetcher(client_id={self.client_id!r}, {self._requests.method}=<redacted>)"


class AsyncClientCredentials(_Base):
    """Same states and rules as ClientCredentials; refreshes are tasks on the running loop."""

    def __init__(
        self,
        fetcher: AsyncTokenFetcher,
        *,
        refresh_window: float = 60.0,
        expiry_skew: float = 10.0,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        refusal_cooldown: float = 30.0,
    ) -> None:
        super().__init__(
            refresh_window=refresh_window,
            expiry_skew=expiry_skew,
            clock=clock,
            retry=retry or RetryPolicy(),
            sleep=lambda _: None,
            jitter=jitter,
            refusal_cooldown=refusal_cooldown,
        )
        self._fetcher = fetcher
        self._async_sleep = sleep
        self._inflight: asyncio.Task[AccessToken] | None = None
        self._owned_channel: grpc.aio.Channel | None = None

    @classmethod
    def for_target(
        cls,
        target: str,
        *,
        client_id: str,
        client_secret: str | None = None,
        private_key_jwt: PrivateKeyJwtCredentials | None = None,
        scopes: Sequence[str] = (),
        audience: Sequence[str] = (),
        root_certificates: PemSource | None = None,
        private_key: PemSource | None = None,
        certificate_chain: PemSource | None = None,
        channel_credentials: grpc.ChannelCredentials | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
        timeout: float = 5.0,
        **options: Any,
    ) -> AsyncClientCredentials:
        """As ``ClientCredentials.for_target``: TLS to every host but loopback and ``unix:``;
        ``await close()`` closes the channel."""
        channel, _ = aio_token_service_channel(
            target,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
            channel_credentials=channel_credentials,
            options=channel_options,
        )
        fetcher = AsyncGrpcTokenFetcher(
            channel,
            client_id=client_id,
            client_secret=client_secret,
            private_key_jwt=private_key_jwt,
            scopes=scopes,
            audience=audience,
            timeout=timeout,
            secure=True,  # TLS, or plaintext only to the loopback or unix: target it checked
        )
        made = cls(fetcher, **options)
        made._owned_channel = channel
        return made

    @classmethod
    def for_channel(
        cls,
        channel: grpc.aio.Channel,
        *,
        client_id: str,
        client_secret: str | None = None,
        private_key_jwt: PrivateKeyJwtCredentials | None = None,
        scopes: Sequence[str] = (),
        audience: Sequence[str] = (),
        secure: bool = False,
        **options: Any,
    ) -> AsyncClientCredentials:
        """As ``ClientCredentials.for_channel``: refused unless loopback, ``unix:`` or
        ``secure=True``."""
        fetcher = AsyncGrpcTokenFetcher(
            channel,
            client_id=client_id,
            client_secret=client_secret,
            private_key_jwt=private_key_jwt,
            scopes=scopes,
            audience=audience,
            secure=secure,
        )
        return cls(fetcher, **options)

    async def close(self) -> None:
        """Close the TokenService channel that :meth:`for_target` made (a no-op otherwise)."""
        if self._owned_channel is not None:
            await self._owned_channel.close()
            self._owned_channel = None

    async def token(self) -> str:
        return (await self.access_token()).token

    async def access_token(self) -> AccessToken:
        current = self._token
        state = self._state_of(current, self._clock())
        if state is not TokenState.INVALID and current is not None:
            if state is TokenState.STALE:
                self._start_refresh()
            return current
        return await asyncio.shield(self._start_refresh())

    def _start_refresh(self) -> asyncio.Task[AccessToken]:
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.get_running_loop().create_task(self._fetch_with_retries())
            self._inflight.add_done_callback(self._done)
        return self._inflight

    @staticmethod
    def _done(task: asyncio.Task[AccessToken]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.warning("token refresh failed: %s", task.exception())

    async def _fetch_with_retries(self) -> AccessToken:
        delays = self.retry.delays(self._jitter)
        began = self._clock()
        wait = self._pushback(began)
        if wait:
            await self._async_sleep(wait)
        for attempt in range(self.retry.max_attempts):
            started = began if attempt == 0 and not wait else self._clock()  # one clock read when calm
            self.fetches += 1
            try:
                return self._accept(started, await self._fetcher())
            except TokenFetchError as exc:
                delay = self._retry_delay(exc, attempt, delays, began)
                if delay is None:
                    raise
                await self._async_sleep(delay)
        raise AssertionError("unreachable")

    def __repr__(self) -> str:
        return f"AsyncClientCredentials(fetcher={self._fetcher!r}, state={self.state.value})"


class AioBearerInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
):
    """Adds ``authorization: Bearer <token>`` to every call of a ``grpc.aio`` channel.

    For plaintext loopback development only: call credentials (the production path) refuse
    insecure channels, this does not, so never point it at another host without TLS
    (:func:`aio_insecure_loopback_channel` checks that for you).

    Pass :meth:`interceptors` to the channel, not the object itself: ``grpc.aio`` files an
    interceptor under the first call kind it implements only, so this object alone would see
    unary calls and leave streaming calls without a token.

    A call the resource server refuses with INVALID_TOKEN drops that token
    (:meth:`AsyncClientCredentials.drop_refused`), so the next call fetches a fresh one; a unary
    call is then sent once more with the new token (``retry_refused``), which is safe because the
    refusal came before the handler ran. Streaming calls are never retried, and nothing is
    retried twice.
    """

    def __init__(self, credentials: AsyncClientCredentials, *, retry_refused: bool = True) -> None:
        self._credentials = credentials
        self._retry_refused = retry_refused
        self._watchers: set[asyncio.Task[None]] = set()

    def interceptors(self) -> list[grpc.aio.ClientInterceptor]:
        """One interceptor per call kind, all backed by this one: what ``interceptors=`` wants."""
        return [self, _UnaryStream(self), _StreamUnary(self), _StreamStream(self)]

    def _details(self, details: grpc.aio.ClientCallDetails, token: str) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata.add("authorization", f"Bearer {token}")
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    def _refused(self, sent: str) -> bool:
        """Drop ``sent``; True if a retry would carry another token (this one dropped it, or a
        concurrent call already did)."""
        dropped = self._credentials.drop_refused(sent)
        current = self._credentials.peek()
        return dropped or current is None or current.token != sent

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        sent = await self._credentials.token()
        call = await continuation(self._details(client_call_details, sent), request)
        try:
            await call
        except grpc.aio.AioRpcError as err:
            refused = is_token_refusal(err.code(), err.trailing_metadata())
            # _refused runs first: the token is dropped even when retries are off
            if refused and self._refused(sent) and self._retry_refused:
                fresh = await self._credentials.token()
                return await continuation(self._details(client_call_details, fresh), request)
        return call

    def _watch(self, call: Any, sent: str) -> Any:
        """Drop ``sent`` when a streaming call ends refused; the call itself is left as it is."""

        async def check() -> None:
            if await call.code() == grpc.StatusCode.UNAUTHENTICATED and is_token_refusal(
                grpc.StatusCode.UNAUTHENTICATED, await call.trailing_metadata()
            ):
                self._refused(sent)

        def done(_: object) -> None:
            task = asyncio.get_running_loop().create_task(check())
            self._watchers.add(task)
            task.add_done_callback(self._watchers.discard)

        call.add_done_callback(done)
        return call

    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        sent = await self._credentials.token()
        return self._watch(await continuation(self._details(client_call_details, sent), request), sent)

    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        sent = await self._credentials.token()
        call = await continuation(self._details(client_call_details, sent), request_iterator)
        return self._watch(call, sent)

    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        sent = await self._credentials.token()
        call = await continuation(self._details(client_call_details, sent), request_iterator)
        return self._watch(call, sent)


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, bearer: AioBearerInterceptor) -> None:
        self._bearer = bearer

    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await self._bearer.intercept_unary_stream(continuation, client_call_details, request)


class _StreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, bearer: AioBearerInterceptor) -> None:
        self._bearer = bearer

    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await self._bearer.intercept_stream_unary(continuation, client_call_details, request_iterator)


class _StreamStream(grpc.aio.StreamStreamClientInterceptor):
    def __init__(self, bearer: AioBearerInterceptor) -> None:
        self._bearer = bearer

    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await self._bearer.intercept_stream_stream(continuation, client_call_details, request_iterator)


def aio_insecure_loopback_channel(
    target: str,
    credentials: AsyncClientCredentials,
    *,
    options: Sequence[tuple[str, Any]] = (),
    retry_refused: bool = True,
) -> grpc.aio.Channel:
    """The ``grpc.aio`` twin of ``insecure_loopback_channel``: plaintext to a loopback or
    ``unix:`` target only, the token on every kind of call, refused tokens dropped."""
    loopback_hosts(target)  # says what a target looks like when it is none
    if not is_local_target(target):
        raise ValueError(f"refusing to send tokens in plaintext to {target}: use TLS")
    bearer = AioBearerInterceptor(credentials, retry_refused=retry_refused)
    return grpc.aio.insecure_channel(
        target, options=[*options, ("grpc.enable_http_proxy", 0)], interceptors=bearer.interceptors()
    )
