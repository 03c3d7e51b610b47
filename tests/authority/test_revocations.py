"""The revocation registry and the feed a running server streams, without a server: a frozen
clock and real stores (memory, and SQLite shared by two handles as two processes would)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from authsvc.authority.revocations import LEEWAY_MARGIN, Batch, RevocationFeed, RevocationRegistry
from authsvc.core.clients import MAX_TOKEN_TTL
from authsvc.core.errors import InvalidRequest
from authsvc.core.revocation import Revocation
from authsvc.store.memory import MemoryStore
from authsvc.store.sqlite import SQLiteStore
from tests.core.fakes import FrozenClock

T = TypeVar("T")
NOW = 1_700_000_000
LATEST = NOW + MAX_TOKEN_TTL + LEEWAY_MARGIN


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(NOW)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def registry(store: MemoryStore, clock: FrozenClock) -> RevocationRegistry:
    return RevocationRegistry(store, clock, MAX_TOKEN_TTL)


async def within(awaitable: Awaitable[T]) -> T:
    """A bound on a wait that should end at once, so a bug fails the test rather than hangs it."""
    return await asyncio.wait_for(awaitable, 10)


# -- the registry --------------------------------------------------------------------------------


def test_revoke_token_defaults_to_the_longest_lifetime_plus_the_margin(
    registry: RevocationRegistry, store: MemoryStore
) -> None:
    entry = registry.revoke_token("jti-1")
    assert entry == Revocation(expires_at=LATEST, jti="jti-1")
    assert store.revocations_after(0) == [(1, entry)]


def test_revoke_token_keeps_a_known_exp(registry: RevocationRegistry) -> None:
    assert registry.revoke_token("jti-1", expires_at=NOW + 60).expires_at == NOW + 60


def test_revoke_token_caps_expires_at_at_the_longest_lifetime(registry: RevocationRegistry) -> None:
    # no token issued before now outlives LATEST: a later expiry would only make the list grow
    assert registry.revoke_token("jti-1", expires_at=NOW + 10 * MAX_TOKEN_TTL).expires_at == LATEST


@pytest.mark.parametrize("expires_at", [NOW, NOW - 1], ids=["now", "past"])
def test_revoke_token_refuses_an_expiry_in_the_past(registry: RevocationRegistry, expires_at: int) -> None:
    with pytest.raises(InvalidRequest):
        registry.revoke_token("jti-1", expires_at=expires_at)


@pytest.mark.parametrize(
    "jti", ["", "a b", "x" * 257, "caf\u00e9", "j\nti"], ids=["empty", "space", "long", "utf8", "newline"]
)
def test_revoke_token_refuses_a_malformed_jti(
    registry: RevocationRegistry, store: MemoryStore, jti: str
) -> None:
    with pytest.raises(InvalidRequest):
        registry.revoke_token(jti)
    assert store.revocations_after(0) == []


def test_revoke_client_covers_tokens_issued_in_the_same_second(registry: RevocationRegistry) -> None:
    entry = registry.revoke_client("shop")
    assert entry == Revocation(
        expires_at=NOW + 1 + MAX_TOKEN_TTL + LEEWAY_MARGIN, client_id="shop", not_before=NOW + 1
    )
    assert entry.refuses(jti="j", client_id="shop", issued_at=NOW)
    assert not entry.refuses(jti="j", client_id="shop", issued_at=NOW + 1)
    assert not entry.refuses(jti="j", client_id="other", issued_at=NOW)


def test_revoke_client_refuses_a_malformed_id(registry: RevocationRegistry, store: MemoryStore) -> None:
    with pytest.raises(InvalidRequest):
        registry.revoke_client("shop:evil")
    assert store.revocations_after(0) == []


def test_revocations_are_logged_by_jti_and_client_id(
    registry: RevocationRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="authsvc.admin"):
        registry.revoke_token("jti-1")
        registry.revoke_client("shop")
    lines = [r.getMessage() for r in caplog.records if r.name == "authsvc.admin"]
    assert len(lines) == 2
    assert "jti='jti-1'" in lines[0] and "sequence=1" in lines[0]
    assert "client_id='shop'" in lines[1] and f"not_before={NOW + 1}" in lines[1]


# -- the feed ------------------------------------------------------------------------------------


def _feed(store: MemoryStore | SQLiteStore, clock: FrozenClock) -> RevocationFeed:
    feed = RevocationFeed(store, clock, tick_interval=3600)  # ticks only when told (notify)
    feed.load()
    return feed


async def _first(watch: AsyncGenerator[Batch, None]) -> Batch:
    return await within(anext(watch))


def test_load_takes_a_snapshot(registry: RevocationRegistry, store: MemoryStore, clock: FrozenClock) -> None:
    registry.revoke_token("jti-1")
    registry.revoke_client("shop")
    feed = _feed(store, clock)
    assert feed.sequence == 2 and len(feed.set) == 2
    assert feed.set.refuses(jti="jti-1", client_id="any", issued_at=NOW)
    assert feed.set.refuses(jti="other", client_id="shop", issued_at=NOW)


def test_watch_from_zero_starts_with_a_snapshot(
    registry: RevocationRegistry, store: MemoryStore, clock: FrozenClock
) -> None:
    token = registry.revoke_token("jti-1")
    feed = _feed(store, clock)
    assert asyncio.run(_first(feed.watch(0))) == (True, 1, [token])


def test_watch_resumes_with_only_the_entries_after(
    registry: RevocationRegistry, store: MemoryStore, clock: FrozenClock
) -> None:
    registry.revoke_token("jti-1")
    feed = _feed(store, clock)
    second = registry.revoke_token("jti-2")
    third = registry.revoke_client("shop")
    assert feed.tick() is True
    assert asyncio.run(_first(feed.watch(1))) == (False, 3, [second, third])
    assert asyncio.run(_first(feed.watch(3))) == (False, 3, [])  # up to date: an empty change


def test_watch_resumes_from_before_this_process_loaded_through_the_store(
    registry: RevocationRegistry, store: MemoryStore, clock: FrozenClock
) -> None:
    registry.revoke_token("jti-1")
    second = registry.revoke_token("jti-2")
    feed = _feed(store, clock)  # the server started after both
    assert asyncio.run(_first(feed.watch(1))) == (False, 2, [second])


@pytest.mark.parametrize("after", [5, 10**12], ids=["ahead", "far-ahead"])
def test_watch_from_ahead_of_the_list_takes_a_snapshot(
    registry: RevocationRegistry, store: MemoryStore, clock: FrozenClock, after: int
) -> None:
    # a sequence from another database, or from before a reset: nothing after it can be trusted
    token = registry.revoke_token("jti-1")
    feed = _feed(store, clock)
    assert asyncio.run(_first(feed.watch(after))) == (True, 1, [token])


def test_watch_from_before_the_oldest_stored_entry_takes_a_snapshot(
    registry: RevocationRegistry, store: MemoryStore, clock: FrozenClock
) -> None:
    registry.revoke_token("short", expires_at=NOW + 10)  # 1
    registry.revoke_token("mid", expires_at=NOW + 20)  # 2
    clock.advance(20)
    kept = registry.revoke_token("long")  # 3: purges 1 and 2
    feed = _feed(store, clock)
    assert store.oldest_revocation_sequence() == 3
    assert asyncio.run(_first(feed.watch(1))) == (True, 3, [kept])
    assert asyncio.run(_first(feed.watch(2))) == (False, 3, [kept])


def test_tick_drops_expired_entries(
    registry: RevocationRegistry, store: MemoryStore, clock: FrozenClock
) -> None:
    registry.revoke_token("short", expires_at=NOW + 10)
    registry.revoke_token("long")
    feed = _feed(store, clock)
    clock.advance(10)
    assert feed.tick() is False  # nothing new
    assert not feed.set.refuses(jti="short", client_id="c", issued_at=NOW)
    assert feed.set.refuses(jti="long", client_id="c", issued_at=NOW)
    assert feed.sequence == 2


@pytest.fixture
def two_processes(tmp_path: Path) -> Iterator[tuple[SQLiteStore, SQLiteStore]]:
    server, cli = SQLiteStore(tmp_path / "a.db"), SQLiteStore(tmp_path / "a.db")
    try:
        yield server, cli
    finally:
        server.close()
        cli.close()


def test_an_entry_added_elsewhere_is_read_on_the_next_tick(
    two_processes: tuple[SQLiteStore, SQLiteStore], clock: FrozenClock
) -> None:
    server, cli = two_processes
    feed = _feed(server, clock)
    RevocationRegistry(cli, clock).revoke_client("shop")
    assert not feed.set.refuses(jti="j", client_id="shop", issued_at=NOW)
    assert feed.tick() is True
    assert feed.set.refuses(jti="j", client_id="shop", issued_at=NOW)


def test_a_running_feed_pushes_each_new_batch_to_watchers(
    two_processes: tuple[SQLiteStore, SQLiteStore], clock: FrozenClock
) -> None:
    server, cli = two_processes
    other_process = RevocationRegistry(cli, clock)
    first = other_process.revoke_token("jti-1")
    feed = _feed(server, clock)

    async def scenario() -> list[Batch]:
        runner = asyncio.create_task(feed.run())
        watch = feed.watch(0)
        got = [await _first(watch)]
        second = await asyncio.to_thread(other_process.revoke_token, "jti-2")
        feed.notify()  # as the edge does after adding one itself; else the next tick (an hour here)
        got.append(await within(anext(watch)))
        third = await asyncio.to_thread(other_process.revoke_client, "shop")
        feed.notify()
        got.append(await within(anext(watch)))
        assert [b[2] for b in got[1:]] == [[second], [third]]
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
        with pytest.raises(StopAsyncIteration):  # shutdown ends open watches
            await within(anext(watch))
        return got

    got = asyncio.run(scenario())
    assert got[0] == (True, 1, [first])
    assert [(snapshot, sequence) for snapshot, sequence, _ in got] == [(True, 1), (False, 2), (False, 3)]


def test_a_watch_on_a_feed_that_is_not_running_ends_after_the_first_message(
    store: MemoryStore, clock: FrozenClock
) -> None:
    feed = _feed(store, clock)

    async def scenario() -> list[Batch]:
        return [b async for b in feed.watch(0)]

    assert asyncio.run(within(scenario())) == [(True, 0, [])]


def test_a_store_outage_keeps_the_list_loaded(
    registry: RevocationRegistry, store: MemoryStore, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from authsvc.store.base import StoreUnavailable

    registry.revoke_token("jti-1")
    feed = _feed(store, clock)

    def down(sequence: int) -> list[tuple[int, Revocation]]:
        raise StoreUnavailable("the database is unreachable")

    monkeypatch.setattr(store, "revocations_after", down)

    async def scenario() -> None:
        runner = asyncio.create_task(feed.run())
        feed.notify()
        await within(anext(feed.watch(1)))  # a resume covered in memory needs no store read
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner

    asyncio.run(scenario())
    assert feed.set.refuses(jti="jti-1", client_id="c", issued_at=NOW)
