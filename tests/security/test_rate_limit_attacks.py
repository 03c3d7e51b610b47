"""Attacks the rate limits defend against, one named case each, on real servers.

- Online guessing of a client secret: throttled per (client id, source address), refused without
  the secret being checked, while the real client at another address is still served.
- Using the throttle or the client limit as an oracle of which client ids exist, or as a way to
  deny a victim service without its secret.
- Growing the limiter's memory by cycling source addresses and client ids.
- Getting a secret pasted as a client id into Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import grpc

from authsvc.authority.ratelimit import LocalBuckets, RateLimits
from authsvc.core.errors import RateLimited
from authsvc.core.ratelimit import RateLimit
from authsvc.v1 import token_pb2_grpc
from tests.ratelimits import TWO_AN_HOUR, grpc_token, http_token, limited_server
from tests.redisdb import redis_keys

THREE_GUESSES = RateLimit(rate=1 / 3600, burst=3)


def codes(answers: Sequence[object]) -> list[str]:
    return [getattr(a, "reason", "OK") if a is not None else "OK" for a in answers]


def test_online_secret_guessing_is_throttled_per_client_and_source(tmp_path: Path) -> None:
    """Three wrong guesses, then every attempt of that (client, address) is RATE_LIMITED, the right
    secret included: the secret is no longer checked, so guessing runs at the throttle's rate
    (here one an hour) however fast the attacker sends."""
    with limited_server(tmp_path / "data", failed_auth_limit=THREE_GUESSES) as server:
        shop = server.register("shop")
        with grpc.insecure_channel(server.target) as channel:
            stub = token_pb2_grpc.TokenServiceStub(channel)
            guesses = [grpc_token(stub, "shop", f"authsvc_cs_guess{i:038d}") for i in range(20)]
            assert codes(guesses) == ["INVALID_CLIENT"] * 3 + ["RATE_LIMITED"] * 17
            right = grpc_token(stub, "shop", shop.secret)
            assert right is not None and right.reason == "RATE_LIMITED"
            assert right.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert right.retry_delay is not None and 3500 < right.retry_delay <= 3600


def test_the_legitimate_client_from_another_address_still_gets_a_token(tmp_path: Path) -> None:
    """The attacker at 127.0.0.1 exhausts the throttle of client "shop"; the real shop, at
    127.0.0.2, over either edge, is served: the key includes the source."""
    with limited_server(
        tmp_path / "data", http_listen="127.0.0.1:0", failed_auth_limit=THREE_GUESSES
    ) as server:
        shop = server.register("shop")
        for i in range(10):
            http_token(server.http_url, "shop", f"wrong-{i}", source="127.0.0.1")
        status, _, body = http_token(server.http_url, "shop", shop.secret, source="127.0.0.1")
        assert (status, body["error"]) == (429, "rate_limited")
        status, _, body = http_token(server.http_url, "shop", shop.secret, source="127.0.0.2")
        assert status == 200 and body["token_type"] == "Bearer"


def test_failed_auth_throttle_does_not_tell_which_client_ids_exist(tmp_path: Path) -> None:
    """A registered id with wrong secrets and an id nobody registered get the same answers in the
    same order: the throttle counts failures, whoever the id names."""
    with limited_server(tmp_path / "data", failed_auth_limit=THREE_GUESSES) as server:
        server.register("shop")
        with grpc.insecure_channel(server.target) as channel:
            stub = token_pb2_grpc.TokenServiceStub(channel)
            known = [grpc_token(stub, "shop", "x" * 40) for _ in range(6)]
            unknown = [grpc_token(stub, "no-such-client", "x" * 40) for _ in range(6)]
    assert codes(known) == codes(unknown) == ["INVALID_CLIENT"] * 3 + ["RATE_LIMITED"] * 3


def test_a_client_over_its_limit_is_no_oracle_and_no_target(tmp_path: Path) -> None:
    """While "shop" is over its client limit, a request naming it with a wrong secret is answered
    INVALID_CLIENT (the limit applies after authentication: it reveals nothing to whoever lacks
    the secret), and wrong-secret requests never use up shop's own bucket."""
    with limited_server(tmp_path / "data", client_rate_limit=TWO_AN_HOUR, failed_auth_limit=None) as server:
        shop, other = server.register("shop"), server.register("other")
        with grpc.insecure_channel(server.target) as channel:
            stub = token_pb2_grpc.TokenServiceStub(channel)
            for _ in range(20):  # an attacker without other's secret
                assert codes([grpc_token(stub, "other", "x" * 40)]) == ["INVALID_CLIENT"]
            assert grpc_token(stub, "other", other.secret) is None  # its bucket untouched
            assert grpc_token(stub, "shop", shop.secret) is None
            assert grpc_token(stub, "shop", shop.secret) is None
            assert codes([grpc_token(stub, "shop", shop.secret)]) == ["RATE_LIMITED"]
            assert codes([grpc_token(stub, "shop", "x" * 40)]) == ["INVALID_CLIENT"]
            assert codes([grpc_token(stub, "nobody", "x" * 40)]) == ["INVALID_CLIENT"]


def test_cycling_addresses_and_client_ids_cannot_grow_the_limiters_memory() -> None:
    """Every request from a new address naming a new client id: the buckets stay at the cap of
    each kind, and the limits keep working for the address that is still sending."""
    buckets = LocalBuckets(max_keys=500)
    limits = RateLimits(client=TWO_AN_HOUR, peer=TWO_AN_HOUR, failed_auth=TWO_AN_HOUR, local=buckets)

    async def flood() -> None:
        for i in range(30_000):
            peer = f"ipv6:[2001:db8:{i // 65536:x}:{i % 65536:x}::1]:443"  # a new /64 each time
            admission = await limits.admit(f"client-{i}", peer)
            await limits.failed(admission)
        await limits.admit("x", "10.0.0.1")
        await limits.admit("x", "10.0.0.1")
        try:
            await limits.admit("x", "10.0.0.1")
        except RateLimited:
            return
        raise AssertionError("the address still sending was not limited")

    asyncio.run(flood())
    assert all(buckets.size(kind) <= 500 for kind in ("peer", "failed_auth", "client"))
    assert len(buckets) <= 1500


def test_a_secret_pasted_as_client_id_never_reaches_redis(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    """A caller that sends its secret as the client id (or a guesser who sends secrets): the
    failed-authentication bucket is keyed by a hash of the id, never the id."""
    with limited_server(
        tmp_path / "data",
        client_rate_limit=TWO_AN_HOUR,
        failed_auth_limit=THREE_GUESSES,
        redis_url=redis_url,
        redis_key_prefix=redis_prefix,
    ) as server:
        shop = server.register("shop")
        with grpc.insecure_channel(server.target) as channel:
            stub = token_pb2_grpc.TokenServiceStub(channel)
            assert codes([grpc_token(stub, shop.secret, shop.secret)]) == ["INVALID_CLIENT"]
            assert grpc_token(stub, "shop", shop.secret) is None
    keys = redis_keys(redis_prefix)
    assert len(keys) == 2  # the failure and shop's client bucket
    secret = shop.secret.encode()
    assert not any(secret[11:27] in key or b"shop" in key for key in keys)


def test_made_up_long_client_ids_do_not_fill_the_client_tag_cache() -> None:
    # every request's client id is hashed for its bucket keys before it is authenticated; a flood
    # of distinct ids as long as a message allows (64 KiB over gRPC) must not be remembered
    from authsvc.authority import ratelimit

    before = ratelimit._cached_client_tag.cache_info().currsize
    long_ids = [f"{n:08d}" + "x" * 60_000 for n in range(50)]
    tags = [ratelimit._client_tag(i) for i in long_ids]
    assert ratelimit._cached_client_tag.cache_info().currsize == before
    assert len(set(tags)) == 50 and all(
        len(t) == 32 and i not in t for t, i in zip(tags, long_ids, strict=True)
    )
    # a valid-length id is remembered, and tags the same either way
    fresh = "client-tag-cache-probe-" + "y" * 100  # 123 characters, seen by no other test
    assert ratelimit._client_tag(fresh) == ratelimit._tag_of(fresh)
    hits = ratelimit._cached_client_tag.cache_info().hits
    ratelimit._client_tag(fresh)
    assert ratelimit._cached_client_tag.cache_info().hits == hits + 1
    assert ratelimit._client_tag("x" * 129) == ratelimit._tag_of("x" * 129)
