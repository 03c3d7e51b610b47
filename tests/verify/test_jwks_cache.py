"""The JWKS cache never makes a verification of a known key wait on the network."""

from __future__ import annotations

import threading
import time

import pytest

from authsvc.core.keys import jwks_json, public_jwk
from authsvc.verify.jwks import JwksCache, WouldBlock
from tests.keypool import rsa_key as pooled_rsa_key

KEY = pooled_rsa_key()
JWKS = jwks_json([public_jwk(KEY.public_key())])
KID = public_jwk(KEY.public_key())["kid"]


class SlowSource:
    """Answers the first fetch at once; later fetches wait until ``release`` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.calls = 0

    def fetch(self) -> str:
        self.calls += 1
        if self.calls > 1:
            self.started.set()
            assert self.release.wait(10)
        return JWKS


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_known_key_is_served_while_a_slow_scheduled_refresh_runs() -> None:
    source, clock = SlowSource(), Clock()
    cache = JwksCache(source, max_age=60, cooldown=5, monotonic=clock)
    assert cache.get(KID) is not None
    clock.t += 61  # stale: the next use starts a background refresh, which hangs
    started = time.monotonic()
    for _ in range(100):
        assert cache.get(KID) is not None
    assert source.started.wait(5)
    assert time.monotonic() - started < 1.0, "known-key lookups waited on the fetch"
    assert source.calls == 2, "one background refresh, however many lookups"
    source.release.set()


def test_an_unknown_kid_on_an_event_loop_is_handed_the_fetch_to_await() -> None:
    source, clock = SlowSource(), Clock()
    cache = JwksCache(source, max_age=60, cooldown=5, monotonic=clock)
    cache.get(KID)
    clock.t += 6  # past the cooldown: an unknown kid may fetch
    with pytest.raises(WouldBlock) as pending:
        cache.get("unknown", block=False)
    # the fetch runs in the cache's own thread, not the caller's
    assert source.started.wait(5)
    # while it is in flight, other unknown kids are refused at once, blocking or not: waiting
    # would take a thread (or a call slot) per forged token
    assert cache.get("another-unknown", block=False) is None
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(cache.get("third-unknown")))
    worker.start()
    worker.join(5)
    assert result == [None], "a second caller waited on the fetch in flight"
    assert cache.get(KID, block=False) is not None
    source.release.set()
    assert pending.value.future.result(5) is True
    # the fetch found no such key: remembered, no second fetch within the cooldown
    assert cache.get("unknown", block=False) is None
    assert source.calls == 2


def test_the_caller_that_starts_a_fetch_waits_for_it_in_its_thread() -> None:
    source, clock = SlowSource(), Clock()
    cache = JwksCache(source, max_age=60, cooldown=5, monotonic=clock)
    cache.get(KID)
    clock.t += 6
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(cache.get("unknown")))
    worker.start()
    assert source.started.wait(5)
    assert result == [], "the caller that started the fetch did not wait for it"
    source.release.set()
    worker.join(5)
    assert result == [None]


def test_within_the_cooldown_an_unknown_kid_is_refused_without_a_fetch() -> None:
    source, clock = SlowSource(), Clock()
    cache = JwksCache(source, max_age=60, cooldown=5, monotonic=clock)
    cache.get(KID)
    assert cache.get("unknown", block=False) is None
    assert source.calls == 1


class PushSource:
    """A source that pushes (like GrpcJwksSource): ``watching`` says whether its stream is open;
    ``fail`` makes fetches raise."""

    def __init__(self) -> None:
        self.watching = False
        self.fail = False
        self.calls = 0
        self.push: object = None

    def subscribe(self, callback: object) -> None:
        self.push = callback

    def fetch(self) -> str:
        self.calls += 1
        if self.fail:
            raise ConnectionError("issuer down")
        return JWKS


def test_age_counts_from_the_last_successful_fetch() -> None:
    source, clock = PushSource(), Clock()
    cache = JwksCache(source, max_age=60, cooldown=5, monotonic=clock)
    assert cache.age() is None, "no key set yet"
    assert cache.refresh()
    assert cache.age() == 0
    clock.t += 30
    assert cache.age() == 30
    source.fail = True
    assert not cache.refresh()
    clock.t += 10
    assert cache.age() == 40, "a failed fetch is not a sign of current keys"
    source.fail = False
    assert cache.refresh()
    assert cache.age() == 0


def test_an_open_push_stream_keeps_the_keys_current_without_changes() -> None:
    source, clock = PushSource(), Clock()
    cache = JwksCache(source, max_age=60, cooldown=5, monotonic=clock)
    assert cache.refresh()
    source.watching = True
    clock.t += 500
    assert cache.age() == 0, "an open stream with nothing to push is current"
    source.watching = False  # the issuer went away at 500
    clock.t += 7
    assert cache.age() == 7, "the age counts from the last time the stream was seen open"
    assert callable(source.push)
    source.push(JWKS)  # the stream is back: its first message is the whole set
    assert cache.age() == 0


def test_an_open_stream_does_not_hide_failing_polls() -> None:
    """A stream can look open across a silent partition; a poll failing on the same channel
    shows it is not working, and the age counts from the last time it was seen working."""
    source, clock = PushSource(), Clock()
    cache = JwksCache(source, max_age=60, cooldown=5, monotonic=clock)
    assert cache.refresh()
    source.watching = True
    clock.t += 100
    assert cache.age() == 0
    source.fail = True
    assert not cache.refresh()
    clock.t += 20
    assert cache.age() == 20
    source.fail = False
    assert cache.refresh()
    assert cache.age() == 0, "a successful poll, with the stream open, is current again"


def test_refresh_if_due_polls_on_schedule_without_traffic() -> None:
    source, clock = PushSource(), Clock()
    cache = JwksCache(source, max_age=60, cooldown=5, monotonic=clock)
    cache.refresh_if_due()
    assert source.calls == 0, "nothing to refresh before the first fetch (start-up does it)"
    assert cache.refresh()
    clock.t += 59
    cache.refresh_if_due()
    assert source.calls == 1, "not due yet"
    clock.t += 1
    cache.refresh_if_due()
    deadline = time.monotonic() + 10
    while source.calls < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert source.calls == 2
    deadline = time.monotonic() + 10
    while cache.age() != 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cache.age() == 0
