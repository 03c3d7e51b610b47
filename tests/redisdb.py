"""The Redis that this machine kind runs (127.0.0.1:6379), for the shared rate-limit tests.

Each test gets a key prefix of its own (so tests and test runs sharing the server never see each
other's buckets) and its keys are deleted afterwards. Without a reachable server these tests
skip with a message saying how to run them, except under CI (CI=true), where a missing server
is a failure, never a silent skip (.ci/run starts Redis).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

REDIS_URL = os.environ.get("AUTHSVC_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _reachable() -> str | None:
    try:
        import redis
    except ImportError:
        return "the redis package is not installed (pip install 'authsvc[redis]')"
    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3, socket_timeout=3)
        try:
            client.ping()
        finally:
            client.close()
    except redis.RedisError as exc:
        return f"Redis is not reachable at {REDIS_URL} ({exc})"
    return None


def require_redis() -> None:
    problem = _reachable()
    if problem is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{problem}: CI must run the Redis tests (.ci/run starts the server)")
    pytest.skip(f"{problem}; start Redis or set AUTHSVC_TEST_REDIS=redis://… to run these")


def redis_keys(prefix: str) -> list[bytes]:
    """Every key under ``prefix`` (a test's own)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        return sorted(client.scan_iter(match=f"{prefix}:*", count=1000))
    finally:
        client.close()


@pytest.fixture
def redis_url() -> str:
    """The test Redis's URL (the test fails under CI, or skips elsewhere, when it is down)."""
    require_redis()
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    import redis

    prefix = f"authsvc-test:{os.getpid()}:{secrets.token_hex(6)}"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
