"""The rate limiter of the application layer (authsvc.authority.ratelimit): source keys, the
bounded in-process buckets, the three limits, and the buckets shared in a real Redis, with its
outages (a closed port, and a proxy that drops the connection mid-run)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Sequence

import pytest

from authsvc.authority.ratelimit import (
    Check,
    LocalBuckets,
    RateLimits,
    RedisBuckets,
    check_redis_url,
    source_key,
)
from authsvc.core.errors import ConfigurationError, RateLimited
from authsvc.core.ratelimit import RateLimit
from tests.redisdb import redis_keys

ONE_AN_HOUR = RateLimit(rate=1 / 3600, burst=2)  # two at once, then one an hour
SECRET = "authsvc_cs_" + "Q" * 43


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Counted:
    """A LimitMetrics that remembers what it was told."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def rate_limited(self, limit: str) -> None:
        self.seen.append(limit)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- source keys ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        ("ipv4:10.1.2.3:5678", "ipv4:10.1.2.3"),
        ("10.1.2.3", "ipv4:10.1.2.3"),  # an HTTP remote: the same bucket as the gRPC peer
        ("ipv6:[2001:db8:1:2:3:4:5:6]:443", "ipv6:2001:db8:1:2::/64"),
        ("ipv6:%5B2001:db8:1:2::9%5D:443", "ipv6:2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "ipv6:2001:db8:1:2::/64"),  # the whole /64 is one host
        ("ipv6:[::ffff:10.1.2.3]:1", "ipv4:10.1.2.3"),
        ("::ffff:10.1.2.3", "ipv4:10.1.2.3"),
        ("unix:/run/authsvc.sock", "local"),
        ("unix:", "local"),
        (None, "local"),
        ("", "local"),
        ("ipv4:not-an-address:1", "other"),
        ("garbage", "other"),
    ],
    ids=str,
)
def test_source_key(peer: str | None, key: str) -> None:
    assert source_key(peer) == key


# -- local buckets ----------------------------------------------------------------------------


def test_local_buckets_stop_at_the_first_refusal() -> None:
    clock = Clock()
    buckets = LocalBuckets(clock=clock)
    one = RateLimit(rate=1, burst=1)
    assert buckets.check([Check("peer", "a", one)]) == (-1, 0.0)
    index, retry = buckets.check([Check("client", "c", one), Check("peer", "a", one)])
    assert index == 1 and retry == pytest.approx(1.0)
    assert buckets.check([Check("client", "c", one)])[0] == 0  # the first check took its token
    clock.now += 1
    assert buckets.check([Check("peer", "a", one)]) == (-1, 0.0)


def test_local_buckets_are_bounded_under_many_distinct_keys() -> None:
    """An attacker cycling addresses or client ids: memory stays at max_keys per kind, however
    many keys, and the buckets in use keep working."""
    clock = Clock()
    buckets = LocalBuckets(max_keys=100, clock=clock)
    tight = RateLimit(rate=1 / 3600, burst=1)
    for i in range(20_000):
        buckets.check([Check("peer", f"ipv4:10.0.{i // 256}.{i % 256}", tight)])
        buckets.check([Check("failed_auth", f"k{i}", tight)])
    assert buckets.size("peer") == 100 and buckets.size("failed_auth") == 100
    assert buckets.size("client") == 0
    assert len(buckets) == 200
    assert buckets.check([Check("peer", "ipv4:10.0.78.31", tight)])[0] == 0  # recent: still empty


def test_full_buckets_are_forgotten() -> None:
    clock = Clock()
    buckets = LocalBuckets(clock=clock)
    quick = RateLimit(rate=10, burst=1)
    for i in range(50):
        buckets.check([Check("peer", f"p{i}", quick)])
    clock.now += 3600  # every bucket full again: as good as none
    for i in range(30):
        buckets.check([Check("peer", f"q{i}", quick)])
    assert buckets.size("peer") < 50


# -- the limiter ------------------------------------------------------------------------------


def test_the_peer_limit_refuses_before_authentication() -> None:
    metrics = Counted()
    limits = RateLimits(
        peer=ONE_AN_HOUR, failed_auth=None, local=LocalBuckets(clock=Clock()), metrics=metrics
    )

    async def go() -> None:
        await limits.admit("a", "ipv4:10.0.0.1:1")
        await limits.admit("b", "ipv4:10.0.0.1:2")
        with pytest.raises(RateLimited) as caught:
            await limits.admit("c", "10.0.0.1")
        assert caught.value.limit == "peer" and caught.value.retry_after is not None
        assert caught.value.retry_after == pytest.approx(3600, rel=1e-6)
        await limits.admit("a", "ipv4:10.0.0.2:1")  # another address: its own bucket

    asyncio.run(go())
    assert metrics.seen == ["peer"]


def test_failures_are_throttled_per_client_and_source() -> None:
    limits = RateLimits(failed_auth=ONE_AN_HOUR, local=LocalBuckets(clock=Clock()))

    async def go() -> None:
        for _ in range(2):
            admission = await limits.admit("shop", "10.0.0.9")
            await limits.failed(admission)
        with pytest.raises(RateLimited) as caught:
            await limits.admit("shop", "10.0.0.9")
        assert caught.value.limit == "failed_auth"
        await limits.admit("shop", "10.0.0.10")  # the real client, elsewhere
        await limits.admit("other", "10.0.0.9")  # another client id from the guessing address
        await limits.succeeded(await limits.admit("other", "10.0.0.9"))  # success takes nothing here

    asyncio.run(go())


def test_the_client_limit_is_decided_only_after_authentication() -> None:
    """admit() never refuses for the client limit: it says the bucket is empty, and the issuer
    refuses only once the credentials check out (a wrong secret is answered as always)."""
    metrics = Counted()
    limits = RateLimits(
        client=ONE_AN_HOUR, failed_auth=None, local=LocalBuckets(clock=Clock()), metrics=metrics
    )

    async def go() -> None:
        for _ in range(2):
            admission = await limits.admit("shop", "10.0.0.1")
            assert limits.client_refusal(admission) is None
            await limits.succeeded(admission)
        over = await limits.admit("shop", "10.0.0.2")
        assert over.client_over == pytest.approx(3600, rel=1e-6)
        assert metrics.seen == []  # nothing refused yet
        refusal = limits.client_refusal(over)
        assert refusal is not None and refusal.limit == "client" and "retry in 3600 s" in refusal.description
        assert limits.client_refusal(await limits.admit("other", "10.0.0.1")) is None

    asyncio.run(go())
    assert metrics.seen == ["client"]


def test_keys_never_hold_the_client_id() -> None:
    buckets = LocalBuckets(clock=Clock())
    limits = RateLimits(client=ONE_AN_HOUR, failed_auth=ONE_AN_HOUR, local=buckets)

    async def go() -> None:
        admission = await limits.admit(SECRET, "10.0.0.1")
        await limits.failed(admission)
        await limits.succeeded(admission)

    asyncio.run(go())
    keys = [k for kind in ("client", "failed_auth") for k in buckets._tats[kind]]
    assert len(keys) == 2 and all("Q" * 8 not in k and "authsvc_cs" not in k for k in keys)


def test_nothing_configured_is_disabled() -> None:
    assert not RateLimits(failed_auth=None).enabled
    assert RateLimits().enabled  # the failed-authentication throttle is on by default
    assert "client off, peer off, failed authentications 10/m,burst=10" in RateLimits().describe()


@pytest.mark.parametrize(
    ("url", "where"),
    [
        ("redis://127.0.0.1:6379/0", "127.0.0.1:6379"),
        ("redis://:hunter2@cache.internal/1", "cache.internal:6379"),
        ("rediss://user:pw@cache.internal:6380", "cache.internal:6380"),
        ("unix:///run/redis.sock", "unix:/run/redis.sock"),
    ],
)
def test_redis_urls_are_shown_without_credentials(url: str, where: str) -> None:
    assert check_redis_url(url) == where


@pytest.mark.parametrize("url", ["", "127.0.0.1:6379", "http://cache", "redis://", "redis://h:port/0"])
def test_bad_redis_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        check_redis_url(url)
    assert "--redis-url" in str(caught.value) and "\n" not in str(caught.value)


# -- shared in Redis --------------------------------------------------------------------------


async def shared_limits(
    url: str, prefix: str, *, clock: Clock | None = None, **limits: RateLimit | None
) -> RateLimits:
    return RateLimits(
        client=limits.get("client"),
        peer=limits.get("peer"),
        failed_auth=limits.get("failed_auth"),
        shared=RedisBuckets(url, prefix=prefix, timeout=1.0, clock=clock or Clock()),
        local=LocalBuckets(clock=Clock()),
    )


def test_two_replicas_share_their_buckets_in_redis(redis_url: str, redis_prefix: str) -> None:
    async def go() -> None:
        a = await shared_limits(redis_url, redis_prefix, peer=ONE_AN_HOUR)
        b = await shared_limits(redis_url, redis_prefix, peer=ONE_AN_HOUR)
        try:
            await a.admit("x", "10.9.9.9")
            await b.admit("x", "10.9.9.9")
            for replica in (a, b):
                with pytest.raises(RateLimited) as caught:
                    await replica.admit("x", "10.9.9.9")
                assert caught.value.limit == "peer"
                assert caught.value.retry_after is not None and 3500 < caught.value.retry_after <= 3600
            await a.admit("x", "10.9.9.8")
            assert a.local.size("peer") == 0  # Redis decided everything
        finally:
            await a.close()
            await b.close()

    asyncio.run(go())


def test_redis_keys_expire_and_hold_no_client_id(redis_url: str, redis_prefix: str) -> None:
    import redis

    async def go() -> None:
        limits = await shared_limits(redis_url, redis_prefix, client=ONE_AN_HOUR, failed_auth=ONE_AN_HOUR)
        try:
            admission = await limits.admit(SECRET, "10.7.7.7")
            await limits.failed(admission)
            await limits.succeeded(admission)
        finally:
            await limits.close()

    asyncio.run(go())
    keys = redis_keys(redis_prefix)
    assert len(keys) == 2
    assert all(b"Q" * 8 not in k and b"authsvc_cs" not in k for k in keys)
    client = redis.Redis.from_url(redis_url)
    try:
        for key in keys:
            assert 0 < client.pttl(key) <= 3600 * 1000  # gone once the bucket is full again
    finally:
        client.close()


def test_a_redis_outage_falls_back_to_local_limits_and_logs_once(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis on a closed port: every decision is made by the local buckets (the limit still
    holds), and the outage is one warning, not one per request."""
    caplog.set_level(logging.INFO, logger="authsvc.ratelimit")
    clock = Clock()

    async def go() -> None:
        limits = await shared_limits(
            f"redis://:hunter2@127.0.0.1:{closed_port()}/0", "x", clock=clock, peer=ONE_AN_HOUR
        )
        try:
            await limits.admit("x", "10.0.0.1")
            await limits.admit("x", "10.0.0.1")
            for _ in range(20):
                with pytest.raises(RateLimited):
                    await limits.admit("x", "10.0.0.1")
                clock.now += 0.3  # Redis is tried again every second: a few times here
            assert limits.shared is not None and not limits.shared.available
            assert limits.local.size("peer") == 1
        finally:
            await limits.close()

    asyncio.run(go())
    warnings = [r for r in caplog.records if r.name == "authsvc.ratelimit"]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "does not answer" in warnings[0].getMessage()
    assert "hunter2" not in caplog.text


class Proxy:
    """A TCP proxy to Redis that can be cut (every connection closed, new ones refused) and
    restored on the same port: an outage in the middle of a run, and its end."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@contextlib.asynccontextmanager
async def proxied(redis_url: str) -> AsyncIterator[Proxy]:
    from urllib.parse import urlsplit

    parts = urlsplit(redis_url)
    proxy = Proxy((parts.hostname or "127.0.0.1", parts.port or 6379))
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.cut()


def test_redis_failing_mid_run_degrades_and_recovers(
    redis_url: str, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="authsvc.ratelimit")
    clock = Clock()

    async def decide(limits: RateLimits, peers: Sequence[str]) -> None:
        for peer in peers:
            await limits.admit("x", peer)

    async def go() -> None:
        async with proxied(redis_url) as proxy:
            limits = await shared_limits(
                f"redis://127.0.0.1:{proxy.port}/0", redis_prefix, clock=clock, peer=ONE_AN_HOUR
            )
            shared = limits.shared
            assert shared is not None
            try:
                await decide(limits, ["10.1.0.1"])  # in Redis
                await proxy.cut()
                await decide(limits, ["10.1.0.2", "10.1.0.3"])  # Redis is gone: local
                assert not shared.available and limits.local.size("peer") == 2
                await proxy.start()  # back on the same port
                await decide(limits, ["10.1.0.4"])  # within the retry interval: still local
                assert not shared.available
                clock.now += 1.5
                await decide(limits, ["10.1.0.5"])  # tried again: Redis answers
                assert shared.available and shared.outages == 1
                await decide(limits, ["10.1.0.1"])  # the bucket kept in Redis all along
                with pytest.raises(RateLimited):
                    await decide(limits, ["10.1.0.1"])
            finally:
                await limits.close()

    asyncio.run(go())
    lines = [r.getMessage() for r in caplog.records if r.name == "authsvc.ratelimit"]
    assert len(lines) == 2
    assert "does not answer" in lines[0] and "answers again" in lines[1]
    keys = redis_keys(redis_prefix)
    assert [k.decode() for k in keys] == sorted(f"{redis_prefix}:peer:ipv4:10.1.0.{i}" for i in (1, 5))
