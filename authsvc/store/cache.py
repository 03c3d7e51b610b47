"""A per-process read-through cache of client records for the token endpoint's hot path.

Every token request reads one client. Reading it from the database each time would put a query
on the path that should cost little more than one RSA signature, so records (and "no such
client" answers, so that a flood of made-up ids cannot bypass the cache) are kept for ``ttl``
seconds. A client created, disabled or given a new secret by another process is seen once its
entry expires: the default of 2 seconds keeps that well within the 5-second promise.

A SQL store decodes a found row (its JSON columns) but has nothing to decode for an unknown id,
which made a miss on an unknown id measurably cheaper than on a known one. On a SQL store the
cache decodes a decoy row of the same shape when the store finds nothing, so the two cost the same.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

from authsvc.core.clients import CLIENT_CREDENTIALS, Client
from authsvc.core.grants import ClientLookup
from authsvc.store import sql

__all__ = ["CachedClientLookup"]

_V = TypeVar("_V")

# shaped like a typical registration: three scopes, one audience
_DECOY_ROW = sql._client_row(  # the store's own row codec, on purpose
    Client(
        client_id="unknown-client-decoy",
        secret_hash="hmac-sha256$" + "A" * 43,
        allowed_scopes=("payments:read", "payments:write", "payments:refund"),
        default_scopes=("payments:read", "payments:write", "payments:refund"),
        allowed_audiences=("payments",),
        default_audience="payments",
        token_ttl=300,
        grant_types=(CLIENT_CREDENTIALS,),
        enabled=True,
        created_at=0,
        updated_at=0,
    )
)


class CachedClientLookup:
    """Wraps a :class:`~authsvc.core.grants.ClientLookup` with a bounded TTL cache.

    Registered clients and unknown ids are kept apart, each bounded by ``max_entries``: a flood
    of made-up ids (each one a store read, which the failed-authentication limit does not count
    when every id is new) evicts only other made-up ids, never a registered client, whose
    requests would otherwise all become store reads in a worker thread for as long as it lasts.
    """

    def __init__(
        self,
        inner: ClientLookup,
        *,
        ttl: float = 2.0,
        max_entries: int = 10_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._inner = inner
        self._ttl = ttl
        self._max = max_entries
        self._now = monotonic
        self._known: OrderedDict[str, tuple[float, Client]] = OrderedDict()
        self._unknown: OrderedDict[str, float] = OrderedDict()  # id -> until when it is known absent
        self._lock = threading.Lock()
        self._decoy = isinstance(inner, sql.SqlStore)

    def get_client(self, client_id: str) -> Client | None:
        now = self._now()
        entry = self._known.get(client_id)
        if entry is not None and entry[0] > now:
            return entry[1]
        absent_until = self._unknown.get(client_id)
        if absent_until is not None and absent_until > now:
            return None
        client = self._inner.get_client(client_id)
        if client is None and self._decoy:
            sql._client_from_row(_DECOY_ROW)  # the work a found row costs
        with self._lock:
            if client is None:
                self._known.pop(client_id, None)
                _remember(self._unknown, client_id, now + self._ttl, self._max)
            else:
                self._unknown.pop(client_id, None)
                _remember(self._known, client_id, (now + self._ttl, client), self._max)
        return client

    def __len__(self) -> int:
        """Entries held: registered clients and unknown ids, each at most ``max_entries``."""
        return len(self._known) + len(self._unknown)

    def is_cached(self, client_id: str) -> bool:
        """True if ``get_client`` would answer from memory now (no store read)."""
        now = self._now()
        entry = self._known.get(client_id)
        if entry is not None and entry[0] > now:
            return True
        absent_until = self._unknown.get(client_id)
        return absent_until is not None and absent_until > now

    def invalidate(self, client_id: str | None = None) -> None:
        """Forget one client, or all of them."""
        with self._lock:
            if client_id is None:
                self._known.clear()
                self._unknown.clear()
            else:
                self._known.pop(client_id, None)
                self._unknown.pop(client_id, None)


def _remember(entries: OrderedDict[str, _V], key: str, value: _V, bound: int) -> None:
    """``entries[key] = value`` as the newest entry, the oldest dropped beyond ``bound``."""
    entries[key] = value
    entries.move_to_end(key)
    while len(entries) > bound:
        entries.popitem(last=False)
