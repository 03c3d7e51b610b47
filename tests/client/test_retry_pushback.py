"""The SDK honours the TokenService's retry delay (rate limits): the next attempt, and a refresh
started before the delay is over, waits at least what the server asked (grpc-retry-pushback-ms or
RetryInfo) instead of its own shorter backoff, up to ``max_retry_after`` and the ``deadline``;
sync and asyncio, on a fake clock whose ``sleep`` moves it. Then against a real server."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import grpc
import pytest

from authsvc.client.aio import AsyncClientCredentials
from authsvc.client.credentials import (
    ClientCredentials,
    GrpcTokenFetcher,
    RetryPolicy,
    TokenFetchError,
    retry_delay,
)
from authsvc.core.errors import RateLimited
from authsvc.status import status_for
from tests.client.fakes import (
    WAIT,
    AsyncFakeFetcher,
    AsyncSleepRecorder,
    FakeClock,
    FakeFetcher,
    SleepRecorder,
    failure,
)
from tests.ratelimits import TWO_AN_HOUR, limited_server

START = 1000.0
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def limited(retry_after: float) -> TokenFetchError:
    return failure(EXHAUSTED, "RATE_LIMITED", "slow down", retry_after=retry_after)


def make(
    fetcher: FakeFetcher, clock: FakeClock, sleep: SleepRecorder, retry: RetryPolicy | None = None
) -> ClientCredentials:
    return ClientCredentials(fetcher, clock=clock, sleep=sleep, jitter=lambda: 1.0, retry=retry)


def test_a_rate_limited_fetch_waits_the_servers_delay_not_its_own_backoff() -> None:
    clock = FakeClock(START)
    sleep = SleepRecorder(clock)
    fetcher = FakeFetcher(limited(7.5), limited(0.05))
    creds = make(fetcher, clock, sleep)
    assert creds.token() == "tok-3"
    assert sleep.delays == pytest.approx([7.5, 0.4])  # the server's 7.5 s; then the longer backoff


def test_a_delay_over_the_cap_is_not_waited_and_holds_for_later_refreshes() -> None:
    clock = FakeClock(START)
    sleep = SleepRecorder(clock)
    fetcher = FakeFetcher(limited(3600))
    creds = make(fetcher, clock, sleep)
    with pytest.raises(TokenFetchError) as first:
        creds.token()
    assert first.value.reason == "RATE_LIMITED" and first.value.retry_after == 3600
    assert fetcher.calls == 1 and sleep.delays == []
    clock.advance(100)
    with pytest.raises(TokenFetchError) as again:  # asked nothing: the server said an hour
        creds.token()
    assert fetcher.calls == 1
    assert again.value.code == EXHAUSTED and again.value.retry_after == pytest.approx(3500)
    clock.advance(3500)
    assert creds.token() == "tok-2"


def test_a_refresh_after_failing_waits_out_what_is_left_of_the_delay() -> None:
    clock = FakeClock(START)
    sleep = SleepRecorder(clock)
    fetcher = FakeFetcher(*(limited(20) for _ in range(4)))
    creds = make(fetcher, clock, sleep)
    with pytest.raises(TokenFetchError):
        creds.token()
    assert sleep.delays == pytest.approx([20, 20, 20]) and fetcher.calls == 4
    clock.advance(5)
    assert creds.token() == "tok-5"
    assert sleep.delays[3:] == pytest.approx([15])


def test_the_deadline_bounds_the_waits() -> None:
    clock = FakeClock(START)
    sleep = SleepRecorder(clock)
    fetcher = FakeFetcher(limited(8), limited(8))
    creds = make(fetcher, clock, sleep, RetryPolicy(deadline=10))
    with pytest.raises(TokenFetchError) as caught:
        creds.token()
    assert fetcher.calls == 2 and sleep.delays == pytest.approx([8])  # a second 8 s would end at 16
    assert caught.value.retry_after == 8


def test_a_server_that_says_never_retry_is_not_retried_but_not_shunned() -> None:
    clock = FakeClock(START)
    sleep = SleepRecorder(clock)
    fetcher = FakeFetcher(limited(math.inf))
    creds = make(fetcher, clock, sleep)
    with pytest.raises(TokenFetchError):
        creds.token()
    assert fetcher.calls == 1 and sleep.delays == []
    assert creds.token() == "tok-2"  # the caller's next call asks again


def test_the_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="max_retry_after"):
        RetryPolicy(max_retry_after=-1)
    with pytest.raises(ValueError, match="deadline"):
        RetryPolicy(deadline=0)


def test_aio_waits_the_servers_delay_and_holds_it_for_the_next_refresh() -> None:
    clock = FakeClock(START)
    sleep = AsyncSleepRecorder(clock)

    async def go() -> None:
        fetcher = AsyncFakeFetcher(limited(12), limited(3600))
        creds = AsyncClientCredentials(fetcher, clock=clock, sleep=sleep, jitter=lambda: 1.0)
        with pytest.raises(TokenFetchError) as caught:
            await creds.token()
        assert caught.value.retry_after == 3600
        assert fetcher.calls == 2 and sleep.delays == pytest.approx([12])
        with pytest.raises(TokenFetchError):
            await creds.token()  # asks nothing during the hour
        assert fetcher.calls == 2
        clock.advance(3600)
        assert await creds.token() == "tok-3"

    asyncio.run(asyncio.wait_for(go(), WAIT))


# -- what the server sends ----------------------------------------------------------------------


def trailers(exc: RateLimited) -> list[tuple[str, str | bytes]]:
    return list(status_for(exc).trailing_metadata)


def test_the_pushback_trailer_and_retry_info_are_read() -> None:
    sent = trailers(RateLimited("slow down", retry_after=2.5))
    assert ("grpc-retry-pushback-ms", "2500") in sent
    assert retry_delay(sent) == pytest.approx(2.5)
    without_pushback = [(k, v) for k, v in sent if k != "grpc-retry-pushback-ms"]
    assert retry_delay(without_pushback) == pytest.approx(2.5)  # from RetryInfo
    assert retry_delay(trailers(RateLimited("too many streams"))) is None
    assert retry_delay([("grpc-retry-pushback-ms", "-1")]) == math.inf  # gRPC A6: do not retry
    assert retry_delay([("grpc-retry-pushback-ms", "soon")]) == math.inf
    assert retry_delay(None) is None


def test_status_for_carries_retry_info_and_the_pushback_trailer() -> None:
    from google.rpc import error_details_pb2, status_pb2

    status = status_for(RateLimited("slow down", retry_after=1.0004))
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    sent = dict(status.trailing_metadata)
    assert sent["grpc-retry-pushback-ms"] == "1001"  # rounded up: waiting it is enough
    details = status_pb2.Status.FromString(sent["grpc-status-details-bin"]).details
    info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
    assert details[0].Unpack(info) and (info.reason, info.domain) == ("RATE_LIMITED", "authsvc")
    assert details[1].Unpack(retry) and (retry.retry_delay.seconds, retry.retry_delay.nanos) == (1, 1_000_000)
    for no_delay in (RateLimited("streams"), RateLimited("x", retry_after=math.inf)):
        assert [k for k, _ in status_for(no_delay).trailing_metadata] == ["grpc-status-details-bin"]


def test_the_sdk_waits_the_pushback_of_a_real_server(tmp_path: Path) -> None:
    """A real TokenService with a client limit of two an hour: the third fetch is refused with
    about an hour's pushback, and the credentials sleep that hour (on their fake clock) before
    asking again, instead of their 0.2 s backoff."""
    with limited_server(tmp_path / "data", client_rate_limit=TWO_AN_HOUR) as server:
        shop = server.register("shop")
        with grpc.insecure_channel(server.target) as channel:
            fetcher = GrpcTokenFetcher(channel, client_id=shop.client_id, client_secret=shop.secret)
            fetcher()
            fetcher()
            with pytest.raises(TokenFetchError) as refused:
                fetcher()
            assert refused.value.reason == "RATE_LIMITED"
            assert refused.value.retry_after is not None and 3500 < refused.value.retry_after <= 3600
            clock = FakeClock(START)
            sleep = SleepRecorder(clock)
            creds = ClientCredentials(
                fetcher,
                clock=clock,
                sleep=sleep,
                jitter=lambda: 1.0,
                retry=RetryPolicy(max_attempts=2, max_retry_after=4000),
            )
            with pytest.raises(TokenFetchError):
                creds.token()  # the server's clock did not move: refused again after the wait
            assert len(sleep.delays) == 1 and 3500 < sleep.delays[0] <= 3600
            assert creds.fetches == 2
