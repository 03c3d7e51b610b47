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
    TokenState,
    _Base,
    fetch_error,
    token_request,
)

__all__ = ["AioBearerInterceptor", "AsyncClientCredentials", "AsyncGrpcTokenFetcher", "AsyncTokenFetcher"]

log = logging.getLogger("authsvc.client")


class AsyncTokenFetcher(Protocol):
    async def __call__(self) -> tuple[str, float, str]: ...


class AsyncGrpcTokenFetcher:
    """``IssueToken`` over a ``grpc.aio`` channel, client_secret_basic."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        client_id: str,
        client_secret: str,
        scopes: Sequence[str] = (),
        audience: Sequence[str] = (),
        timeout: float = 5.0,
    ) -> None:
        from authsvc.v1 import token_pb2_grpc  # noqa: PLC0415

        self._metadata, self._request = token_request(client_id, client_secret, scopes, audience)
        self._call = token_pb2_grpc.TokenServiceStub(channel).IssueToken
        self._timeout = timeout
        self.client_id = client_id

    async def __call__(self) -> tuple[str, float, str]:
        try:
            response = await self._call(self._request, metadata=self._metadata, timeout=self._timeout)
        except grpc.RpcError as err:
            raise fetch_error(err) from None
        return response.access_token, float(response.expires_in), response.scope

    def __repr__(self) -> str:
        return f"AsyncGrpcTokenFetcher(client_id={self.client_id!r}, client_secret=<redacted>)"


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
    ) -> None:
        super().__init__(
            refresh_window=refresh_window,
            expiry_skew=expiry_skew,
            clock=clock,
            retry=retry or RetryPolicy(),
            sleep=lambda _: None,
            jitter=jitter,
        )
        self._fetcher = fetcher
        self._async_sleep = sleep
        self._inflight: asyncio.Task[AccessToken] | None = None

    @classmethod
    def for_channel(
        cls,
        channel: grpc.aio.Channel,
        *,
        client_id: str,
        client_secret: str,
        scopes: Sequence[str] = (),
        audience: Sequence[str] = (),
        **options: Any,
    ) -> AsyncClientCredentials:
        fetcher = AsyncGrpcTokenFetcher(
            channel, client_id=client_id, client_secret=client_secret, scopes=scopes, audience=audience
        )
        return cls(fetcher, **options)

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

    def invalidate(self) -> None:
        self._token = None

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
        for attempt in range(self.retry.max_attempts):
            started = self._clock()
            self.fetches += 1
            try:
                return self._accept(started, await self._fetcher())
            except TokenFetchError as exc:
                if not exc.retryable or attempt == len(delays):
                    raise
                await self._async_sleep(delays[attempt])
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
    insecure channels, this does not, so never point it at another host without TLS.
    """

    def __init__(self, credentials: AsyncClientCredentials) -> None:
        self._credentials = credentials

    async def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        token = await self._credentials.token()
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata.add("authorization", f"Bearer {token}")
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(await self._details(client_call_details), request)

    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(await self._details(client_call_details), request)

    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(await self._details(client_call_details), request_iterator)

    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(await self._details(client_call_details), request_iterator)
