"""CachedClientLookup: a bounded read-through TTL cache, driven by a fake monotonic clock."""

from __future__ import annotations

from collections import Counter

import pytest

from authsvc.core.clients import Client
from authsvc.store.cache import CachedClientLookup
from authsvc.store.memory import MemoryStore
from tests.core.fakes import FakeMonotonic
from tests.store.contract import make_client

TTL = 2.0


class CountingStore(MemoryStore):
    """A MemoryStore that counts reads by client id."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: Counter[str] = Counter()

    def get_client(self, client_id: str) -> Client | None:
        self.reads[client_id] += 1
        return super().get_client(client_id)


@pytest.fixture
def inner() -> CountingStore:
    s = CountingStore()
    s.create_client(make_client("shop"))
    return s


@pytest.fixture
def clock() -> FakeMonotonic:
    return FakeMonotonic()


@pytest.fixture
def cache(inner: CountingStore, clock: FakeMonotonic) -> CachedClientLookup:
    return CachedClientLookup(inner, ttl=TTL, max_entries=100, monotonic=clock)


def test_hit_within_ttl_does_not_read_the_store(
    cache: CachedClientLookup, inner: CountingStore, clock: FakeMonotonic
) -> None:
    first = cache.get_client("shop")
    assert first == make_client("shop")
    for _ in range(5):
        clock.advance(0.3)  # up to 1.5 s: still fresh
        assert cache.get_client("shop") == first
    assert inner.reads["shop"] == 1


def test_after_ttl_the_store_is_read_again(
    cache: CachedClientLookup, inner: CountingStore, clock: FakeMonotonic
) -> None:
    enabled = cache.get_client("shop")
    assert enabled is not None and enabled.enabled
    assert inner.update_client(enabled.with_changes(enabled=False))

    clock.advance(TTL - 0.001)
    stale = cache.get_client("shop")
    assert stale is not None and stale.enabled  # still the cached record
    assert inner.reads["shop"] == 1

    clock.advance(0.001)  # exactly ttl after the read: expired
    fresh = cache.get_client("shop")
    assert fresh is not None and not fresh.enabled
    assert inner.reads["shop"] == 2


def test_unknown_client_is_cached_too(
    cache: CachedClientLookup, inner: CountingStore, clock: FakeMonotonic
) -> None:
    assert cache.get_client("late") is None
    inner.create_client(make_client("late"))
    clock.advance(TTL / 2)
    assert cache.get_client("late") is None
    assert inner.reads["late"] == 1

    clock.advance(TTL)
    assert cache.get_client("late") == make_client("late")
    assert inner.reads["late"] == 2


def test_invalidate_forces_a_read(cache: CachedClientLookup, inner: CountingStore) -> None:
    cache.get_client("shop")
    cache.get_client("other")
    cache.invalidate("shop")
    cache.get_client("shop")
    cache.get_client("other")
    assert inner.reads == Counter({"shop": 2, "other": 1})
    cache.invalidate()
    cache.get_client("shop")
    cache.get_client("other")
    assert inner.reads == Counter({"shop": 3, "other": 2})


def test_cache_is_bounded_at_max_entries(inner: CountingStore, clock: FakeMonotonic) -> None:
    cache = CachedClientLookup(inner, ttl=TTL, max_entries=2, monotonic=clock)
    for client_id in ("a", "b", "c"):
        cache.get_client(client_id)
    assert inner.reads == Counter({"a": 1, "b": 1, "c": 1})

    cache.get_client("b")
    cache.get_client("c")
    assert inner.reads == Counter({"a": 1, "b": 1, "c": 1})  # the two newest are still held

    cache.get_client("a")  # the oldest was evicted
    assert inner.reads["a"] == 2


def test_made_up_ids_do_not_grow_the_cache_without_bound(inner: CountingStore, clock: FakeMonotonic) -> None:
    cache = CachedClientLookup(inner, ttl=TTL, max_entries=10, monotonic=clock)
    for i in range(1000):
        assert cache.get_client(f"made-up-{i}") is None
    assert len(cache) == 10
    # Only the last 10 made-up ids remain cached.
    reads_before = sum(inner.reads.values())
    for i in range(990, 1000):
        cache.get_client(f"made-up-{i}")
    assert sum(inner.reads.values()) == reads_before
    cache.get_client("made-up-0")
    assert inner.reads["made-up-0"] == 2


def test_a_flood_of_made_up_ids_never_evicts_a_registered_client(
    inner: CountingStore, clock: FakeMonotonic
) -> None:
    """Made-up ids (each new, so no failed-authentication bucket fills) used to share one LRU
    with registered clients: a flood of them turned every real client's request into a store
    read in a worker thread. Unknown ids now evict only each other."""
    cache = CachedClientLookup(inner, ttl=TTL, max_entries=10, monotonic=clock)
    assert cache.get_client("shop") is not None
    for i in range(1000):
        assert cache.get_client(f"made-up-{i}") is None
    assert cache.is_cached("shop")
    assert cache.get_client("shop") is not None
    assert inner.reads["shop"] == 1
    assert len(cache) == 11  # the bound holds for each kind


def test_a_client_created_after_its_id_was_unknown_is_found_once_the_entry_expires(
    inner: CountingStore, clock: FakeMonotonic
) -> None:
    cache = CachedClientLookup(inner, ttl=TTL, max_entries=10, monotonic=clock)
    assert cache.get_client("late") is None
    inner.create_client(make_client("late"))
    assert cache.get_client("late") is None  # still the cached answer, within the ttl
    clock.advance(TTL + 0.01)
    assert cache.get_client("late") is not None
    assert not cache._unknown and cache.is_cached("late")
