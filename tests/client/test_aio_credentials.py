"""AsyncClientCredentials: the same states and rules as the threaded credentials, on one loop.

pytest-asyncio is not installed: each test is a plain function that runs a coroutine with
``asyncio.run``. The clock is fake, ``sleep`` is a recorder, fetches are held with asyncio Events.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import grpc
import pytest

from authsvc.client.aio import AsyncClientCredentials, AsyncGrpcTokenFetcher
from authsvc.client.credentials import RetryPolicy, TokenFetchError, TokenState
from tests.client.fakes import WAIT, AsyncFakeFetcher, AsyncSleepRecorder, FakeClock, failure
from tests.client.test_credentials import PERMANENT, RETRYABLE, STATE_CASES

START = 1000.0
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), WAIT))


def make(
    fetcher: AsyncFakeFetcher,
    clock: FakeClock,
    sleep: Callable[[float], Awaitable[object]] | None = None,
    *,
    retry: RetryPolicy | None = None,
) -> AsyncClientCredentials:
    return AsyncClientCredentials(
        fetcher, clock=clock, sleep=sleep or _no_sleep, jitter=lambda: 1.0, retry=retry
    )


async def _no_sleep(delay: float) -> None:
    raise AssertionError(f"unexpected sleep({delay})")


def hold(fetcher: AsyncFakeFetcher) -> tuple[asyncio.Event, asyncio.Event]:
    """Hold the next fetches in flight; returns (entered, release)."""
    entered, release = asyncio.Event(), asyncio.Event()
    fetcher.entered, fetcher.hold = entered, release
    return entered, release


# -- states ------------------------------------------------------------------------------------


def test_no_token_is_invalid() -> None:
    creds = make(AsyncFakeFetcher(), FakeClock(START))
    assert creds.state is TokenState.INVALID


@pytest.mark.parametrize(
    ("expires_in", "offset", "expected"),
    STATE_CASES,
    ids=[f"{int(e)}s@+{int(o)}-{s.value}" for e, o, s in STATE_CASES],
)
def test_state_boundaries(expires_in: float, offset: float, expected: TokenState) -> None:
    clock = FakeClock(START)
    creds = make(AsyncFakeFetcher(expires_in=expires_in), clock)

    async def body() -> None:
        await creds.token()
        clock.advance(offset)
        assert creds.state is expected

    run(body)


def test_lifetime_counts_from_when_the_request_started() -> None:
    clock = FakeClock(START)
    fetcher = AsyncFakeFetcher()
    fetcher.during = lambda: clock.advance(7.0)
    creds = make(fetcher, clock)

    async def body() -> None:
        token = await creds.access_token()
        assert token.expires_at == START + 300.0

    run(body)


# -- serving and refreshing --------------------------------------------------------------------


def test_a_fresh_token_is_served_without_fetching() -> None:
    clock = FakeClock(START)
    fetcher = AsyncFakeFetcher()
    creds = make(fetcher, clock)

    async def body() -> None:
        assert await creds.token() == "tok-1"
        clock.advance(239.0)
        assert [await creds.token() for _ in range(10)] == ["tok-1"] * 10
        assert fetcher.calls == 1

    run(body)


def test_fifty_concurrent_callers_without_a_token_share_one_fetch() -> None:
    n = 50
    clock = FakeClock(START)
    fetcher = AsyncFakeFetcher()
    creds = make(fetcher, clock)

    async def body() -> None:
        entered, release = hold(fetcher)
        callers = [asyncio.ensure_future(creds.token()) for _ in range(n)]
        await entered.wait()
        assert clock.calls == n + 1  # every caller looked, then the one fetch started
        assert not any(caller.done() for caller in callers)
        release.set()
        assert await asyncio.gather(*callers) == ["tok-1"] * n
        assert fetcher.calls == 1

    run(body)


def test_a_stale_token_is_served_while_one_refresh_task_runs() -> None:
    clock = FakeClock(START)
    fetcher = AsyncFakeFetcher()
    creds = make(fetcher, clock)

    async def body() -> None:
        assert await creds.token() == "tok-1"
        clock.advance(241.0)
        entered, release = hold(fetcher)
        assert await creds.token() == "tok-1"
        await entered.wait()
        assert [await creds.token() for _ in range(20)] == ["tok-1"] * 20
        assert fetcher.calls == 2
        release.set()
        clock.advance(50.0)  # the old token is now invalid: this caller joins the refresh
        assert await creds.token() == "tok-2"
        assert creds.state is TokenState.FRESH
        assert fetcher.calls == 2

    run(body)


def test_a_failed_background_refresh_keeps_serving_the_stale_token_until_it_is_invalid() -> None:
    clock = FakeClock(START)
    fetcher = AsyncFakeFetcher(
        ("tok-1", 300.0, "s"),
        failure(UNAVAILABLE, message="bg"),
        failure(UNAVAILABLE, message="bg"),
        failure(UNAVAILABLE, message="own"),
    )
    creds = make(fetcher, clock, retry=RetryPolicy(max_attempts=1))

    async def body() -> None:
        await creds.token()
        clock.advance(241.0)
        finished = asyncio.Event()
        fetcher.during = finished.set  # runs in the refresh task's last step, just before it fails
        assert await creds.token() == "tok-1"
        await finished.wait()
        assert fetcher.calls == 2
        finished.clear()
        assert await creds.token() == "tok-1"  # still stale (59 s left) after the failed refresh
        await finished.wait()  # that call started another background refresh, which failed too
        assert fetcher.calls == 3
        fetcher.during = None
        clock.advance(50.0)  # invalid
        with pytest.raises(TokenFetchError) as info:
            await creds.token()
        assert str(info.value).endswith("own")  # its own attempt, not a failed background one
        assert fetcher.calls == 4

    run(body)


def test_invalidate_forces_a_fetch() -> None:
    fetcher = AsyncFakeFetcher()
    creds = make(fetcher, FakeClock(START))

    async def body() -> None:
        assert await creds.token() == "tok-1"
        creds.invalidate()
        assert await creds.token() == "tok-2"

    run(body)


# -- retries -----------------------------------------------------------------------------------


@pytest.mark.parametrize("code", RETRYABLE, ids=[c.name for c in RETRYABLE])
def test_transient_failures_are_retried_with_backoff(code: grpc.StatusCode) -> None:
    fetcher = AsyncFakeFetcher(failure(code), failure(code))
    sleep = AsyncSleepRecorder()
    creds = make(fetcher, FakeClock(START), sleep)

    async def body() -> None:
        assert await creds.token() == "tok-3"

    run(body)
    assert fetcher.calls == 3
    assert sleep.delays == pytest.approx([0.2, 0.4])


def test_exhausted_retries_raise_the_last_error() -> None:
    errors = [failure(UNAVAILABLE, message=f"attempt {i}") for i in range(1, 5)]
    fetcher = AsyncFakeFetcher(*errors)
    sleep = AsyncSleepRecorder()
    creds = make(fetcher, FakeClock(START), sleep)

    async def body() -> None:
        with pytest.raises(TokenFetchError) as info:
            await creds.token()
        assert info.value is errors[-1]

    run(body)
    assert fetcher.calls == 4
    assert sleep.delays == pytest.approx([0.2, 0.4, 0.8])


@pytest.mark.parametrize(("code", "reason"), PERMANENT, ids=[r for _, r in PERMANENT])
def test_permanent_failures_are_not_retried_nor_cached(code: grpc.StatusCode, reason: str) -> None:
    error = failure(code, reason, "no")
    fetcher = AsyncFakeFetcher(error)
    sleep = AsyncSleepRecorder()
    creds = make(fetcher, FakeClock(START), sleep)

    async def body() -> None:
        with pytest.raises(TokenFetchError) as info:
            await creds.token()
        assert info.value is error
        assert fetcher.calls == 1
        assert await creds.token() == "tok-2"  # the error was not cached

    run(body)
    assert sleep.delays == []


# -- cancellation ------------------------------------------------------------------------------


def test_cancelling_one_waiter_does_not_cancel_the_shared_refresh() -> None:
    fetcher = AsyncFakeFetcher()
    creds = make(fetcher, FakeClock(START))

    async def body() -> None:
        entered, release = hold(fetcher)
        first = asyncio.ensure_future(creds.token())  # the caller that started the refresh
        second = asyncio.ensure_future(creds.token())
        await entered.wait()
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        release.set()
        assert await second == "tok-1"
        assert fetcher.calls == 1

    run(body)


def test_a_refresh_whose_only_waiter_was_cancelled_still_completes() -> None:
    fetcher = AsyncFakeFetcher()
    creds = make(fetcher, FakeClock(START))

    async def body() -> None:
        entered, release = hold(fetcher)
        only = asyncio.ensure_future(creds.token())
        await entered.wait()
        only.cancel()
        with pytest.raises(asyncio.CancelledError):
            await only
        release.set()
        assert await creds.token() == "tok-1"
        assert fetcher.calls == 1

    run(body)


# -- redaction ---------------------------------------------------------------------------------


def test_reprs_never_show_the_secret_or_the_token() -> None:
    secret = "s3cr3t-Value-9f2c"
    token = "eyJhbGciOiJFUzI1NiJ9.payload.signature"

    async def body() -> None:
        channel = grpc.aio.insecure_channel("127.0.0.1:1")
        try:
            fetcher = AsyncGrpcTokenFetcher(channel, client_id="shop", client_secret=secret)
            basic = base64.b64encode(f"shop:{secret}".encode()).decode()
            creds = make(AsyncFakeFetcher((token, 300.0, "s")), FakeClock(START))
            await creds.token()
            for text in (repr(fetcher), repr(AsyncClientCredentials(fetcher)), repr(creds)):
                assert secret not in text
                assert basic not in text
                assert token not in text
        finally:
            await channel.close()

    run(body)
